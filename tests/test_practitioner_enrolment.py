"""A hospital's administrator enrols a new doctor: a Practitioner with their title and a
PractitionerRole in one of the hospital's departments (FHIR R4 practitionerrole.html), checked
by the server (alliance.directory.service.check_practitioner_role) whichever face writes it;
another hospital's administrator is refused."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from alliance.codes import DEPARTMENT, DEPARTMENT_VERSION, RULE
from alliance.directory.commands import PersonName, practitioner, practitioner_role
from tests.accounts import portal as sign_in

CARDIOLOGY = {"system": DEPARTMENT, "version": DEPARTMENT_VERSION, "code": "03.04"}


def rule_of(response: Any) -> tuple[int, str | None]:
    issue = response.json()["issue"][0]
    codings = (issue.get("details") or {}).get("coding") or [{}]
    assert codings[0].get("system", RULE) == RULE
    return response.status_code, codings[0].get("code")


def test_an_administrator_enrols_a_specialist_through_the_api(
    as_user: Callable[[str], TestClient],
) -> None:
    admin = as_user("admin.subei")
    doctor = practitioner("subei", name=PersonName("赵心宁"), title="chief-physician")
    made = admin.post("/fhir/Practitioner", json=doctor)
    assert made.status_code == 201, made.text
    pid = made.json()["id"]
    role = practitioner_role("subei", practitioner_id=pid, specialty=CARDIOLOGY)

    # Another hospital's administrator writes no PractitionerRole of 苏北人民医院.
    other = as_user("admin.xinyuan.people").post("/fhir/PractitionerRole", json=role)
    assert other.status_code == 403
    # Nor does a doctor, even of the hospital.
    assert as_user("sp.subei").post("/fhir/PractitionerRole", json=role).status_code == 403

    refused = {
        "department elsewhere": practitioner_role(
            "subei", practitioner_id=pid, specialty={**CARDIOLOGY, "code": "51.01"}
        ),
        "another hospital's doctor": practitioner_role(
            "subei", practitioner_id="dr-xinyuan-people", specialty=CARDIOLOGY
        ),
    }
    said = {
        why: rule_of(admin.post("/fhir/PractitionerRole", json=body))
        for why, body in refused.items()
    }
    assert said == {
        "department elsewhere": (422, "role-department"),
        "another hospital's doctor": (422, "role-practitioner"),
    }
    unknown_title = practitioner("subei", name=PersonName("钱"), title="professor")
    assert rule_of(admin.post("/fhir/Practitioner", json=unknown_title)) == (
        422,
        "practitioner-title",
    )
    assert (
        admin.get("/fhir/PractitionerRole", params={"practitioner": pid}).json().get("entry", [])
        == []
    )  # nothing refused was kept

    made = admin.post("/fhir/PractitionerRole", json=role)
    assert made.status_code == 201, made.text
    found = admin.get(
        "/fhir/PractitionerRole", params={"specialty": f"{DEPARTMENT}|03.04", "practitioner": pid}
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [made.json()["id"]]


def test_the_link_page_refuses_in_words_and_changes_nothing(app: Any) -> None:
    """The administrators' link page: another hospital's account is not found, hours it does
    not understand and another hospital's department are said in Chinese, and a refusal
    leaves the account unlinked."""
    admin = TestClient(app)
    csrf = sign_in(admin, "admin.subei")
    assert admin.get("/admin/staff/dr.xinyuan.people/practitioner").status_code == 404
    made = admin.post(
        "/admin/staff",
        data={
            "csrf": csrf,
            "username": "sp.subei.qian",
            "display_name": "钱",
            "role": "specialist",
        },
    )
    assert made.status_code == 200, made.text
    form = {"csrf": csrf, "name": "钱立", "department": "subei-cardiology"}
    bad_hours = admin.post(
        "/admin/staff/sp.subei.qian/practitioner",
        data={**form, "title": "chief-physician", "hours": "每天 08:00-12:00"},
    )
    assert bad_hours.status_code == 422
    assert "“每天”不是星期几" in bad_hours.text and 'value="钱立"' in bad_hours.text
    elsewhere = admin.post(
        "/admin/staff/sp.subei.qian/practitioner",
        data={**form, "department": "xy-people-cardiology", "title": "chief-physician"},
    )
    assert elsewhere.status_code == 422
    assert "本院没有该科室" in elsewhere.text, elsewhere.text
    staff = admin.get("/admin/staff").text
    row = re.search(r"<tr><td>sp\.subei\.qian</td>.*?</tr>", staff, re.S)
    assert row is not None and "已关联" not in row.group(0)
