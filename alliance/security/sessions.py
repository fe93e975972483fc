"""Browser sessions of the portal: a signed cookie holding the user's access token, a CSRF
token, when the user was last seen (idle timeout) and when the session started (absolute
lifetime, `portal_session_hours`: renewing its token never carries it beyond). HttpOnly and
SameSite=Strict, so no script reads it and no other site's page sends it; state-changing
requests made with it must also carry its CSRF token.

The session is bound to the account's revocable state through its token, which carries the
account's token epoch: a logout, password reset, lock or role change ends it on the next
request (alliance.security.service.principal_for)."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field, replace

from itsdangerous import BadSignature, URLSafeSerializer

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


def _serializer(settings: Settings) -> URLSafeSerializer:
    """Signs the cookie (itsdangerous: HMAC-SHA1 over a derived key, URL-safe, no padding that
    a cookie jar would quote). Its keys are the token signing keys, under a salt of their own
    (a session cookie is not a token); the first signs, all verify, so rotating the token keys
    rotates these too. itsdangerous signs with the last key of its list."""
    secrets_ = [secret for _kid, secret in reversed(settings.signing_keys)]
    return URLSafeSerializer(secrets_, salt="alliance portal session")


def encode(settings: Settings, session: WebSession) -> str:
    return str(_serializer(settings).dumps(asdict(session)))


def decode(settings: Settings, cookie: str | None) -> WebSession | None:
    """The session in a cookie, or None when it is missing, forged, idle too long or past its
    absolute lifetime."""
    if not cookie:
        return None
    try:
        data = _serializer(settings).loads(cookie)
        if not isinstance(data, dict) or "started" not in data:
            return None  # a cookie from before sessions had an absolute lifetime
        session = WebSession(**data)
    except (BadSignature, ValueError, TypeError):
        return None
    now = time.time()
    if now - session.seen > settings.portal_idle_minutes * 60 or now > session.ends(settings):
        return None
    return session
