"""Revocation and session lifetime: logging out (API or portal), a password reset, a lock and a
role change end every bearer token and portal session of that account at once, partner
systems' tokens end when their secret is reset or they are locked; a portal session has an
absolute lifetime its token renewals never pass; a minute of clock skew is tolerated."""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from alliance.config import Settings
from alliance.security import sessions
from alliance.security.service import register_client
from tests.accounts import PATIENT, cli_fixture, login, portal, read, token_of  # noqa: F401
from tests.conftest import mint_token

# ---- logout ----------------------------------------------------------------------------------


def test_api_logout_ends_every_token_and_portal_session_of_the_account(
    client: TestClient, app: Any
) -> None:
    first, second = token_of(client, "dr.xinyuan.people"), token_of(client, "dr.xinyuan.people")
    browser = TestClient(app)
    portal(browser, "dr.xinyuan.people")
    assert browser.get("/patients", follow_redirects=False).status_code == 200
    other = token_of(client, "dr.xinyuan.tcm")

    r = client.post("/auth/logout", headers={"Authorization": f"Bearer {first}"})
    assert r.status_code == 204
    assert read(client, first) == 401
    assert read(client, second) == 401
    assert browser.get("/patients", follow_redirects=False).status_code == 303
    # Another account is untouched; logging out twice is refused; logging in again works.
    assert read(client, other, "/fhir/Organization/subei") == 200
    again = client.post("/auth/logout", headers={"Authorization": f"Bearer {first}"})
    assert again.status_code == 401
    assert client.post("/auth/logout").status_code == 401
    assert read(client, token_of(client, "dr.xinyuan.people")) == 200


def test_portal_logout_ends_the_account_everywhere_and_a_copied_cookie_is_dead(
    client: TestClient, app: Any
) -> None:
    csrf = portal(client, "dr.xinyuan.people")
    copied = client.cookies.get(sessions.COOKIE)
    assert copied
    bearer = token_of(TestClient(app), "dr.xinyuan.people")
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert read(client, bearer) == 401
    thief = TestClient(app, cookies={sessions.COOKIE: copied})
    assert thief.get("/patients", follow_redirects=False).status_code == 303
    # The cookie also stops working for the API (the viewer's same-origin requests).
    assert thief.get(PATIENT).status_code == 401


# ---- password reset, lock, role change ------------------------------------------------------


def test_password_reset_by_an_administrator_ends_tokens_and_sessions(
    client: TestClient, app: Any
) -> None:
    bearer = token_of(client, "dr.xinyuan.people")
    doctor = TestClient(app)
    portal(doctor, "dr.xinyuan.people")
    admin = TestClient(app)
    csrf = portal(admin, "admin.xinyuan.people")
    r = admin.post(
        "/admin/staff/dr.xinyuan.people/reset", data={"csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 200  # the page showing the new password once
    password = re.search(r'id="new-password">([^<]+)<', r.text)
    assert password is not None
    assert read(client, bearer) == 401
    assert doctor.get("/patients", follow_redirects=False).status_code == 303
    assert login(client, "dr.xinyuan.people").status_code == 400  # the old password
    assert login(client, "dr.xinyuan.people", password.group(1)).status_code == 200
    # The administrator's own session goes on.
    assert admin.get("/admin/staff", follow_redirects=False).status_code == 200


def test_lock_ends_tokens_at_once_and_unlock_does_not_revive_them(
    client: TestClient, app: Any
) -> None:
    bearer = token_of(client, "dr.xinyuan.people")
    admin = TestClient(app)
    csrf = portal(admin, "admin.xinyuan.people")
    lock = admin.post(
        "/admin/staff/dr.xinyuan.people/lock", data={"csrf": csrf}, follow_redirects=False
    )
    assert lock.status_code == 303
    assert read(client, bearer) == 401
    assert login(client, "dr.xinyuan.people").status_code == 400
    unlock = admin.post(
        "/admin/staff/dr.xinyuan.people/unlock", data={"csrf": csrf}, follow_redirects=False
    )
    assert unlock.status_code == 303
    assert read(client, bearer) == 401
    assert read(client, token_of(client, "dr.xinyuan.people")) == 200


def test_role_change_ends_tokens_made_for_the_old_role(
    client: TestClient, app: Any, cli: Any
) -> None:
    bearer = token_of(client, "dr.xinyuan.people")
    assert cli("user", "set-role", "dr.xinyuan.people", "specialist") == 0
    assert read(client, bearer) == 401
    fresh = login(client, "dr.xinyuan.people")
    assert jwt.decode(fresh.json()["access_token"], options={"verify_signature": False})[
        "role"
    ] == ("specialist")
    # Through the portal too: the administrator changes it back.
    admin = TestClient(app)
    csrf = portal(admin, "admin.xinyuan.people")
    newer = fresh.json()["access_token"]
    r = admin.post(
        "/admin/staff/dr.xinyuan.people/role",
        data={"csrf": csrf, "role": "county-doctor"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert read(client, newer) == 401


def test_tokens_minted_for_tests_follow_the_epoch(
    client: TestClient, settings: Settings, cli: Any
) -> None:
    before = mint_token(settings, "sp.subei")
    assert read(client, before, "/fhir/Organization/subei") == 200
    assert cli("user", "lock", "sp.subei") == 0
    assert cli("user", "unlock", "sp.subei") == 0
    assert read(client, before, "/fhir/Organization/subei") == 401
    assert read(client, mint_token(settings, "sp.subei"), "/fhir/Organization/subei") == 200


def test_client_tokens_end_when_its_secret_is_reset_or_it_is_locked(
    client: TestClient, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.db.transaction(write=True) as s:
        secret = register_client(
            session=s, client_id="xy-people-his", name="HIS", hospital_id="xy-people"
        )

    def client_token(secret: str) -> Any:
        return client.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            auth=("xy-people-his", secret),
        )

    r = client_token(secret)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert read(client, token) == 200
    capsys.readouterr()
    assert cli("client", "reset-secret", "xy-people-his") == 0
    new_secret = capsys.readouterr().out.rsplit(": ", 1)[1].strip()
    assert read(client, token) == 401
    assert client_token(secret).status_code == 401
    token = client_token(new_secret).json()["access_token"]
    assert read(client, token) == 200
    assert cli("client", "lock", "xy-people-his") == 0
    assert read(client, token) == 401
    assert client_token(new_secret).status_code == 401
    assert cli("client", "unlock", "xy-people-his") == 0
    assert read(client, token) == 401  # unlocking revives nothing
    assert client_token(new_secret).status_code == 200


# ---- the portal session's absolute lifetime ---------------------------------------------------


def _session_cookie(settings: Settings, client: TestClient) -> sessions.WebSession:
    session = sessions.decode(settings, client.cookies.get(sessions.COOKIE))
    assert session is not None
    return session


def _set_cookie(settings: Settings, client: TestClient, session: sessions.WebSession) -> None:
    client.cookies.delete(sessions.COOKIE)
    client.cookies.set(sessions.COOKIE, sessions.encode(settings, session))


def test_an_active_portal_session_still_ends_after_its_absolute_lifetime(
    client: TestClient, settings: Settings
) -> None:
    portal(client, "auditor")
    session = _session_cookie(settings, client)
    hours = settings.portal_session_hours
    # Used a minute ago (not idle), but started longer ago than a session lives.
    old = sessions.WebSession(
        session.token, session.csrf, time.time() - 60, session.lang, time.time() - hours * 3600 - 1
    )
    _set_cookie(settings, client, old)
    assert client.get("/audit", follow_redirects=False).status_code == 303


def test_renewing_the_sessions_token_never_extends_the_session(
    client: TestClient, settings: Settings
) -> None:
    portal(client, "auditor")
    session = _session_cookie(settings, client)
    claims = jwt.decode(session.token, options={"verify_signature": False})
    # Ten minutes of the session left, and its token past half its life: the page renews the
    # token, but only up to the session's end.
    started = time.time() - settings.portal_session_hours * 3600 + 600
    secret = settings.signing_keys[0][1]
    aged = jwt.encode(
        {**claims, "iat": int(time.time()) - 2000},
        secret,
        algorithm="HS256",
        headers={"kid": settings.signing_keys[0][0]},
    )
    _set_cookie(
        settings,
        client,
        sessions.WebSession(aged, session.csrf, time.time(), session.lang, started),
    )
    r = client.get("/audit", follow_redirects=False)
    assert r.status_code == 200
    renewed = sessions.decode(settings, r.cookies.get(sessions.COOKIE))
    assert renewed is not None
    assert renewed.token != aged and renewed.started == started
    new_claims = jwt.decode(renewed.token, options={"verify_signature": False})
    assert new_claims["exp"] <= started + settings.portal_session_hours * 3600
    assert new_claims["epoch"] == claims["epoch"]


# ---- clock skew ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "offset", "status"),
    [
        ("iat", 50, 200),  # the issuer's clock a little ahead: tolerated
        ("nbf", 50, 200),
        ("iat", 120, 401),  # beyond a minute: refused
        ("nbf", 120, 401),
        ("exp", -50, 200),  # just expired by the verifier's clock: tolerated
        ("exp", -120, 401),
    ],
)
def test_a_minute_of_clock_skew_is_tolerated(
    client: TestClient, settings: Settings, claim: str, offset: int, status: int
) -> None:
    claims = jwt.decode(mint_token(settings, "sp.subei"), options={"verify_signature": False})
    kid, secret = settings.signing_keys[0]
    token = jwt.encode(
        {**claims, claim: int(time.time()) + offset},
        secret,
        algorithm="HS256",
        headers={"kid": kid},
    )
    assert read(client, token, "/fhir/Organization/subei") == status
