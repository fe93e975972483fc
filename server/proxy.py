"""Requests through a trusted reverse proxy: its `Forwarded` (RFC 7239) or `X-Forwarded-Proto`
/ `X-Forwarded-Host` / `X-Forwarded-For` headers say how the client reached the service, so
the links of a response (alliance.trace.public) and the client address of the log and the
audit trail are the client's. From a peer not in ALLIANCE_TRUSTED_PROXIES they are ignored:
anyone else could forge them.
"""

from __future__ import annotations

import contextlib
import re
from ipaddress import IPv4Network, IPv6Network, ip_address

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from alliance import trace

#: A host with an optional port: a name, IPv4 or a bracketed IPv6 address; nothing that could
#: carry a path, a user or a second URL into a link.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _last_forwarded(value: str) -> dict[str, str]:
    """The element of `Forwarded` added by the nearest proxy (the last), as its pairs."""
    element = value.split(",")[-1]
    pairs: dict[str, str] = {}
    for pair in element.split(";"):
        name, sep, text = pair.strip().partition("=")
        if sep:
            pairs[name.strip().lower()] = text.strip().strip('"')
    return pairs


def _address(node: str) -> str:
    """The address of a forwarded node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`."""
    if node.startswith("["):
        return node[1 : node.find("]")]
    return node.split(":")[0] if node.count(":") == 1 else node


class ForwardedMiddleware:
    """Pure ASGI middleware, outermost, so everything inside sees the client's view."""

    def __init__(self, app: ASGIApp, trusted: list[IPv4Network | IPv6Network]) -> None:
        self.app = app
        self.trusted = trusted

    def _trusts(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not self.trusted or not client:
            return False
        try:
            peer = ip_address(client[0])
        except ValueError:
            return False
        return any(peer in network for network in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self._trusts(scope):
            headers = Headers(scope=scope)
            proto = host = client = None
            if "forwarded" in headers:
                pairs = _last_forwarded(headers["forwarded"])
                proto, host, client = pairs.get("proto"), pairs.get("host"), pairs.get("for")
            else:
                proto = headers.get("x-forwarded-proto", "").split(",")[-1].strip() or None
                host = headers.get("x-forwarded-host", "").split(",")[-1].strip() or None
                client = headers.get("x-forwarded-for", "").split(",")[-1].strip() or None
            scheme = (proto or scope.get("scheme", "http")).lower()
            if scheme in ("http", "https"):
                scope["scheme"] = scheme
            if host and _HOST.fullmatch(host) and scheme in ("http", "https"):
                scope[trace.FORWARDED_KEY] = (scheme, host)
            if client:
                with contextlib.suppress(ValueError):
                    # "unknown" or an obfuscated identifier (RFC 7239 6.3) keeps the peer.
                    scope["client"] = (str(ip_address(_address(client))), 0)
        await self.app(scope, receive, send)
