"""Failed logins are throttled per account and per client address, with back-off, in the
database (every worker agrees); the throttled answer is 429 with Retry-After; an attacker's
failures never end the victim's live tokens or portal sessions."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from alliance.config import Settings
from alliance.security.models import LoginThrottle
from alliance.security.service import register_client
from server.app import create_app
from tests.accounts import login, portal, read, token_of


def wrong(client: TestClient, username: str) -> Any:
    return login(client, username, "not-the-password")


def waits(r: Any, seconds: int) -> bool:
    """Whether the answer asks to retry after `seconds` (less the second or two the test's own
    requests took since the failure that set the wait)."""
    return seconds - 3 <= int(r.headers["retry-after"]) <= seconds


def time_passes(client: TestClient, seconds: int) -> None:
    """Move the throttle's clock: every recorded failure and wait is `seconds` older."""
    services = client.app.state.services  # type: ignore[attr-defined]
    back = timedelta(seconds=seconds)
    with services.db.transaction(write=True) as s:
        for row in s.scalars(select(LoginThrottle)):
            row.last_failure -= back
            if row.blocked_until is not None:
                row.blocked_until -= back


def test_failures_on_an_account_are_throttled_with_back_off(
    client: TestClient, settings: Settings
) -> None:
    for _ in range(settings.login_account_failures):
        r = wrong(client, "dr.xinyuan.tcm")
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # Throttled: refused before the password is looked at, even the right one.
    r = login(client, "dr.xinyuan.tcm")
    assert r.status_code == 429
    assert r.json()["error"] == "invalid_grant"
    assert waits(r, settings.login_backoff_seconds)
    assert r.headers["cache-control"] == "no-store"
    time_passes(client, settings.login_backoff_seconds)
    # The next failure doubles the wait.
    assert wrong(client, "dr.xinyuan.tcm").status_code == 400
    r = login(client, "dr.xinyuan.tcm")
    assert r.status_code == 429
    assert waits(r, 2 * settings.login_backoff_seconds)
    time_passes(client, 2 * settings.login_backoff_seconds)
    # The right password after the wait logs in, and forgets the account's failures.
    assert login(client, "dr.xinyuan.tcm").status_code == 200
    assert wrong(client, "dr.xinyuan.tcm").status_code == 400


def test_the_wait_is_capped_and_failures_are_forgotten(
    client: TestClient, settings: Settings
) -> None:
    for _ in range(settings.login_account_failures):
        wrong(client, "dr.xinyuan.mch")
    waited = []
    for _ in range(7):
        probe = login(client, "dr.xinyuan.mch")
        assert probe.status_code == 429
        waited.append(int(probe.headers["retry-after"]))
        time_passes(client, waited[-1])
        assert wrong(client, "dr.xinyuan.mch").status_code == 400
    expected = [30, 60, 120, 240, 480, 900, 900]
    assert all(w - 3 <= got <= w for got, w in zip(waited, expected, strict=True)), waited
    # Twice the longest wait without a failure: forgotten.
    time_passes(client, 2 * settings.login_backoff_max_seconds)
    assert login(client, "dr.xinyuan.mch").status_code == 200


def test_unknown_accounts_are_throttled_alike(client: TestClient, settings: Settings) -> None:
    for _ in range(settings.login_account_failures):
        assert wrong(client, "no.such.person").status_code == 400
    assert wrong(client, "no.such.person").status_code == 429


def test_an_attackers_failures_never_end_the_victims_sessions(
    client: TestClient, app: Any, settings: Settings
) -> None:
    victim_token = token_of(client, "dr.xinyuan.people")
    browser = TestClient(app)
    portal(browser, "dr.xinyuan.people")
    attacker = TestClient(app, client=("203.0.113.9", 40000))
    for _ in range(settings.login_account_failures + 5):
        attacker_status = wrong(attacker, "dr.xinyuan.people").status_code
    assert attacker_status == 429
    assert read(client, victim_token) == 200
    assert browser.get("/patients", follow_redirects=False).status_code == 200


def test_failures_from_one_address_are_throttled_across_accounts(
    app: Any, settings: Settings
) -> None:
    guesser = TestClient(app, client=("198.51.100.7", 40000))
    for n in range(settings.login_address_failures):
        assert wrong(guesser, f"guess.{n}").status_code == 400
    r = login(guesser, "sp.subei")  # the right password, from the guessing address
    assert r.status_code == 429
    assert waits(r, settings.login_backoff_seconds)
    # The account itself is not throttled: from another address it logs in.
    elsewhere = TestClient(app, client=("192.0.2.20", 40000))
    assert login(elsewhere, "sp.subei").status_code == 200


def test_workers_agree_on_the_throttle(app: Any, settings: Settings) -> None:
    """Failures seen by one worker count at another (two apps, two engines, one database)."""
    other_app = create_app(settings)
    try:
        first, second = TestClient(app), TestClient(other_app)
        for n in range(settings.login_account_failures):
            assert wrong(first if n % 2 else second, "sp.yz.tcm").status_code == 400
        assert login(first, "sp.yz.tcm").status_code == 429
        assert login(second, "sp.yz.tcm").status_code == 429
    finally:
        other_app.state.services.db.dispose()


def test_client_credentials_are_throttled_too(client: TestClient, settings: Settings) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.db.transaction(write=True) as s:
        secret = register_client(
            session=s, client_id="xy-tcm-his", name="HIS", hospital_id="xy-tcm"
        )

    def token(given: str) -> Any:
        return client.post(
            "/auth/token", data={"grant_type": "client_credentials"}, auth=("xy-tcm-his", given)
        )

    for _ in range(settings.login_account_failures):
        assert token("wrong-secret").status_code == 401
    r = token(secret)
    assert r.status_code == 429
    assert r.json()["error"] == "invalid_client"
    assert waits(r, settings.login_backoff_seconds)


def test_the_portal_login_is_throttled_with_a_readable_page(
    client: TestClient, settings: Settings
) -> None:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None

    def attempt(password: str) -> Any:
        return client.post(
            "/login",
            data={"username": "sp.yz.mch", "password": password, "csrf": csrf.group(1)},
            follow_redirects=False,
        )

    for _ in range(settings.login_account_failures):
        assert attempt("not-the-password").status_code == 401
    r = attempt("alliance-demo")
    assert r.status_code == 429
    assert waits(r, settings.login_backoff_seconds)
    assert re.search(r"登录失败次数过多，请 \d+ 秒后再试", r.text)


def test_throttled_attempts_are_audited(
    client: TestClient, settings: Settings, as_user: Any
) -> None:
    for _ in range(settings.login_account_failures + 1):
        wrong(client, "sp.subei")
    events = as_user("auditor").get(
        "/fhir/AuditEvent", params={"altid": "sp.subei", "type": "110114", "_sort": "-date"}
    )
    assert events.status_code == 200
    newest = events.json()["entry"][0]["resource"]
    assert newest["outcome"] == "4"
    assert newest["outcomeDesc"].startswith("throttled after failed logins")
