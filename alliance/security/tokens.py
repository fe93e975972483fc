"""Signed JWT access tokens (RFC 7519, RFC 9068 claims): iss, sub, aud, exp, iat, jti, and
the alliance's hospital, role, scope and the account's token epoch (`epoch`: a token whose
epoch is not the account's current one was revoked, see service.principal_for). HS256 with
keys chosen by `kid`. Clocks of the issuer and of a verifier may differ by up to a minute
(`LEEWAY_SECONDS` on iat, nbf and exp)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from alliance.config import Settings
from alliance.errors import Unauthorized

ALGORITHM = "HS256"
#: Clock skew tolerated between workers (and partner systems) on iat, nbf and exp.
LEEWAY_SECONDS = 60


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    username: str
    kind: str  # "user" or "client"
    hospital_id: str
    role: str
    scope: str
    practitioner_id: str | None
    token_id: str
    #: The account's token epoch when the token was issued.
    epoch: int = 0
    #: When it was issued (`iat`, epoch seconds), as verified; 0 for claims not yet issued.
    issued_at: float = 0.0
    #: When it expires (`exp`, epoch seconds), as verified; 0 for claims not yet issued.
    expires_at: float = 0.0


def invalid_token(message: str) -> Unauthorized:
    """401 with the RFC 6750 challenge that tells the client the token is the problem."""
    challenge = f'Bearer error="invalid_token", error_description="{message}"'
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def missing_token() -> Unauthorized:
    return Unauthorized(
        "a bearer token is required (POST /auth/token)", headers={"WWW-Authenticate": "Bearer"}
    )


def issue_token(
    settings: Settings, claims: TokenClaims, *, not_after: datetime | None = None
) -> tuple[str, int]:
    """A token for `claims` living `token_lifetime` seconds, or less when it must not outlive
    `not_after` (a portal session's absolute end). Returns it and its lifetime in seconds."""
    kid, secret = settings.signing_keys[0]
    # The system clock, not alliance.clock: PyJWT checks exp, nbf and iat against it.
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=settings.token_lifetime)
    if not_after is not None:
        expires = min(expires, not_after)
    payload: dict[str, Any] = {
        "iss": settings.token_issuer,
        "sub": claims.subject,
        "aud": settings.fhir_base,
        "iat": now,
        "exp": expires,
        "jti": claims.token_id or str(uuid.uuid4()),
        "preferred_username": claims.username,
        "kind": claims.kind,
        "hospital": claims.hospital_id,
        "role": claims.role,
        "scope": claims.scope,
        "epoch": claims.epoch,
    }
    if claims.practitioner_id:
        payload["fhirUser"] = f"Practitioner/{claims.practitioner_id}"
    token = jwt.encode(payload, secret, algorithm=ALGORITHM, headers={"kid": kid})
    return token, max(0, int((expires - now).total_seconds()))


def verify_token(settings: Settings, token: str) -> TokenClaims:
    """The claims of a valid token; anything else raises 401 invalid_token."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise invalid_token("the token is not a JWT") from None
    if header.get("alg") != ALGORITHM:
        raise invalid_token(f"tokens are signed with {ALGORITHM}, not {header.get('alg')}")
    keys = dict(settings.signing_keys)
    secret = keys.get(str(header.get("kid")))
    if secret is None:
        raise invalid_token("the token's signing key is not known")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=settings.fhir_base,
            issuer=settings.token_issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise invalid_token("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise invalid_token("the token is not valid yet (issued in the future)") from None
    except jwt.InvalidAudienceError:
        raise invalid_token("the token is not for this server") from None
    except jwt.PyJWTError as exc:
        raise invalid_token(f"the token is not valid: {exc}") from None
    fhir_user = str(payload.get("fhirUser") or "")
    return TokenClaims(
        subject=str(payload["sub"]),
        username=str(payload.get("preferred_username", payload["sub"])),
        kind=str(payload.get("kind", "user")),
        hospital_id=str(payload.get("hospital", "")),
        role=str(payload.get("role", "")),
        scope=str(payload.get("scope", "")),
        practitioner_id=fhir_user.removeprefix("Practitioner/") or None,
        token_id=str(payload["jti"]),
        epoch=_epoch(payload.get("epoch", 0)),
        issued_at=float(payload["iat"]),
        expires_at=float(payload["exp"]),
    )


class VerifiedTokens:
    """The tokens this process has verified, so that a client sending the same token on each
    request has its signature, issuer, audience and claims checked once, not every time.

    Only what the token itself says is kept (a token is immutable: the same text verifies to
    the same claims), and its expiry is checked again at each use, with the same leeway. Whether
    the account may still use it (its token epoch: revocation) is not a property of the token,
    and is asked of the database on every request (service.principal_for)."""

    #: Most tokens kept; past it the cache starts again.
    SIZE = 4096

    def __init__(self) -> None:
        self._verified: dict[str, tuple[Settings, TokenClaims]] = {}

    def verify(self, settings: Settings, token: str) -> TokenClaims:
        """`verify_token`, answered from the tokens verified before (with the same settings:
        keys, issuer, audience) while they last."""
        kept = self._verified.get(token)
        if kept is not None and kept[0] is settings:
            claims = kept[1]
        else:
            claims = verify_token(settings, token)
            if len(self._verified) >= self.SIZE:
                self._verified.clear()
            self._verified[token] = (settings, claims)
        # PyJWT's rule for exp (with the leeway): expired once now >= exp + leeway.
        if time.time() >= claims.expires_at + LEEWAY_SECONDS:
            self._verified.pop(token, None)
            raise invalid_token("the token has expired")
        return claims


def _epoch(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_token("the token's epoch is not an integer")
    return value
