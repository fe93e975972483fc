"""The service's Ed25519 signatures (alliance.security.signing): sign, verify, the JWK Set,
keys rotated out of the configuration still verifying, and a worker without a key."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from alliance.config import Settings
from alliance.db import Database
from alliance.errors import Invalid, Unavailable
from alliance.security.signing import DEMO_KID, jwks, sign, verify


def _seed() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def _with_keys(settings: Settings, keys: str, *, demo: bool = False) -> Settings:
    # Outside demo mode token keys are required when the settings load; these tests are about
    # the signature keys only.
    update = {"signature_keys": keys, "demo": demo, "jwt_keys": "t1:" + "t" * 40}
    return settings.model_copy(update=update)


def test_sign_and_verify_round_trip_and_jwks(settings: Settings, client: TestClient) -> None:
    db = Database(settings.database_url)
    try:
        with db.transaction(write=True) as s:
            jws = sign(settings, s, {"sha256": "ab" * 32, "iat": datetime.now(UTC)})
        assert jwt.get_unverified_header(jws) == {"alg": "EdDSA", "kid": DEMO_KID, "typ": "JWT"}
        with db.transaction() as s:
            assert verify(s, jws)["sha256"] == "ab" * 32
            assert [k["kid"] for k in jwks(s)["keys"]] == [DEMO_KID]
    finally:
        db.dispose()
    r = client.get("/auth/jwks.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/jwk-set+json"
    (key,) = r.json()["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["kid"] == DEMO_KID
    assert "d" not in key  # never the private part
    # A third party verifies with the published key alone.
    public = jwt.PyJWK(key).key
    assert jwt.decode(jws, public, algorithms=["EdDSA"])["sha256"] == "ab" * 32


def test_a_key_rotated_out_of_the_configuration_still_verifies(settings: Settings) -> None:
    old = _with_keys(settings, f"k1:{_seed()}")
    new = _with_keys(settings, f"k2:{_seed()}")  # k1 dropped entirely
    db = Database(settings.database_url)
    try:
        with db.transaction(write=True) as s:
            first = sign(old, s, {"n": 1})
        with db.transaction(write=True) as s:
            second = sign(new, s, {"n": 2})
        with db.transaction() as s:
            assert verify(s, first) == {"n": 1}
            assert verify(s, second) == {"n": 2}
            assert {k["kid"] for k in jwks(s)["keys"]} == {"k1", "k2"}
    finally:
        db.dispose()


def test_forged_tampered_and_unknown_signatures_are_invalid(settings: Settings) -> None:
    db = Database(settings.database_url)
    stranger = Ed25519PrivateKey.generate()
    try:
        with db.transaction(write=True) as s:
            jws = sign(settings, s, {"sha256": "00"})
        head, _body, sig = jws.split(".")
        tampered_body = base64.urlsafe_b64encode(b'{"sha256":"ff"}').decode().rstrip("=")
        forged = jwt.encode(
            {"sha256": "00"}, stranger, algorithm="EdDSA", headers={"kid": DEMO_KID}
        )
        unknown = jwt.encode({"sha256": "00"}, stranger, algorithm="EdDSA", headers={"kid": "nope"})
        hs256 = jwt.encode({"sha256": "00"}, "x" * 32, algorithm="HS256", headers={"kid": DEMO_KID})
        with db.transaction() as s:
            for bad in (f"{head}.{tampered_body}.{sig}", forged, unknown, hs256, "not a jws"):
                with pytest.raises(Invalid):
                    verify(s, bad)
    finally:
        db.dispose()


def test_clock_skew_of_a_minute_is_tolerated(settings: Settings) -> None:
    db = Database(settings.database_url)
    now = datetime.now(UTC)
    try:
        with db.transaction(write=True) as s:
            ahead = sign(settings, s, {"iat": now + timedelta(seconds=50)})
            too_far = sign(settings, s, {"iat": now + timedelta(seconds=120)})
        with db.transaction() as s:
            assert "iat" in verify(s, ahead)
            with pytest.raises(Invalid):
                verify(s, too_far)
    finally:
        db.dispose()


def test_a_worker_without_a_key_verifies_but_does_not_sign(settings: Settings) -> None:
    signer = _with_keys(settings, f"k1:{_seed()}")
    keyless = _with_keys(settings, "", demo=False)
    db = Database(settings.database_url)
    try:
        with db.transaction(write=True) as s:
            jws = sign(signer, s, {"n": 1})
        with db.transaction(write=True) as s:
            with pytest.raises(Unavailable) as refused:
                sign(keyless, s, {"n": 2})
            assert refused.value.status == 503
            assert "ALLIANCE_SIGNATURE_KEYS" in refused.value.message
            assert verify(s, jws) == {"n": 1}
    finally:
        db.dispose()


def test_a_kid_reused_for_another_key_is_refused(settings: Settings) -> None:
    db = Database(settings.database_url)
    try:
        with db.transaction(write=True) as s:
            sign(_with_keys(settings, f"k1:{_seed()}"), s, {"n": 1})
        with db.transaction(write=True) as s, pytest.raises(Unavailable):
            sign(_with_keys(settings, f"k1:{_seed()}"), s, {"n": 2})
    finally:
        db.dispose()


def test_malformed_signature_keys_setting_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError):
        from alliance.security.signing import private_keys

        private_keys(_with_keys(settings, "k1:tooshort"))
