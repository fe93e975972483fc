"""Browser sessions of the portal: a signed cookie holding the user's access token, a CSRF
token, when the user was last seen (idle timeout) and when the session started (absolute
lifetime, `portal_session_hours`: renewing its token never carries it beyond). HttpOnly and
SameSite=Strict, so no script reads it and no other site's page sends it; state-changing
requests made with it must also carry its CSRF token.

The session is bound to the account's revocable state through its token, which carries the
account's token epoch: a logout, password reset, lock or role change ends it on the next
request (alliance.security.service.principal_for)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace

from alliance.config import Settings

COOKIE = "alliance_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class WebSession:
    token: str
    csrf: str
    seen: float
    lang: str = "zh"
    #: When the user logged in; the session ends `portal_session_hours` later, however active.
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, token: str, lang: str = "zh") -> WebSession:
        now = time.time()
        return cls(token, secrets.token_urlsafe(24), now, lang, now)

    def touched(self) -> WebSession:
        return replace(self, seen=time.time())

    def ends(self, settings: Settings) -> float:
        """When the session ends at the latest (epoch seconds)."""
        return self.started + settings.portal_session_hours * 3600


def _key(settings: Settings) -> bytes:
    # A key of its own, derived from the signing key: a session cookie is not a token.
    return hashlib.sha256(
        b"alliance portal session\0" + settings.signing_keys[0][1].encode()
    ).digest()


def encode(settings: Settings, session: WebSession) -> str:
    # No "=" padding: a cookie value with "=" gets quoted, and quotes do not survive every
    # client's cookie jar.
    payload = base64.urlsafe_b64encode(json.dumps(asdict(session)).encode()).decode().rstrip("=")
    mac = hmac.new(_key(settings), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}"


def decode(settings: Settings, cookie: str | None) -> WebSession | None:
    """The session in a cookie, or None when it is missing, forged, idle too long or past its
    absolute lifetime."""
    if not cookie or "." not in cookie:
        return None
    payload, mac = cookie.rsplit(".", 1)
    expected = hmac.new(_key(settings), payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        padded = payload + "=" * (-len(payload) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, dict) or "started" not in data:
            return None  # a cookie from before sessions had an absolute lifetime
        session = WebSession(**data)
    except (ValueError, TypeError):
        return None
    now = time.time()
    if now - session.seen > settings.portal_idle_minutes * 60 or now > session.ends(settings):
        return None
    return session
