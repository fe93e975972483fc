"""Administrators manage their own hospital's staff only, within what their role manages
(security_role.manages): never another hospital's account, the auditor's, another
administrator's or their own, and they hand out no role beyond it. The CLI (the operator)
manages everything. Checked through the portal's staff pages, whose rule is the service's."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from alliance.config import Settings
from alliance.db import Database
from alliance.errors import Forbidden, NotFound
from alliance.security.access import Principal
from alliance.security.service import OPERATOR, reset_password, set_locked
from tests.accounts import (
    cli_fixture,  # noqa: F401 (the `cli` fixture)
    login,
    portal,
    read,
    token_of,
)


def post(admin: TestClient, csrf: str, path: str, **data: str) -> int:
    status: int = admin.post(path, data={"csrf": csrf, **data}, follow_redirects=False).status_code
    return status


@pytest.fixture
def subei_admin(app: Any) -> tuple[TestClient, str]:
    """admin.subei signed in: 苏北人民医院, the same hospital as the demo auditor's account."""
    admin = TestClient(app)
    return admin, portal(admin, "admin.subei")


@pytest.mark.parametrize("action", ["lock", "unlock", "reset"])
def test_another_hospitals_account_is_not_found(
    subei_admin: tuple[TestClient, str], action: str, client: TestClient
) -> None:
    admin, csrf = subei_admin
    token = token_of(client, "dr.xinyuan.people")
    assert post(admin, csrf, f"/admin/staff/dr.xinyuan.people/{action}") == 404
    assert read(client, token) == 200  # nothing happened to it


def test_another_hospitals_role_is_not_changed(
    subei_admin: tuple[TestClient, str], client: TestClient
) -> None:
    admin, csrf = subei_admin
    path = "/admin/staff/dr.xinyuan.people/role"
    assert post(admin, csrf, path, role="specialist") == 404
    assert login(client, "dr.xinyuan.people").json()["scope"] == "user/*.cruds"


@pytest.mark.parametrize("action", ["lock", "unlock", "reset"])
def test_the_auditor_is_managed_by_the_cli_only(
    subei_admin: tuple[TestClient, str], action: str, client: TestClient
) -> None:
    admin, csrf = subei_admin
    token = token_of(client, "auditor")
    assert post(admin, csrf, f"/admin/staff/auditor/{action}") == 403
    assert read(client, token, "/fhir/AuditEvent?_count=1") == 200


def test_an_administrator_cannot_lock_themselves_out(
    subei_admin: tuple[TestClient, str],
) -> None:
    admin, csrf = subei_admin
    assert post(admin, csrf, "/admin/staff/admin.subei/lock") == 403
    assert post(admin, csrf, "/admin/staff/admin.subei/role", role="specialist") == 403
    assert admin.get("/admin/staff", follow_redirects=False).status_code == 200


@pytest.mark.parametrize("role", ["auditor", "hospital-admin", "hospital-system"])
def test_no_account_is_created_with_a_role_beyond_the_administrators(
    subei_admin: tuple[TestClient, str], role: str, client: TestClient
) -> None:
    admin, csrf = subei_admin
    assert post(admin, csrf, "/admin/staff", username="made.up", role=role) == 403
    assert login(client, "made.up", "anything-at-all").status_code == 400


@pytest.mark.parametrize("role", ["auditor", "hospital-admin"])
def test_no_one_is_promoted_beyond_the_administrators_powers(
    subei_admin: tuple[TestClient, str], role: str, client: TestClient
) -> None:
    admin, csrf = subei_admin
    token = token_of(client, "sp.subei")
    assert post(admin, csrf, "/admin/staff/sp.subei/role", role=role) == 403
    assert read(client, token, "/fhir/Organization/subei") == 200  # still a specialist


def test_another_administrator_of_the_same_hospital_is_the_operators(
    subei_admin: tuple[TestClient, str], cli: Any, client: TestClient
) -> None:
    assert (
        cli("user", "create", "admin.subei.2", "--hospital", "subei", "--role", "hospital-admin")
        == 0
    )
    admin, csrf = subei_admin
    assert post(admin, csrf, "/admin/staff/admin.subei.2/lock") == 403
    assert post(admin, csrf, "/admin/staff/admin.subei.2/reset") == 403


def test_what_an_administrator_may_do_with_their_own_staff(
    subei_admin: tuple[TestClient, str], client: TestClient
) -> None:
    admin, csrf = subei_admin
    page = admin.get("/admin/staff")
    assert page.status_code == 200
    # Only the roles they may give are offered.
    offered = page.text.split('id="new-role"', 1)[1].split("</select>", 1)[0]
    assert '<option value="county-doctor" >基层医生</option>' in offered
    assert "auditor" not in offered and "hospital-admin" not in offered and "管理员" not in offered
    assert post(admin, csrf, "/admin/staff", username="dr.subei.new", role="county-doctor") == 200
    assert post(admin, csrf, "/admin/staff/dr.subei.new/role", role="specialist") == 303
    assert post(admin, csrf, "/admin/staff/dr.subei.new/lock") == 303
    assert post(admin, csrf, "/admin/staff/dr.subei.new/unlock") == 303
    assert post(admin, csrf, "/admin/staff/dr.subei.new/reset") == 200


def test_the_rule_is_the_services_for_every_face(settings: Settings) -> None:
    """Called directly (as any future API would), the service applies the same rule."""
    admin = Principal(
        subject="x",
        username="admin.xinyuan.people",
        kind="user",
        hospital_id="xy-people",
        role="hospital-admin",
        capabilities=frozenset({"administer"}),
        scopes=(),
        practitioner_id=None,
        token_id="t",
    )
    db = Database(settings.database_url)
    try:
        with db.transaction(write=True) as s:
            with pytest.raises(NotFound):
                reset_password(session=s, by=admin, username="sp.subei")
            with pytest.raises(Forbidden):
                set_locked(session=s, by=admin, username="admin.xinyuan.people", locked=True)
            set_locked(session=s, by=admin, username="dr.xinyuan.people", locked=True)
            set_locked(session=s, by=OPERATOR, username="auditor", locked=True)
    finally:
        db.dispose()


def test_the_cli_operator_manages_everyone(cli: Any, client: TestClient) -> None:
    assert cli("user", "set-role", "dr.xinyuan.people", "hospital-admin") == 0
    assert login(client, "dr.xinyuan.people").json()["scope"].startswith("user/Organization")
    assert cli("user", "lock", "auditor") == 0
    assert login(client, "auditor").status_code == 400
    assert cli("user", "unlock", "auditor") == 0
    assert cli("user", "create", "auditor.2", "--hospital", "subei", "--role", "auditor") == 0
    assert cli("user", "set-role", "auditor.2", "no-such-role") == 2
