"""The access matrix for the teleconsult types: a consult between 新源县中医医院 and 扬州市中医院
is out of reach of everyone else (404 or 403, never a leak through search or _include), its
calendars are readable by all and written by their own administrators only. The same accounts
as tests/test_security.py's matrix, none of them at either hospital of the consult."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.teleconsults import (
    book,
    find,
    open_consult,
    opinion,
    respond,
    start_consult,
    weekday_ahead,
    window,
)

Users = Callable[[str], TestClient]
ROLES = ["dr.xinyuan.people", "sp.subei", "admin.subei", "auditor"]


@pytest.fixture
def tcm_consult(as_user: Users) -> dict[str, str]:
    """A consult of 马秀兰 (新源县中医医院) with 孙永康 (扬州市中医院), signed."""
    doctor, specialist = as_user("dr.xinyuan.tcm"), as_user("sp.yz.tcm")
    sr, _task = open_consult(
        doctor, "demo-ma-xiulan", target="yz-tcm", department="yz-tcm-tcm-internal"
    )
    proposals = find(doctor, sr, **window(weekday_ahead(3)))  # a Wednesday
    assert proposals
    appt = book(doctor, proposals[0]).json()
    response = respond(specialist, appt["id"], "accepted", "PractitionerRole/sp-yz-tcm-role")
    assert response.status_code == 201, response.text
    encounter = start_consult(specialist, appt["id"]).json()
    draft = specialist.post("/fhir/DiagnosticReport", json=opinion(sr)).json()
    signed = specialist.put(
        f"/fhir/DiagnosticReport/{draft['id']}", json={**draft, "status": "final"}
    )
    assert signed.status_code == 200, signed.text
    provenance = doctor.get(
        "/fhir/Provenance", params={"target": f"DiagnosticReport/{draft['id']}"}
    )
    return {
        "Appointment": appt["id"],
        "AppointmentResponse": response.json()["id"],
        "Encounter": encounter["id"],
        "DiagnosticReport": draft["id"],
        "Provenance": provenance.json()["entry"][0]["resource"]["id"],
    }


CLINICAL = ("dr.xinyuan.people", "sp.subei")
#: What a role that may not read the type at all answers (its token's scope), and what a
#: clinical role answers for a record out of its reach: as if it did not exist.
OUT_OF_REACH = {"dr.xinyuan.people": 404, "sp.subei": 404, "admin.subei": 403, "auditor": 403}


def _never_leaks(response: Any, rid: str, status: int) -> None:
    assert response.status_code == status, response.text
    assert f'"{rid}"' not in response.text


@pytest.mark.parametrize("username", ROLES)
def test_teleconsult_access_matrix(
    as_user: Users, tcm_consult: dict[str, str], username: str
) -> None:
    user = as_user(username)
    hidden = OUT_OF_REACH[username]
    searched = 200 if username in CLINICAL else 403
    # The participants themselves see every record of their consult.
    for who in ("dr.xinyuan.tcm", "sp.yz.tcm"):
        for rtype, rid in tcm_consult.items():
            assert as_user(who).get(f"/fhir/{rtype}/{rid}").status_code == 200, (who, rtype)
    for rtype, rid in tcm_consult.items():
        for url in (
            f"/fhir/{rtype}/{rid}",
            f"/fhir/{rtype}/{rid}/_history/1",
            f"/fhir/{rtype}/{rid}/_history",
        ):
            assert user.get(url).status_code == hidden, (username, url)
        registry = user.app.state.services.fhir.registry  # type: ignore[attr-defined]
        by_patient = [{"patient": "demo-ma-xiulan"}] if registry.get(rtype).param("patient") else []
        for params in ({"_id": rid}, *by_patient, {}):
            _never_leaks(user.get(f"/fhir/{rtype}", params=params), rid, searched)
        # `_include=*` is not served (400), once the token may search the type at all.
        wildcard = user.get(f"/fhir/{rtype}", params={"_id": rid, "_include": "*"})
        _never_leaks(wildcard, rid, 400 if username in CLINICAL else 403)
        body = {"resourceType": rtype, "id": rid, "status": "cancelled"}
        # A type without the update interaction (Provenance, AppointmentResponse) answers 405.
        updatable = "update" in registry.get(rtype).interactions
        put = user.put(f"/fhir/{rtype}/{rid}", json=body)
        assert put.status_code == (hidden if updatable else 405), (rtype, put.text)
    # Nothing of the consult comes in through an _include of any teleconsult type.
    registry = user.app.state.services.fhir.registry  # type: ignore[attr-defined]
    for rtype in (
        "Appointment",
        "AppointmentResponse",
        "Encounter",
        "DiagnosticReport",
        "Schedule",
    ):
        for include in registry.get(rtype).includes:
            r = user.get(f"/fhir/{rtype}", params={"_include": include, "_count": "200"})
            scoped = username in CLINICAL or (rtype == "Schedule" and username != "auditor")
            for rid in tcm_consult.values():
                _never_leaks(r, rid, 200 if scoped else 403)
    # Booking into it, or finding times for its patient, is refused too.
    assert (
        user.post(
            "/fhir/Appointment/$book",
            json={
                "resourceType": "Parameters",
                "parameter": [
                    {
                        "name": "appointment-reference",
                        "valueReference": {
                            "reference": f"Appointment/{tcm_consult['Appointment']}"
                        },
                    }
                ],
            },
        ).status_code
        == hidden
    )
    found = user.post(
        "/fhir/Appointment/$find",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "patient", "valueReference": {"reference": "Patient/demo-ma-xiulan"}}
            ],
        },
    )
    assert found.status_code == hidden, found.text
    # Calendars: shared for reading (with the scope), written by their own administrators.
    for rtype, rid in (
        ("HealthcareService", "yz-tcm-teleconsult"),
        ("Schedule", "sp-yz-tcm-consult"),
    ):
        read = user.get(f"/fhir/{rtype}/{rid}")
        assert read.status_code == (403 if username == "auditor" else 200), (username, rtype)
        current = read.json() if read.status_code == 200 else {"resourceType": rtype, "id": rid}
        # Readable by all but the auditor (whose token has no such scope); written by their
        # own hospital's administrators only.
        assert user.put(f"/fhir/{rtype}/{rid}", json=current).status_code == 403
    slots = user.get("/fhir/Slot", params={"schedule": "sp-yz-tcm-consult"})
    assert slots.status_code == (403 if username == "auditor" else 200)
    assert user.put("/fhir/Slot/x", json={"resourceType": "Slot", "id": "x"}).status_code == 405
