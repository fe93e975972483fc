"""The request being served, as the log line and the audit trail name it.

An HTTP request carries a request id: the caller's `X-Request-ID` when it is a short printable
token (a proxy's or a client's, so their logs join ours), else one made here. The middleware
(`server/observability.py`) opens a `Trace` for each request; the Guard notes who acts; the
audit trail writes the id into each AuditEvent of the request (IHE BALP's transaction entity,
`BasicAuditEntityType#XrequestId`), so a line of the log, a 500 included, joins its audit record.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

HEADER = "X-Request-ID"
#: Longest request id taken from a caller.
MAX_LENGTH = 64
#: Printable ASCII without space: it goes into a header, a log line and the trail as it is.
_ACCEPTED = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")
#: Where the middleware leaves the id in the ASGI scope (for handlers outside it: the 500 page).
SCOPE_KEY = "alliance.request_id"


@dataclass
class Trace:
    """One request: its id, and who acted once the Guard knows it."""

    request_id: str
    user: str | None = None
    hospital: str | None = None
    #: Scheme and host the client used, as a trusted proxy forwarded them (server/proxy.py).
    forwarded: tuple[str, str] | None = None


_current: ContextVar[Trace | None] = ContextVar("alliance_trace", default=None)


def request_id_from(header: str | None) -> str:
    """The caller's id when it is 1 to 64 printable characters without space; else a new one."""
    if header is not None and _ACCEPTED.fullmatch(header):
        return header
    return uuid.uuid4().hex


def begin(
    request_id: str, forwarded: tuple[str, str] | None = None
) -> tuple[Trace, Token[Trace | None]]:
    """Open the trace of a request; give the returned token to `end`."""
    trace = Trace(request_id, forwarded=forwarded)
    return trace, _current.set(trace)


def end(token: Token[Trace | None]) -> None:
    _current.reset(token)


def current() -> Trace | None:
    """The trace of the request being served (None outside a request: the CLI, the SCP).
    Worker threads of the request see it too (Starlette's thread pool copies the context)."""
    return _current.get()


def note_actor(user: str | None, hospital: str | None) -> None:
    trace = _current.get()
    if trace is not None:
        trace.user = user
        trace.hospital = hospital


#: Where server/proxy.py leaves the (scheme, host) a trusted proxy forwarded, in the ASGI scope.
FORWARDED_KEY = "alliance.forwarded"


def public(url: str) -> str:
    """`url` (one of the configured base URLs) as the client of this request reaches it: with
    the scheme and host a trusted proxy forwarded, else as configured. Only for links put into
    a response (Location, fullUrl, paging, RetrieveURL); what is stored keeps the configured
    ALLIANCE_BASE_URL, so it does not depend on who asked."""
    trace = _current.get()
    if trace is None or trace.forwarded is None:
        return url
    scheme, host = trace.forwarded
    parts = urlsplit(url)
    return urlunsplit((scheme, host, parts.path, parts.query, parts.fragment))
