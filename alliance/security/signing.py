"""Signatures the service attests: asymmetric Ed25519 keys (RFC 8032), compact JWS with
`alg: EdDSA` (RFC 8037) and a `kid` naming the key.

Private keys come from `ALLIANCE_SIGNATURE_KEYS` (`kid:<base64url 32-byte seed>` pairs; the
first signs). Demo mode has a fixed, public demo key; outside demo mode a worker without the
setting verifies but does not sign. Verifying never needs a private key: the public key of
every key that ever signed is recorded in `security_signing_key` the first time it signs (in
the transaction of that signature), and kept for good, so taking a private key out of the
configuration never makes an old signature unverifiable. The recorded keys are published as a
JWK Set (RFC 7517, `OKP` keys of RFC 8037) at `GET /auth/jwks.json`.

These keys are not the access-token keys (`ALLIANCE_JWT_KEYS`): tokens live an hour, a signed
opinion or an audit checkpoint lives for decades.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from alliance import clock
from alliance.config import Settings
from alliance.errors import Invalid, Unavailable
from alliance.security.models import SigningKey

ALGORITHM = "EdDSA"
#: Tolerated clock difference between the signer's and the verifier's clocks (iat, nbf, exp).
LEEWAY_SECONDS = 60
#: The demo key: public on purpose (its seed is in this file), never for production.
DEMO_KID = "demo-ed25519"
_DEMO_SEED = hashlib.sha256(b"alliance demo signature key - not for production use").digest()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64url without padding (the JWK `x`)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return _b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def private_keys(settings: Settings) -> list[tuple[str, Ed25519PrivateKey]]:
    """(kid, private key) pairs from ALLIANCE_SIGNATURE_KEYS, the signing key first; the demo
    key in demo mode when none is set; none otherwise (this process then cannot sign)."""
    keys = [
        (kid, Ed25519PrivateKey.from_private_bytes(seed)) for kid, seed in settings.signature_seeds
    ]
    if not keys and settings.demo:
        keys = [(DEMO_KID, Ed25519PrivateKey.from_private_bytes(_DEMO_SEED))]
    return keys


def _record(session: Session, kid: str, public: str) -> None:
    """Record the public key of `kid` (first use wins; concurrent first uses agree), and refuse
    to sign when `kid` is already recorded with another key: such a signature could never be
    verified."""
    dialect = session.get_bind().dialect.name
    values = {"kid": kid, "public_key": public, "first_used": clock.now()}
    if dialect == "postgresql":
        session.execute(postgresql.insert(SigningKey).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(SigningKey).values(values).on_conflict_do_nothing())
    elif session.get(SigningKey, kid) is None:
        session.add(SigningKey(**values))
        session.flush()
    recorded = session.scalar(select(SigningKey.public_key).where(SigningKey.kid == kid))
    if recorded != public:
        raise Unavailable(
            f"the signature key {kid!r} is already recorded with another public key; give a "
            "new key a new kid in ALLIANCE_SIGNATURE_KEYS"
        )


def sign(settings: Settings, session: Session, payload: dict[str, Any]) -> str:
    """A compact JWS (RFC 7515) of `payload` by the current signature key, whose public key is
    recorded in the same transaction. 503 when this process holds no signature key."""
    keys = private_keys(settings)
    if not keys:
        raise Unavailable(
            "this server holds no signature key (ALLIANCE_SIGNATURE_KEYS is not set), so it "
            "cannot sign; it can still verify"
        )
    kid, key = keys[0]
    _record(session, kid, public_key_text(key))
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": kid})


def verify(session: Session, jws: str) -> dict[str, Any]:
    """The payload of `jws` if it is signed by a recorded key; else `Invalid` saying why."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.PyJWTError:
        raise Invalid("the signature is not a compact JWS") from None
    if header.get("alg") != ALGORITHM:
        raise Invalid(f"signatures are {ALGORITHM}, not {header.get('alg')}")
    kid = header.get("kid")
    recorded = (
        session.scalar(select(SigningKey.public_key).where(SigningKey.kid == kid))
        if isinstance(kid, str)
        else None
    )
    if recorded is None:
        raise Invalid(f"the signature's key {kid!r} is not known")
    public = Ed25519PublicKey.from_public_bytes(_unb64url(recorded))
    try:
        payload: dict[str, Any] = jwt.decode(
            jws,
            public,
            algorithms=[ALGORITHM],
            leeway=LEEWAY_SECONDS,
            options={"verify_aud": False, "verify_iss": False},
        )
    except jwt.PyJWTError as exc:
        raise Invalid(f"the signature does not verify: {exc}") from None
    return payload


def jwks(session: Session) -> dict[str, Any]:
    """Every recorded public key as a JWK Set (RFC 7517 section 5; OKP keys, RFC 8037)."""
    rows = session.execute(
        select(SigningKey.kid, SigningKey.public_key).order_by(SigningKey.first_used)
    ).all()
    return {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": ALGORITHM, "kid": kid, "x": x}
            for kid, x in rows
        ]
    }
