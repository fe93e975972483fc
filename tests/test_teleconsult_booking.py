"""Booking a teleconsult through the FHIR API: find, hold, book, the slots' states, every refused
input (409 or 422 naming its rule, nothing changed), holds expiring, races and the database's
own refusal of a double booking, answers, reschedule, cancel, no-show, the video room, upcoming
consults, and calendars kept by their hospital's administrators."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from alliance import clock
from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.models import ResourceRow, ResourceVersion
from alliance.security.service import OPERATOR, create_user
from server.app import create_app
from teleconsult.models import Booking, Occupancy
from teleconsult.time import BEIJING
from tests.conftest import bearer
from tests.referrals import create
from tests.teleconsults import (
    beijing,
    book,
    calendar,
    find,
    hold,
    iso,
    open_all_week,
    open_consult,
    proposal_at,
    respond,
    schedule,
    slot_id,
    template,
    weekday_ahead,
    window,
)

Users = Callable[[str], TestClient]
VIRTUAL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService"
HOLD_EXPIRES = "https://fhir.yzxy-alliance.cn/StructureDefinition/hold-expires"
WEEKDAYS = "mon tue wed thu fri"


@pytest.fixture
def parties(as_user: Users) -> dict[str, TestClient]:
    return {
        "doctor": as_user("dr.xinyuan.people"),
        "specialist": as_user("sp.subei"),
        "admin": as_user("admin.subei"),
        "county_admin": as_user("admin.xinyuan.people"),
    }


def state(settings: Settings) -> dict[str, int]:
    """What a refused request must leave as it was."""
    db = Database(settings.database_url)
    try:
        with db.transaction() as s:
            return {
                "appointments": s.scalar(
                    select(func.count()).where(ResourceRow.resource_type == "Appointment")
                )
                or 0,
                "versions": s.scalar(select(func.count()).select_from(ResourceVersion)) or 0,
                "bookings": s.scalar(select(func.count()).select_from(Booking)) or 0,
                "cells": s.scalar(select(func.count()).select_from(Occupancy)) or 0,
            }
    finally:
        db.dispose()


def refused(response: Any, status: int, rule: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert f"[{rule}]" in body["issue"][0]["diagnostics"], body


def slot_status(client: TestClient, sid: str) -> str:
    r = client.get(f"/fhir/Slot/{sid}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def starts_of(proposals: list[dict[str, Any]]) -> list[str]:
    return [p["start"] for p in proposals]


def statuses(appt: dict[str, Any]) -> dict[str | None, str]:
    return {p["actor"].get("reference"): p["status"] for p in appt["participant"]}


def second_specialist(settings: Settings) -> None:
    """A second clinical account at 苏北人民医院 (刘海燕, respiratory): same hospital, not a
    participant of 陈志明's consults."""
    db = Database(settings.database_url)
    with db.transaction(write=True) as s:
        create_user(
            session=s,
            by=OPERATOR,
            username="sp.subei.resp",
            hospital_id="subei",
            role="specialist",
            password=None,
            practitioner_id="subei-resp",
        )
    db.dispose()


def _subsetted(resource: dict[str, Any]) -> bool:
    return "SUBSETTED" in [t.get("code") for t in resource.get("meta", {}).get("tag", [])]


def test_find_hold_book_and_what_each_step_opens(
    parties: dict[str, TestClient], settings: Settings, app: FastAPI
) -> None:
    doctor, specialist = parties["doctor"], parties["specialist"]
    sr, task = open_consult(doctor)
    day = weekday_ahead(2)
    proposals = find(doctor, sr, **window(day))
    first = proposals[0]
    sid = first["slot"][0]["reference"].split("/")[1]
    assert sid == slot_id("sp-subei-consult", beijing(day, "10:00"))
    assert slot_status(doctor, sid) == "free"

    # A hold: pending until it expires; the slot is tentatively busy and no longer offered.
    r = hold(doctor, first)
    assert r.status_code == 200, r.text
    held = r.json()
    assert held["status"] == "pending"
    assert any(e["url"] == HOLD_EXPIRES for e in held["extension"])
    assert slot_status(doctor, sid) == "busy-tentative"
    assert iso(beijing(day, "10:00")).replace("Z", ".000Z") not in starts_of(
        find(doctor, sr, **window(day))
    )
    # Nothing is opened to the specialist's hospital by a hold: the patient is still seen as
    # the request's triage preview only.
    assert specialist.get(f"/fhir/Appointment/{held['id']}").status_code == 404
    assert _subsetted(specialist.get("/fhir/Patient/demo-aygul").json())

    # Booking it: the slot is busy; the consult's shared records open to 苏北人民医院.
    r = book(doctor, held=held["id"])
    assert r.status_code == 200, r.text
    booked = r.json()
    assert booked["status"] == "booked" and booked["id"] == held["id"]
    assert slot_status(doctor, sid) == "busy"
    assert doctor.get(f"/fhir/Slot/{sid}").json()["meta"]["versionId"] == "3"
    for path in (
        f"/fhir/Appointment/{held['id']}",
        "/fhir/Patient/demo-aygul",
        f"/fhir/ServiceRequest/{sr['id']}",
        sr["supportingInfo"][0]["reference"].join(["/fhir/", ""]),
    ):
        assert specialist.get(path).status_code == 200, path
        assert not _subsetted(specialist.get(path).json()), path
    # ...but nothing else of the patient's.
    assert specialist.get("/fhir/Patient/demo-wang-jianguo").status_code == 404
    parts = {p["actor"]["reference"]: p for p in booked["participant"]}
    assert parts["PractitionerRole/sp-subei-role"]["status"] == "needs-action"
    assert parts["Patient/demo-aygul"]["status"] == "accepted"
    assert parts["Practitioner/dr-xinyuan-people"]["status"] == "accepted"

    # The video room: to participants only, never stored.
    def room(client: TestClient) -> str | None:
        body = client.get(f"/fhir/Appointment/{held['id']}").json()
        ext = next((e for e in body.get("extension", []) if e["url"] == VIRTUAL), None)
        if ext is None:
            return None
        return next(str(x["valueUrl"]) for x in ext["extension"] if x["url"] == "address")

    link = room(doctor)
    assert link is not None and link == room(specialist)
    assert link.startswith("https://meet.yzxy-alliance.cn/") and len(link.rsplit("/", 1)[1]) >= 32
    second_specialist(settings)
    colleague = TestClient(app, headers=bearer(settings, "sp.subei.resp"))
    seen = colleague.get(f"/fhir/Appointment/{held['id']}")
    assert seen.status_code == 200 and room(colleague) is None  # same hospital, no participant
    listed = colleague.get("/fhir/Appointment", params={"_id": held["id"]}).text
    history = doctor.get(f"/fhir/Appointment/{held['id']}/_history").text
    room_id = link.rsplit("/", 1)[1]
    assert room_id not in listed and room_id not in history
    assert room_id in doctor.get("/fhir/Appointment", params={"_id": held["id"]}).text
    # The operations are in the capability statement, with the IHE definitions.
    cs = doctor.get("/fhir/metadata").json()
    appointment = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Appointment")
    assert {o["name"] for o in appointment["operation"]} == {"find", "hold", "book"}
    assert task["status"] == "requested"


def test_every_bad_booking_is_refused_and_changes_nothing(
    parties: dict[str, TestClient], settings: Settings
) -> None:
    doctor, specialist = parties["doctor"], parties["specialist"]
    sr, _task = open_consult(doctor)
    day = weekday_ahead(2)

    def attempt(proposal: dict[str, Any], status: int, rule: str, client: Any = None) -> None:
        before = state(settings)
        refused(book(client or doctor, proposal), status, rule)
        assert state(settings) == before, rule

    def at(hhmm: str, schedule_id: str = "sp-subei-consult", role: str = "sp-subei-role") -> Any:
        start = beijing(day, hhmm)
        return proposal_at(sr, role, start, [slot_id(schedule_id, start)])

    # In the past: last week's Tuesday at 10:00 is a slot of the schedule, but it has passed.
    last = datetime.now(BEIJING).date() - timedelta(days=1)
    while last.isoweekday() != 2:
        last -= timedelta(days=1)
    past = beijing(last, "10:00")
    attempt(
        proposal_at(sr, "sp-subei-role", past, [slot_id("sp-subei-consult", past)]),
        422,
        "booking-in-the-past",
    )
    # 08:00 Beijing time: 苏北 is open, 新源 (Asia/Urumqi, 08:00 there is 10:00 here) is not.
    attempt(at("08:00"), 422, "outside-working-hours")
    # 12:30: the specialist's own hospital is at lunch (and the template has no such slot).
    attempt(at("12:30"), 422, "unknown-slot")
    # A closure of the county hospital that day.
    county = calendar(
        "xy-people",
        "Asia/Urumqi",
        [(WEEKDAYS, "08:00", "17:00")],
        [(day.isoformat(), day.isoformat(), "义诊活动")],
    )
    assert (
        parties["county_admin"]
        .put("/fhir/HealthcareService/xy-people-teleconsult", json=county)
        .status_code
        == 200
    )
    before = state(settings)
    r = book(doctor, at("10:00"))
    refused(r, 422, "closure-day")
    assert "义诊活动" in r.text and state(settings) == before
    county["notAvailable"] = []
    assert (
        parties["county_admin"]
        .put("/fhir/HealthcareService/xy-people-teleconsult", json=county)
        .status_code
        == 200
    )
    # A slot of another specialist than the one named.
    attempt(at("14:00", "subei-resp-consult", "sp-subei-role"), 422, "slot-of-another-specialist")
    attempt(
        proposal_at(sr, "sp-subei-role", beijing(day, "10:00"), ["nope.202612010200"]),
        422,
        "unknown-slot",
    )
    # The time given must be the slots' time.
    wrong = at("10:00")
    wrong["start"] = iso(beijing(day, "10:05"))
    attempt(wrong, 422, "appointment-slots")
    # The specialist's hospital cannot even see the patient before a booking opens it.
    assert book(specialist, at("10:00")).status_code == 404

    # Booked once; then a second patient at the same time: the specialist is taken.
    assert book(doctor, at("14:00")).status_code == 200
    # Now it sees the consult, but it does not book it (the requesting hospital does).
    attempt(at("15:00"), 403, "booking-hospital", specialist)
    attempt(at("14:30"), 409, "one-booking-per-consult")
    other_sr, _ = open_consult(doctor, "demo-wang-jianguo")
    taken = proposal_at(
        other_sr,
        "sp-subei-role",
        beijing(day, "14:00"),
        [slot_id("sp-subei-consult", beijing(day, "14:00"))],
    )
    attempt(taken, 409, "specialist-double-booked")
    # The same patient in another consult (刘海燕, respiratory) at the same time.
    resp_sr, _ = open_consult(doctor, department="subei-respiratory", consent=False)
    overlap = proposal_at(
        resp_sr,
        "subei-resp-role",
        beijing(day, "14:00"),
        [slot_id("subei-resp-consult", beijing(day, "14:00"))],
    )
    attempt(overlap, 409, "patient-double-booked")
    # Without the patient's consent naming the specialist's hospital (withdrawn since).
    memet_sr, _ = open_consult(doctor, "demo-memet")
    consents = doctor.get(
        "/fhir/Consent", params={"patient": "demo-memet", "status": "active"}
    ).json()
    for entry in consents["entry"]:
        withdrawn = {**entry["resource"], "status": "inactive"}
        assert doctor.put(f"/fhir/Consent/{withdrawn['id']}", json=withdrawn).status_code == 200
    memet = proposal_at(
        memet_sr,
        "sp-subei-role",
        beijing(day, "15:00"),
        [slot_id("sp-subei-consult", beijing(day, "15:00"))],
    )
    attempt(memet, 422, "consent")
    # A request still in draft is not booked.
    draft_sr, _ = open_consult(doctor, "demo-wang-jianguo", status="draft")
    draft = proposal_at(
        draft_sr,
        "sp-subei-role",
        beijing(day, "16:00"),
        [slot_id("sp-subei-consult", beijing(day, "16:00"))],
    )
    attempt(draft, 409, "consult-not-open")


def test_a_hold_expires_without_a_background_job(settings: Settings) -> None:
    """With holds of one second, and the service's clock moved past it (no sleep): the held
    time is free again, $book of the expired hold answers 409 and changes nothing, and the
    next booking of that time cancels the stale hold in its own transaction."""
    quick = create_app(settings.model_copy(update={"teleconsult_hold_seconds": 1}))
    try:
        with TestClient(quick, headers=bearer(settings, "dr.xinyuan.people")) as doctor:
            sr, _ = open_consult(doctor)
            day = weekday_ahead(2)
            first = find(doctor, sr, **window(day))[0]
            sid = first["slot"][0]["reference"].split("/")[1]
            held = hold(doctor, first).json()
            assert slot_status(doctor, sid) == "busy-tentative"
            clock.advance(timedelta(seconds=1.2))  # the service's clock, not a sleep
            assert slot_status(doctor, sid) == "free"
            assert first["start"] in starts_of(find(doctor, sr, **window(day)))
            before = state(settings)
            refused(book(doctor, held=held["id"]), 409, "hold-expired")
            assert state(settings) == before
            assert doctor.get(f"/fhir/Appointment/{held['id']}").json()["status"] == "pending"
            # Another consult takes the time: the expired hold is cancelled on the way.
            other, _ = open_consult(doctor, "demo-wang-jianguo")
            again = proposal_at(other, "sp-subei-role", beijing(day, "10:00"), [sid])
            r = book(doctor, again)
            assert r.status_code == 200, r.text
            stale = doctor.get(f"/fhir/Appointment/{held['id']}").json()
            assert stale["status"] == "cancelled"
            assert stale["cancelationReason"]["text"] == "hold expired"
            assert slot_status(doctor, sid) == "busy"
    finally:
        quick.state.services.db.dispose()


def test_races_and_the_database_refusing_a_double_booking(
    parties: dict[str, TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    doctor = parties["doctor"]
    sr, _ = open_consult(doctor)
    day = weekday_ahead(4)
    proposal = find(doctor, sr, **window(day))[0]
    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(lambda _: book(doctor, proposal).status_code, range(2)))
    assert answers == [200, 409]
    # The database itself refuses a second occupant of the same cell, whatever the code did.
    db = Database(settings.database_url)
    with pytest.raises(IntegrityError), db.engine.begin() as conn:
        booked = conn.execute(select(Occupancy).where(Occupancy.party == "practitioner")).first()
        assert booked is not None
        conn.execute(
            Occupancy.__table__.insert().values(  # type: ignore[attr-defined]
                party="practitioner",
                party_id=booked.party_id,
                cell=booked.cell,
                appointment_id=booked.appointment_id,
            )
        )
    db.dispose()
    # With the check before the insert and the lock taken away, the occupancy key still
    # refuses the second booking of the specialist (as a race between two workers would meet
    # it), naming the rule.
    import teleconsult.booking as booking

    monkeypatch.setattr(booking, "busy_times", lambda *a, **k: {})
    monkeypatch.setattr(booking.Bookings, "_lock_people", staticmethod(lambda *a: None))
    other, _ = open_consult(doctor, "demo-wang-jianguo")
    same = proposal_at(
        other,
        "sp-subei-role",
        datetime.fromisoformat(proposal["start"].replace("Z", "+00:00")),
        [proposal["slot"][0]["reference"].split("/")[1]],
    )
    before = state(settings)
    r = book(doctor, same)
    refused(r, 409, "specialist-double-booked")
    assert "concurrent" in r.text and state(settings) == before


def test_answers_reschedule_cancel_and_no_show(
    parties: dict[str, TestClient], settings: Settings
) -> None:
    doctor, specialist = parties["doctor"], parties["specialist"]
    sr, task = open_consult(doctor)
    day = weekday_ahead(3)
    ten, half, eleven = (
        slot_id("sp-subei-consult", beijing(day, h)) for h in ("10:00", "10:30", "11:00")
    )
    appt = book(doctor, proposal_at(sr, "sp-subei-role", beijing(day, "10:00"), [ten])).json()
    role = "PractitionerRole/sp-subei-role"
    # Declining needs a reason; with one, the appointment is cancelled and its time freed.
    refused(respond(specialist, appt["id"], "declined", role), 422, "decline-reason")
    refused(respond(doctor, appt["id"], "accepted", role), 403, "respond-for-yourself")
    assert respond(specialist, appt["id"], "declined", role, "当日有手术").status_code == 201
    gone = doctor.get(f"/fhir/Appointment/{appt['id']}").json()
    assert gone["status"] == "cancelled" and "当日有手术" in gone["cancelationReason"]["text"]
    assert slot_status(doctor, ten) == "free"
    assert doctor.get(f"/fhir/Task/{task['id']}").json()["status"] in ("requested", "received")
    # Booked again; the specialist accepts: the consult request is accepted too.
    appt = book(doctor, proposal_at(sr, "sp-subei-role", beijing(day, "10:30"), [half])).json()
    assert respond(specialist, appt["id"], "accepted", role).status_code == 201
    current = doctor.get(f"/fhir/Appointment/{appt['id']}").json()
    assert statuses(current)[role] == "accepted"
    assert doctor.get(f"/fhir/Task/{task['id']}").json()["status"] == "accepted"
    # An interpreter joins: Kazakh is welcome, a language nobody needs here is not.
    interpreter = {
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "INTERP",
                    }
                ]
            }
        ],
        "actor": {"display": "哈力木拉提 (哈萨克语翻译)"},
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/language", "valueCode": "en"}
        ],
        "status": "needs-action",
    }
    r = doctor.put(
        f"/fhir/Appointment/{appt['id']}",
        json={**current, "participant": [*current["participant"], interpreter]},
    )
    refused(r, 422, "interpreter-language")
    interpreter["extension"][0]["valueCode"] = "kk"
    r = doctor.put(
        f"/fhir/Appointment/{appt['id']}",
        json={**current, "participant": [*current["participant"], interpreter]},
    )
    assert r.status_code == 200, r.text
    current = r.json()
    # Rescheduled by the county doctor: new slot, the old one freed, the specialist asked again.
    moved = {**current, "slot": [{"reference": f"Slot/{eleven}"}]}
    r = doctor.put(f"/fhir/Appointment/{appt['id']}", json=moved)
    assert r.status_code == 200, r.text
    current = r.json()
    assert current["start"] == iso(beijing(day, "11:00")).replace("Z", ".000Z")
    assert (slot_status(doctor, half), slot_status(doctor, eleven)) == ("free", "busy")
    assert statuses(current)[role] == "needs-action"
    # Cancel needs a reason; a no-show is recorded only after the start.
    before = state(settings)
    refused(
        doctor.put(f"/fhir/Appointment/{appt['id']}", json={**current, "status": "cancelled"}),
        422,
        "cancel-reason",
    )
    refused(
        specialist.put(f"/fhir/Appointment/{appt['id']}", json={**current, "status": "noshow"}),
        409,
        "noshow-before-start",
    )
    refused(
        doctor.put(f"/fhir/Appointment/{appt['id']}", json={**current, "status": "arrived"}),
        409,
        "appointment-move",
    )
    assert state(settings) == before
    # The consult's time passes (moved into the past in the table, as time would).
    db = Database(settings.database_url)
    with db.transaction(write=True) as s:
        s.execute(
            update(Booking)
            .where(Booking.appointment_id == appt["id"])
            .values(
                starts=datetime.now(UTC) - timedelta(hours=1),
                ends=datetime.now(UTC) - timedelta(minutes=30),
            )
        )
    db.dispose()
    r = specialist.put(f"/fhir/Appointment/{appt['id']}", json={**current, "status": "noshow"})
    assert r.status_code == 200, r.text
    assert slot_status(doctor, eleven) == "free"
    refused(
        doctor.put(
            f"/fhir/Appointment/{appt['id']}",
            json={**r.json(), "status": "cancelled", "cancelationReason": {"text": "x"}},
        ),
        409,
        "appointment-closed",
    )
    # A new booking by a plain create of an Appointment on free slots, cancelled with a reason
    # by the county doctor.
    plain = {**proposal_at(sr, "sp-subei-role", beijing(day, "10:00"), [ten]), "status": "booked"}
    appt = create(doctor, plain)
    assert appt["status"] == "booked" and slot_status(doctor, ten) == "busy"
    r = doctor.put(
        f"/fhir/Appointment/{appt['id']}",
        json={**appt, "status": "cancelled", "cancelationReason": {"text": "患者已转院"}},
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert slot_status(doctor, ten) == "free"
    # Cancelling the consult request cancels what is still booked for it.
    appt = book(doctor, proposal_at(sr, "sp-subei-role", beijing(day, "10:00"), [ten])).json()
    body = doctor.get(f"/fhir/Task/{task['id']}").json()
    r = doctor.put(
        f"/fhir/Task/{task['id']}",
        json={**body, "status": "cancelled", "statusReason": {"text": "病情好转"}},
    )
    assert r.status_code == 200, r.text
    after = doctor.get(f"/fhir/Appointment/{appt['id']}").json()
    assert after["status"] == "cancelled" and "病情好转" in after["cancelationReason"]["text"]
    assert slot_status(doctor, ten) == "free"


def test_upcoming_consults_of_the_next_24_hours(parties: dict[str, TestClient]) -> None:
    doctor, specialist = parties["doctor"], parties["specialist"]
    open_all_week(parties["admin"], parties["county_admin"])
    now = datetime.now(UTC)
    soon_start = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    later_start = soon_start + timedelta(hours=30)
    made = []
    for patient, start in (("demo-aygul", soon_start), ("demo-wang-jianguo", later_start)):
        sr, _ = open_consult(doctor, patient)
        r = book(
            doctor, proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
        )
        assert r.status_code == 200, r.text
        made.append(r.json()["id"])
    for client, who in (
        (specialist, "Practitioner/sp-subei"),
        (doctor, "Practitioner/dr-xinyuan-people"),
    ):
        ids = [
            e["resource"]["id"]
            for e in client.get(
                "/fhir/Appointment", params={"practitioner": who, "upcoming": "24"}
            ).json()["entry"]
        ]
        assert ids == [made[0]], who
    by_date = doctor.get(
        "/fhir/Appointment",
        params=[
            ("date", f"ge{iso(now)}"),
            ("date", f"lt{iso(now + timedelta(hours=24))}"),
            ("status", "booked"),
        ],
    ).json()
    assert [e["resource"]["id"] for e in by_date["entry"]] == [made[0]]
    assert doctor.get("/fhir/Appointment", params={"upcoming": "999"}).status_code == 400


def test_calendars_are_kept_by_their_hospital_s_administrators(
    parties: dict[str, TestClient], as_user: Users
) -> None:
    admin, county_admin, specialist = (
        parties["admin"],
        parties["county_admin"],
        parties["specialist"],
    )
    subei = admin.get("/fhir/HealthcareService/subei-teleconsult").json()
    sched = admin.get("/fhir/Schedule/sp-subei-consult").json()
    # Readable by everyone signed in (to choose a time), written by their own administrators.
    assert parties["doctor"].get("/fhir/Schedule/sp-subei-consult").status_code == 200
    assert (
        county_admin.put("/fhir/HealthcareService/subei-teleconsult", json=subei).status_code == 403
    )
    assert county_admin.put("/fhir/Schedule/sp-subei-consult", json=sched).status_code == 403
    assert specialist.put("/fhir/Schedule/sp-subei-consult", json=sched).status_code == 403
    assert as_user("auditor").get("/fhir/Schedule/sp-subei-consult").status_code == 403
    # Bad calendars answer 422 naming the rule; a second calendar or schedule 409.
    bad_zone = {
        **subei,
        "extension": [{"url": subei["extension"][0]["url"], "valueCode": "Mars/Olympus"}],
    }
    refused(admin.put("/fhir/HealthcareService/subei-teleconsult", json=bad_zone), 422, "time-zone")
    backwards = calendar("subei", "Asia/Shanghai", [(WEEKDAYS, "17:00", "08:00")])
    refused(
        admin.put("/fhir/HealthcareService/subei-teleconsult", json=backwards), 422, "working-hours"
    )
    second = {
        k: v
        for k, v in calendar("subei", "Asia/Shanghai", [(WEEKDAYS, "08:00", "12:00")]).items()
        if k != "id"
    }
    refused(admin.post("/fhir/HealthcareService", json=second), 409, "one-calendar")
    odd = schedule("sp-subei-consult", "sp-subei-role", [template(WEEKDAYS, "08:00", "12:00", 7)])
    refused(admin.put("/fhir/Schedule/sp-subei-consult", json=odd), 422, "slot-length")
    twin = {k: v for k, v in schedule("x", "sp-subei-role", []).items() if k != "id"}
    refused(admin.post("/fhir/Schedule", json=twin), 409, "one-schedule")
    other_role = schedule("sp-subei-consult", "sp-yz-tcm-role", [])
    assert admin.put("/fhir/Schedule/sp-subei-consult", json=other_role).status_code == 403
    # Slots: searched by schedule, specialty, organization and status; a window too wide is 400.
    day = weekday_ahead(2)
    params = [
        ("start", f"ge{day.isoformat()}"),
        ("start", f"lt{(day + timedelta(days=1)).isoformat()}"),
    ]
    by_specialty = (
        parties["doctor"]
        .get("/fhir/Slot", params=[*params, ("specialty", "03.04"), ("_count", "100")])
        .json()
    )
    schedules = {e["resource"]["schedule"]["reference"] for e in by_specialty["entry"]}
    assert schedules == {"Schedule/sp-subei-consult"} and len(by_specialty["entry"]) == 15
    at_subei = (
        parties["doctor"]
        .get(
            "/fhir/Slot",
            params=[*params, ("organization", "Organization/subei"), ("_count", "100")],
        )
        .json()
    )
    assert {e["resource"]["schedule"]["reference"] for e in at_subei["entry"]} == {
        "Schedule/sp-subei-consult",
        "Schedule/subei-resp-consult",
    }
    paged = (
        parties["doctor"]
        .get("/fhir/Slot", params=[*params, ("schedule", "sp-subei-consult"), ("_count", "10")])
        .json()
    )
    assert len(paged["entry"]) == 10 and any(link["relation"] == "next" for link in paged["link"])
    assert (
        parties["doctor"]
        .get("/fhir/Slot", params=[("start", "ge2026-01-01"), ("start", "lt2027-06-01")])
        .status_code
        == 400
    )
    # A closure removes that day's slots; closing the schedule removes them all.
    closed = calendar(
        "subei",
        "Asia/Shanghai",
        [(WEEKDAYS, "08:00", "12:00"), (WEEKDAYS, "14:00", "17:30")],
        [(day.isoformat(), day.isoformat(), "院庆")],
    )
    assert admin.put("/fhir/HealthcareService/subei-teleconsult", json=closed).status_code == 200
    assert (
        parties["doctor"]
        .get("/fhir/Slot", params=[*params, ("schedule", "sp-subei-consult")])
        .json()["entry"]
        == []
    )
    assert (
        admin.put("/fhir/Schedule/sp-subei-consult", json={**sched, "active": False}).status_code
        == 200
    )
    assert (
        parties["doctor"]
        .get("/fhir/Slot", params=[("schedule", "sp-subei-consult")])
        .json()["entry"]
        == []
    )
