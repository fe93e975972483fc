"""Accounts, tokens and scopes; grants and administrators' writes. The access matrix, one
exact status per account, record and interaction, is tests/test_access_matrix.py."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from alliance.config import Settings
from alliance.security.service import (
    OPERATOR,
    close_grants,
    open_grant,
    register_client,
    set_locked,
)
from tests.conftest import bearer, mint_token
from tests.factories import patient

Login = Callable[..., Any]


def login(client: TestClient, username: str, password: str = "alliance-demo", **extra: str) -> Any:
    data = {"grant_type": "password", "username": username, "password": password, **extra}
    return client.post("/auth/token", data=data)


def assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["resourceType"] == "OperationOutcome"


# ---- tokens ----------------------------------------------------------------------------------


def test_good_login_and_use(client: TestClient, settings: Settings) -> None:
    r = login(client, "dr.xinyuan.people")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "user/*.cruds"
    assert r.headers["cache-control"] == "no-store"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["iss"] == "http://testserver/auth"
    assert claims["aud"] == "http://testserver/fhir"
    assert claims["hospital"] == "xy-people" and claims["role"] == "county-doctor"
    assert claims["fhirUser"] == "Practitioner/dr-xinyuan-people"
    assert jwt.get_unverified_header(body["access_token"])["kid"] == "demo"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/fhir/Patient/demo-aygul", headers=headers).status_code == 200


def test_wrong_password_is_invalid_grant_and_audited(
    client: TestClient, as_user: Callable[[str], TestClient]
) -> None:
    r = login(client, "dr.xinyuan.people", "not-the-password")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert login(client, "nobody-at-all", "whatever-it-is").json()["error"] == "invalid_grant"
    events = as_user("auditor").get(
        "/fhir/AuditEvent", params={"altid": "dr.xinyuan.people", "type": "110114"}
    )
    outcomes = [e["resource"]["outcome"] for e in events.json()["entry"]]
    assert outcomes[0] == "4"  # newest first: the failed login
    assert events.json()["entry"][0]["resource"]["outcomeDesc"] == "wrong password"


def test_repeated_failures_throttle_the_account(client: TestClient, settings: Settings) -> None:
    for _ in range(settings.login_account_failures):
        assert login(client, "dr.xinyuan.tcm", "wrong-password!").status_code == 400
    # Now even the right password waits (throttled, not locked: tests/test_sessions.py).
    assert login(client, "dr.xinyuan.tcm").status_code == 429


def test_bad_requests_to_the_token_endpoint(client: TestClient) -> None:
    assert client.post("/auth/token", data={"grant_type": "magic"}).json()["error"] == (
        "unsupported_grant_type"
    )
    assert client.post("/auth/token", data={"grant_type": "password"}).json()["error"] == (
        "invalid_request"
    )
    r = client.post("/auth/token", json={"grant_type": "password"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    bad_scope = login(client, "auditor", scope="user/Patient.rs")
    assert bad_scope.status_code == 400 and bad_scope.json()["error"] == "invalid_scope"


def test_missing_and_invalid_tokens_answer_401(client: TestClient, settings: Settings) -> None:
    r = client.get("/fhir/Patient/demo-aygul")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    good = mint_token(settings, "dr.xinyuan.people")
    claims = jwt.decode(good, options={"verify_signature": False})
    kid, secret = settings.signing_keys[0]

    def forged(**changes: Any) -> str:
        return jwt.encode({**claims, **changes}, secret, algorithm="HS256", headers={"kid": kid})

    # Beyond the minute of clock skew tolerated (tests/test_sessions.py).
    expired = forged(exp=int(time.time()) - 120, iat=int(time.time()) - 4000)
    wrong_aud = forged(aud="http://elsewhere/fhir")
    wrong_key = jwt.encode(claims, "x" * 40, algorithm="HS256", headers={"kid": kid})
    unknown_kid = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "old"})
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    alg_none = f"{header}.{payload}."
    for token in (expired, wrong_aud, wrong_key, unknown_kid, alg_none, "not-a-jwt"):
        assert_invalid_token(
            client.get("/fhir/Patient/demo-aygul", headers={"Authorization": f"Bearer {token}"})
        )


def test_key_rotation_by_kid(client: TestClient, settings: Settings) -> None:
    old = mint_token(settings, "dr.xinyuan.people")
    rotated = settings.model_copy(
        update={
            "jwt_keys": "k2:" + "n" * 40 + ",demo:alliance-demo-signing-key-not-for-production-use"
        }
    )
    new = mint_token(rotated, "dr.xinyuan.people")
    assert jwt.get_unverified_header(new)["kid"] == "k2"
    client.app.state.services.settings = rotated  # type: ignore[attr-defined]
    guard = client.app.state.services.guard  # type: ignore[attr-defined]
    guard.settings = rotated
    for token in (old, new):  # the old key still verifies until it is dropped
        r = client.get("/fhir/Patient/demo-aygul", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200


def test_narrow_scope_is_403_on_the_rest(client: TestClient, settings: Settings) -> None:
    r = login(client, "dr.xinyuan.people", scope="user/Patient.rs")
    assert r.json()["scope"] == "user/Patient.rs"
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get("/fhir/Patient/demo-aygul", headers=headers).status_code == 200
    assert client.get("/fhir/Patient", headers=headers).status_code == 200
    assert client.post("/fhir/Patient", json=patient(), headers=headers).status_code == 403
    assert client.get("/fhir/Organization/subei", headers=headers).status_code == 403
    v1 = login(client, "dr.xinyuan.people", scope="user/Patient.read openid").json()
    assert v1["scope"] == "user/Patient.rs"


def test_locked_account_tokens_stop_working(client: TestClient, settings: Settings) -> None:
    headers = bearer(settings, "sp.subei")
    assert client.get("/fhir/Organization/subei", headers=headers).status_code == 200
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.db.transaction(write=True) as s:
        set_locked(session=s, by=OPERATOR, username="sp.subei", locked=True)
    assert_invalid_token(client.get("/fhir/Organization/subei", headers=headers))
    assert login(client, "sp.subei").status_code == 400


def test_client_credentials_for_a_partner_system(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.db.transaction(write=True) as s:
        secret = register_client(
            session=s, client_id="xy-people-his", name="HIS", hospital_id="xy-people"
        )
    r = client.post(
        "/auth/token", data={"grant_type": "client_credentials"}, auth=("xy-people-his", secret)
    )
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/*.cruds"
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get("/fhir/Patient/demo-aygul", headers=headers).status_code == 200
    assert client.get("/fhir/Patient/demo-ma-xiulan", headers=headers).status_code == 404
    wrong = client.post(
        "/auth/token", data={"grant_type": "client_credentials"}, auth=("xy-people-his", "no")
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


# ---- who may see what (every cell: tests/test_access_matrix.py) -----------------------------


def test_administrators_write_their_own_hospital_only(as_user: Callable[[str], TestClient]) -> None:
    admin = as_user("admin.xinyuan.people")
    own = admin.get("/fhir/Organization/xy-people-cardiology").json()
    assert admin.put("/fhir/Organization/xy-people-cardiology", json=own).status_code == 200
    other = admin.get("/fhir/Organization/subei-cardiology").json()
    assert admin.put("/fhir/Organization/subei-cardiology", json=other).status_code == 403
    # No clinical type in an administrator's scope: 403, before any look at the record.
    assert admin.get("/fhir/Patient/demo-aygul").status_code == 403


def test_grant_opens_only_what_it_names_and_closes(
    client: TestClient, as_user: Callable[[str], TestClient]
) -> None:
    specialist = as_user("sp.subei")
    assert specialist.get("/fhir/Patient/demo-aygul").status_code == 404
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.db.transaction(write=True) as s:
        open_grant(
            session=s,
            patient_id="demo-aygul",
            hospital_id="subei",
            reason="ServiceRequest/test-referral",
            resources=[("Patient", "demo-aygul")],
        )
    assert specialist.get("/fhir/Patient/demo-aygul").status_code == 200
    found = specialist.get("/fhir/Patient", params={"name": "阿依古丽"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["demo-aygul"]
    # Nothing else of that hospital's patients is opened, and seeing is not writing.
    assert specialist.get("/fhir/Patient/demo-wang-jianguo").status_code == 404
    aygul = specialist.get("/fhir/Patient/demo-aygul").json()
    assert specialist.put("/fhir/Patient/demo-aygul", json=aygul).status_code == 403
    with services.db.transaction(write=True) as s:
        assert close_grants(session=s, reason="ServiceRequest/test-referral", why="cancelled") == 1
    assert specialist.get("/fhir/Patient/demo-aygul").status_code == 404
    # Opening and closing are disclosures of the patient's data: both are in the trail.
    trail = as_user("auditor").get(
        "/fhir/AuditEvent", params={"entity": "ServiceRequest/test-referral"}
    )
    subtypes = [e["resource"]["subtype"][0]["code"] for e in trail.json()["entry"]]
    assert subtypes == ["grant-close", "grant-open"]
    # A grant whose period has ended closes by itself, without a background job.
    with services.db.transaction(write=True) as s:
        open_grant(
            session=s,
            patient_id="demo-aygul",
            hospital_id="subei",
            reason="ServiceRequest/old",
            resources=[("Patient", "demo-aygul")],
            valid_from=datetime.now(UTC) - timedelta(days=100),
            valid_until=datetime.now(UTC) - timedelta(days=10),
        )
    assert specialist.get("/fhir/Patient/demo-aygul").status_code == 404


def test_user_commands(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, client: TestClient
) -> None:
    import io

    from alliance.config import get_settings
    from server.cli import main

    monkeypatch.setenv("ALLIANCE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ALLIANCE_DEMO", "true")
    get_settings.cache_clear()
    try:
        assert (
            main(["user", "create", "dr.new", "--hospital", "xy-mch", "--role", "county-doctor"])
            == 0
        )
        assert login(client, "dr.new", "anything-at-all").status_code == 400  # no password yet
        monkeypatch.setattr("sys.stdin", io.StringIO("a-new-password-42\n"))
        assert main(["user", "reset-password", "dr.new", "--password-stdin"]) == 0
        assert login(client, "dr.new", "a-new-password-42").status_code == 200
        assert main(["user", "lock", "dr.new"]) == 0
        assert login(client, "dr.new", "a-new-password-42").status_code == 400
        assert main(["user", "unlock", "dr.new"]) == 0
        assert login(client, "dr.new", "a-new-password-42").status_code == 200
        assert main(["user", "create", "dr.new", "--hospital", "xy-mch", "--role", "x"]) == 2
        assert main(["user", "create", "dr.x", "--hospital", "nowhere", "--role", "auditor"]) == 2
    finally:
        get_settings.cache_clear()
