"""Builders for teleconsult tests: calendars, a consult request, finding, holding and booking."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from teleconsult.calendars import TEMPLATE_EXTENSION, TIME_ZONE_EXTENSION
from teleconsult.time import BEIJING
from tests.referrals import Client, create, document, record_consent, request_body, task_body

ICD_MI = {
    "system": "https://fhir.yzxy-alliance.cn/CodeSystem/icd10-cn-clinical",
    "version": "2.0",
    "code": "I21.900",
    "display": "急性心肌梗死",
}
AMENDMENT_REASON = "https://fhir.yzxy-alliance.cn/StructureDefinition/amendment-reason"
VR = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"}


def weekday_ahead(weekday: int, *, at_least: int = 2) -> date:
    """The first Beijing date at least `at_least` days from now that falls on ISO `weekday`."""
    day = datetime.now(BEIJING).date() + timedelta(days=at_least)
    while day.isoweekday() != weekday:
        day += timedelta(days=1)
    return day


def beijing(day: date, hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=BEIJING).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parameters(**values: Any) -> dict[str, Any]:
    """A Parameters resource; each value is (value[x] key, value) or a resource dict."""
    params = []
    for name, value in values.items():
        name = name.replace("_", "-") if not name.startswith("_") else name
        if isinstance(value, dict) and "resourceType" in value:
            params.append({"name": name, "resource": value})
        else:
            key, v = value
            params.append({"name": name, key: v})
    return {"resourceType": "Parameters", "parameter": params}


def open_consult(
    doctor: Client,
    patient_id: str = "demo-aygul",
    *,
    target: str = "subei",
    department: str = "subei-cardiology",
    consent: bool = True,
    status: str = "requested",
    **extra: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A teleconsult request (ServiceRequest, category teleconsult) with its Task."""
    if consent:
        record_consent(doctor, patient_id, (target,))
    summary = document(doctor, patient_id)
    sr = create(
        doctor,
        request_body(
            patient_id,
            performer=department,
            category="teleconsult",
            supporting=[f"DocumentReference/{summary['id']}"],
            **extra,
        ),
    )
    task = create(doctor, task_body(sr, target, status, description="远程会诊：胸痛待查"))
    return sr, task


def find(client: Client, sr: dict[str, Any] | None = None, **values: Any) -> list[dict[str, Any]]:
    params = dict(values)
    if sr is not None:
        params["referral"] = ("valueReference", {"reference": f"ServiceRequest/{sr['id']}"})
    r = client.post("/fhir/Appointment/$find", json=parameters(**params))
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def window(day: date) -> dict[str, Any]:
    return {"start": ("valueDateTime", day.isoformat()), "end": ("valueDateTime", day.isoformat())}


def hold(client: Client, proposal: dict[str, Any]) -> Any:
    return client.post("/fhir/Appointment/$hold", json=parameters(appointment_resource=proposal))


def book(client: Client, proposal: dict[str, Any] | None = None, held: str | None = None) -> Any:
    if held is not None:
        body = parameters(
            appointment_reference=("valueReference", {"reference": f"Appointment/{held}"})
        )
    else:
        assert proposal is not None
        body = parameters(appointment_resource=proposal)
    return client.post("/fhir/Appointment/$book", json=body)


def proposal_at(
    sr: dict[str, Any], role: str, start: datetime, slots: list[str], doctor: str | None = None
) -> dict[str, Any]:
    """A proposed Appointment built by hand (as a client may, from a Slot search)."""
    participants: list[dict[str, Any]] = [
        {"actor": {"reference": f"PractitionerRole/{role}"}, "status": "needs-action"},
        {"actor": sr["subject"], "status": "accepted"},
    ]
    if doctor:
        participants.append(
            {"actor": {"reference": f"Practitioner/{doctor}"}, "status": "accepted"}
        )
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "slot": [{"reference": f"Slot/{s}"} for s in slots],
        "start": iso(start),
        "participant": participants,
    }


def slot_id(schedule: str, start: datetime) -> str:
    return f"{schedule}.{start.astimezone(UTC):%Y%m%d%H%M}"


def calendar(
    hospital: str,
    zone: str,
    hours: list[tuple[str, str, str]],
    closures: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The teleconsult HealthcareService of a hospital (as the demo seeds it, by id)."""
    available = []
    for days, start, end in hours:
        entry: dict[str, Any] = {"daysOfWeek": days.split()}
        if start == "allDay":
            entry["allDay"] = True
        else:
            entry["availableStartTime"], entry["availableEndTime"] = f"{start}:00", f"{end}:00"
        available.append(entry)
    return {
        "resourceType": "HealthcareService",
        "id": f"{hospital}-teleconsult",
        "extension": [{"url": TIME_ZONE_EXTENSION, "valueCode": zone}],
        "active": True,
        "providedBy": {"reference": f"Organization/{hospital}"},
        "name": "远程会诊",
        "availableTime": available,
        "notAvailable": [
            {"description": why, "during": {"start": start, "end": end}}
            for start, end, why in closures
        ],
    }


def template(days: str, start: str, end: str, minutes: int = 30) -> dict[str, Any]:
    return {
        "url": TEMPLATE_EXTENSION,
        "extension": [
            *({"url": "daysOfWeek", "valueCode": d} for d in days.split()),
            {"url": "availableStartTime", "valueTime": f"{start}:00"},
            {"url": "availableEndTime", "valueTime": f"{end}:00"},
            {"url": "slotMinutes", "valuePositiveInt": minutes},
        ],
    }


def schedule(sid: str, role: str, templates: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Schedule",
        "id": sid,
        "extension": templates,
        "active": True,
        "actor": [{"reference": f"PractitionerRole/{role}"}],
    }


ALL_WEEK = "mon tue wed thu fri sat sun"


def open_all_week(subei_admin: Client, xinyuan_admin: Client) -> None:
    """Both sites open all day every day and 陈志明 consulting all day: a slot is always near,
    whatever the hour the tests run at."""
    for admin, hospital in ((subei_admin, "subei"), (xinyuan_admin, "xy-people")):
        r = admin.put(
            f"/fhir/HealthcareService/{hospital}-teleconsult",
            json=calendar(hospital, "Asia/Shanghai", [(ALL_WEEK, "allDay", "")]),
        )
        assert r.status_code == 200, r.text
    r = subei_admin.put(
        "/fhir/Schedule/sp-subei-consult",
        json=schedule("sp-subei-consult", "sp-subei-role", [template(ALL_WEEK, "00:00", "23:55")]),
    )
    assert r.status_code == 200, r.text


def respond(client: Client, appt_id: str, answer: str, actor: str, comment: str = "") -> Any:
    body: dict[str, Any] = {
        "resourceType": "AppointmentResponse",
        "appointment": {"reference": f"Appointment/{appt_id}"},
        "actor": {"reference": actor},
        "participantStatus": answer,
    }
    if comment:
        body["comment"] = comment
    return client.post("/fhir/AppointmentResponse", json=body)


def start_consult(client: Client, appt_id: str) -> Any:
    return client.post(
        "/fhir/Encounter",
        json={
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": VR,
            "appointment": [{"reference": f"Appointment/{appt_id}"}],
        },
    )


def opinion(sr: dict[str, Any], status: str = "preliminary", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "subject": sr["subject"],
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "conclusion": "急性下壁心肌梗死，建议尽快转上级医院行冠脉造影",
        "conclusionCode": [{"coding": [ICD_MI]}],
    }
    body.update(extra)
    return body
