"""Browser sessions of the portal: a signed cookie holding the user's access token, a CSRF
token and when the user was last seen (idle timeout). HttpOnly and SameSite=Strict, so no
script reads it and no other site's page sends it; state-changing requests made with it must
also carry its CSRF token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, replace

from alliance.config import Settings

COOKIE = "alliance_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class WebSession:
    token: str
    csrf: str
    seen: float
    lang: str = "zh"

    @classmethod
    def start(cls, token: str, lang: str = "zh") -> WebSession:
        return cls(token, secrets.token_urlsafe(24), time.time(), lang)

    def touched(self) -> WebSession:
        return replace(self, seen=time.time())


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
    """The session in a cookie, or None when it is missing, forged or idle too long."""
    if not cookie or "." not in cookie:
        return None
    payload, mac = cookie.rsplit(".", 1)
    expected = hmac.new(_key(settings), payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        padded = payload + "=" * (-len(payload) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        session = WebSession(**data)
    except (ValueError, TypeError):
        return None
    if time.time() - session.seen > settings.portal_idle_minutes * 60:
        return None
    return session
