"""Teleconsults end to end over real HTTP: fhirpy with real tokens from /auth/token, and 50
concurrent booking attempts on one slot from several processes against `alliance serve
--workers 2`, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Any

import httpx
import pytest
from fhirpy.base.exceptions import OperationOutcome
from sqlalchemy import func, select

from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.models import ResourceRow
from teleconsult.models import Booking, Occupancy
from teleconsult.time import BEIJING
from tests.conftest import LiveServer, mint_token
from tests.referrals import PDF, PNG, consent_body, request_body, task_body
from tests.teleconsults import AMENDMENT_REASON, ICD_MI, VR, parameters, weekday_ahead
from tests.test_audit import served  # noqa: F401  (the fixture: `alliance serve --workers 2`)
from tests.test_referral_e2e import attach, signed_in


def _start(appt: Any) -> datetime:
    return datetime.fromisoformat(str(appt["start"]).replace("Z", "+00:00"))


def test_a_teleconsult_end_to_end(live_server: LiveServer) -> None:
    """A county doctor at 新源县人民医院 finds a cardiology slot at 苏北人民医院 inside both
    calendars and books it; the specialist accepts; the consult starts and ends; the
    specialist signs an opinion; the county doctor reads it in the request's outputs; an
    amendment keeps both versions."""
    county, county_http = signed_in(live_server, "dr.xinyuan.people")
    city, _city_http = signed_in(live_server, "sp.subei")

    # Consent naming 苏北人民医院, a record summary, the teleconsult request and its Task.
    form = attach(county_http, PNG, "image/png", "知情同意书")
    county.resource("Consent", **consent_body("demo-aygul", form)).save()
    summary = county.resource(
        "DocumentReference",
        status="current",
        type={"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
        subject={"reference": "Patient/demo-aygul"},
        content=[{"attachment": attach(county_http, PDF, "application/pdf", "病历摘要")}],
    )
    summary.save()
    sr = county.resource(
        "ServiceRequest",
        **request_body(
            "demo-aygul",
            category="teleconsult",
            supporting=[f"DocumentReference/{summary.id}"],
        ),
    )
    sr.save()
    task = county.resource("Task", **task_body(sr.serialize(), "subei"))
    task.save()

    # $find: cardiology (诊疗科目 03.04) at 苏北, a chief physician, inside both calendars.
    day = weekday_ahead(2)
    found = county.execute(
        "Appointment/$find",
        method="post",
        data=parameters(
            referral=("valueReference", {"reference": f"ServiceRequest/{sr.id}"}),
            specialty=(
                "valueCoding",
                {
                    "system": "https://fhir.yzxy-alliance.cn/CodeSystem/clinical-department",
                    "code": "03.04",
                },
            ),
            title=("valueCode", "chief-physician"),
            start=("valueDateTime", day.isoformat()),
            end=("valueDateTime", day.isoformat()),
        ),
    )
    proposals = [e["resource"] for e in found["entry"]]
    assert proposals, found
    hours = {f"{_start(p).astimezone(BEIJING):%H:%M}" for p in proposals}
    assert min(hours) == "10:00" and max(hours) == "17:00"  # 新源 opens 10:00 Beijing time
    assert not hours & {"08:00", "08:30", "09:00", "09:30", "12:00", "13:30"}
    chosen = proposals[0]
    assert chosen["extension"][0]["valueString"].endswith("(新疆时间 08:00)")
    # A chief physician asked for: 陈志明 is one; asking for more than there is finds nothing.
    none = county.execute(
        "Appointment/$find",
        method="post",
        data=parameters(
            referral=("valueReference", {"reference": f"ServiceRequest/{sr.id}"}),
            specialty=("valueString", "03.01"),
            title=("valueCode", "chief-physician"),
            start=("valueDateTime", day.isoformat()),
            end=("valueDateTime", day.isoformat()),
        ),
    )
    assert none["total"] == 0  # 刘海燕 (respiratory) is an associate chief physician

    # Hold, then book.
    held = county.execute(
        "Appointment/$hold", method="post", data=parameters(appointment_resource=chosen)
    )
    assert held["status"] == "pending"
    booked = county.execute(
        "Appointment/$book",
        method="post",
        data=parameters(
            appointment_reference=("valueReference", {"reference": f"Appointment/{held['id']}"})
        ),
    )
    assert booked["status"] == "booked"
    # The same time again: 409.
    with pytest.raises(OperationOutcome):
        county.execute(
            "Appointment/$book", method="post", data=parameters(appointment_resource=chosen)
        )

    # The specialist sees it among the upcoming consults, and accepts.
    mine = (
        city.resources("Appointment")
        .search(practitioner="Practitioner/sp-subei", status="booked")
        .fetch_all()
    )
    assert held["id"] in {a.id for a in mine}
    city.resource(
        "AppointmentResponse",
        appointment={"reference": f"Appointment/{held['id']}"},
        actor={"reference": "PractitionerRole/sp-subei-role"},
        participantStatus="accepted",
    ).save()
    appointment = city.reference("Appointment", held["id"]).to_resource()
    room = next(
        e
        for e in appointment["extension"]
        if e["url"]
        == "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService"
    )
    assert any(x["url"] == "address" for x in room["extension"])

    # The consult: its Encounter (class VR) starts and ends.
    encounter = city.resource(
        "Encounter",
        status="in-progress",
        **{"class": VR},
        appointment=[{"reference": f"Appointment/{held['id']}"}],
    )
    encounter.save()
    assert county.reference("Appointment", held["id"]).to_resource()["status"] == "arrived"
    encounter["status"] = "finished"
    encounter.save()
    assert encounter["period"]["end"]
    assert county.reference("Appointment", held["id"]).to_resource()["status"] == "fulfilled"

    # The opinion: drafted, then signed.
    report = city.resource(
        "DiagnosticReport",
        status="preliminary",
        code={"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        subject={"reference": "Patient/demo-aygul"},
        basedOn=[{"reference": f"ServiceRequest/{sr.id}"}],
        encounter={"reference": f"Encounter/{encounter.id}"},
        conclusion="急性下壁心肌梗死，建议尽快行冠脉造影",
        conclusionCode=[{"coding": [ICD_MI]}],
    )
    report.save()
    report["status"] = "final"
    report.save()
    signed_version = report["meta"]["versionId"]

    # The county doctor reads it in the request's outputs.
    done = county.reference("Task", task.id).to_resource()
    assert done["status"] == "completed"
    outputs = [o["valueReference"]["reference"] for o in done["output"]]
    doc_id = next(o for o in outputs if o.startswith("DocumentReference/")).split("/")[1]
    document = county.reference("DocumentReference", doc_id).to_resource()
    page = county_http.get(document["content"][0]["attachment"]["url"])
    assert page.status_code == 200 and "冠脉造影" in page.text
    assert county.reference("DiagnosticReport", report.id).to_resource()["status"] == "final"

    # An amendment keeps both versions.
    report["status"] = "amended"
    report["conclusion"] = "急性下壁心肌梗死合并右室梗死，建议尽快行冠脉造影"
    report["extension"] = [
        *report.get("extension", []),
        {"url": AMENDMENT_REASON, "valueString": "补充诊断"},
    ]
    report.save()
    first = county.execute(f"DiagnosticReport/{report.id}/_history/{signed_version}", method="get")
    latest = county.reference("DiagnosticReport", report.id).to_resource()
    assert first["status"] == "final" and "右室" not in first["conclusion"]
    assert latest["status"] == "amended" and "右室" in latest["conclusion"]


# ---- 50 concurrent bookings of one slot, from several processes --------------------------------


def _attempts(url: str, token: str, body: dict[str, Any], count: int) -> list[int]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(headers=headers, timeout=120) as client, ThreadPoolExecutor(count) as pool:
        return list(
            pool.map(
                lambda _: client.post(f"{url}/fhir/Appointment/$book", json=body).status_code,
                range(count),
            )
        )


def test_fifty_concurrent_bookings_of_one_slot(settings: Settings, served: str) -> None:  # noqa: F811
    """5 processes x 10 threads book the same slot through a server with two workers: exactly
    one Appointment is booked, every other attempt answers 409, and the slot holds one set of
    cells."""
    token = mint_token(settings, "dr.xinyuan.people")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=served, headers=headers, timeout=60) as http:
        sr, _task = _consult(http)
        day = weekday_ahead(3)
        found = http.post(
            "/fhir/Appointment/$find",
            json=parameters(
                referral=("valueReference", {"reference": f"ServiceRequest/{sr['id']}"}),
                start=("valueDateTime", day.isoformat()),
                end=("valueDateTime", day.isoformat()),
            ),
        )
        assert found.status_code == 200, found.text
        proposal = found.json()["entry"][0]["resource"]
    body = parameters(appointment_resource=proposal)
    db = Database(settings.database_url)
    with db.transaction() as s:
        before = s.scalar(select(func.count()).where(ResourceRow.resource_type == "Appointment"))
    with get_context("spawn").Pool(5) as pool:
        statuses = [
            code
            for batch in pool.starmap(_attempts, [(served, token, body, 10)] * 5)
            for code in batch
        ]
    assert sorted(statuses) == [200] + [409] * 49, statuses
    with db.transaction() as s:
        after = s.scalar(select(func.count()).where(ResourceRow.resource_type == "Appointment"))
        bookings = s.scalars(select(Booking)).all()
        cells = s.scalar(select(func.count()).select_from(Occupancy))
    db.dispose()
    assert after == (before or 0) + 1
    assert [b.status for b in bookings] == ["booked"]
    assert (
        cells == 2 * (bookings[0].ends - bookings[0].starts).seconds // 300
    )  # specialist + patient
    assert bookings[0].starts > datetime.now(UTC)


def _consult(http: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    form = http.post(
        "/api/attachments",
        content=PNG,
        headers={"Content-Type": "image/png"},
        params={"title": "同意书"},
    ).json()
    for rtype, body in (("Consent", consent_body("demo-aygul", form)),):
        assert http.post(f"/fhir/{rtype}", json=body).status_code == 201
    sr = http.post("/fhir/ServiceRequest", json=request_body("demo-aygul", category="teleconsult"))
    assert sr.status_code == 201, sr.text
    task = http.post("/fhir/Task", json=task_body(sr.json(), "subei"))
    assert task.status_code == 201, task.text
    return sr.json(), task.json()
