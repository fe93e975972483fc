"""The outbox (issue 14.1): events recorded in the transaction of the change that causes them,
from the domain commands and the FHIR API alike, numbered in commit order, and listed to each
reader by the rule of who they concern."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from alliance import clock
from alliance.config import Settings
from alliance.errors import Conflict
from alliance.notify.models import Event
from alliance.notify.outbox import events_for, last_event_number
from referral import commands
from referral.service import record_overdue
from server.app import Services
from server.notify import build_worker
from tests.imaging_data import ct_series, ct_slice, encode, multipart, stow_headers
from tests.notices import (
    acting_as,
    attach,
    complete,
    move,
    open_in,
    principal,
    receive,
    send,
)
from tests.referrals import PDF
from tests.teleconsults import beijing, book, open_consult, proposal_at, slot_id, weekday_ahead


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


def seen(services: Services, username: str, after: int = 0) -> list[tuple[str, str]]:
    with services.db.transaction() as session:
        return [
            (e.kind, e.focus_id)
            for e in events_for(session, principal(session, username), after=after)
        ]


def test_a_referral_moves_as_events_in_commit_order(app: FastAPI) -> None:
    services = services_of(app)
    with services.db.transaction() as session:
        start = last_event_number(session)
    task = send(services, "xy-people", "demo-aygul")
    receive(services, "sp.subei", task)
    move(services, "sp.subei", task, "accepted")
    with services.db.transaction() as session:
        events = list(session.scalars(select(Event).where(Event.id > start).order_by(Event.id)))
        kinds = [(e.kind, e.focus_type, e.focus_id) for e in events]
        recipients = {
            e.kind: {(r.hospital_id, r.practitioner_id, r.capability) for r in e.recipients}
            for e in events
        }
    assert kinds == [
        ("referral-sent", "Task", task),
        ("referral-received", "Task", task),
        ("referral-accepted", "Task", task),
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert recipients["referral-sent"] == {
        ("subei", None, None),
        ("xy-people", None, None),
        ("xy-people", "dr-xinyuan-people", None),
    }
    assert recipients["referral-accepted"] == {
        ("subei", None, None),
        ("xy-people", None, None),
        ("xy-people", "dr-xinyuan-people", None),
        ("subei", "sp-subei", None),
    }
    # Each party's people see them; a third hospital sees none.
    assert [k for k, _ in seen(services, "sp.subei", start)] == [
        "referral-sent",
        "referral-received",
        "referral-accepted",
    ]
    assert len(seen(services, "dr.xinyuan.people", start)) == 3
    assert seen(services, "sp.yz.tcm", start) == []


def test_a_change_that_rolls_back_leaves_no_event(app: FastAPI) -> None:
    services = services_of(app)
    with services.db.transaction() as session:
        before = session.scalar(select(func.count()).select_from(Event))
    # The referral is sent (its event recorded) and then a refused move fails the unit of work.
    with pytest.raises(Conflict), acting_as(services, "dr.xinyuan.people") as acting:
        task = open_in(acting, services, "xy-people", "demo-aygul")
        commands.move_referral(acting, task, "accepted")
    with services.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == before


def test_the_fhir_api_records_the_same_events(
    app: FastAPI, as_user: type[TestClient] | object
) -> None:
    services = services_of(app)
    task = send(services, "xy-people", "demo-aygul")
    specialist = as_user("sp.subei")  # type: ignore[operator]
    body = specialist.get(f"/fhir/Task/{task}").json()  # received, by the read hook
    body["status"] = "accepted"
    assert specialist.put(f"/fhir/Task/{task}", json=body).status_code == 200
    mine = [(k, f) for k, f in seen(services, "dr.xinyuan.people") if f == task]
    assert mine == [
        ("referral-sent", task),
        ("referral-received", task),
        ("referral-accepted", task),
    ]


def test_an_urgent_referral_past_its_deadline_escalates_once(
    app: FastAPI, as_user: type[TestClient] | object
) -> None:
    services = services_of(app)
    urgent = send(services, "xy-people", "demo-aygul", priority="urgent")
    routine = send(services, "xy-people", "demo-memet")
    clock.advance(timedelta(hours=3))  # urgent: 2 hours (settings.deadline_hours)
    with services.db.transaction(write=True) as session:
        assert record_overdue(session) == 1
        assert record_overdue(session) == 0
    overdue = [f for k, f in seen(services, "admin.subei") if k == "referral-overdue"]
    assert overdue == [urgent]
    # The specialist is not an administrator; the third hospital hears nothing.
    assert ("referral-overdue", urgent) not in seen(services, "sp.subei")
    assert seen(services, "sp.yz.tcm") == []
    assert routine not in overdue

    # Without the scheduler: the computed overdue of a read raises it.
    late = send(services, "xy-people", "demo-wang-jianguo", priority="urgent")
    clock.advance(timedelta(hours=3))
    doctor = as_user("dr.xinyuan.people")  # type: ignore[operator]
    task = doctor.get(f"/fhir/Task/{late}").json()
    assert task["businessStatus"]["text"] == "overdue"
    overdue = [f for k, f in seen(services, "admin.subei") if k == "referral-overdue"]
    assert overdue == [urgent, late]


def test_the_workers_scheduler_escalates_and_reminds(
    app: FastAPI, settings: Settings, as_user: Callable[[str], TestClient]
) -> None:
    """Item 5: the worker's scheduler raises the overdue escalation without anyone reading
    the referral; and the consult reminders 24 hours and 15 minutes before, once each."""
    services = services_of(app)
    worker = build_worker(settings, services.db, services.fhir)
    urgent = send(services, "xy-people", "demo-aygul", priority="urgent")
    assert worker.schedule(force=True) == 0
    clock.advance(timedelta(hours=2, minutes=1))
    assert worker.schedule(force=True) == 1
    assert worker.schedule(force=True) == 0
    assert ("referral-overdue", urgent) in seen(services, "admin.subei")

    doctor = as_user("dr.xinyuan.people")
    sr, _task = open_consult(doctor, "demo-memet")
    start = beijing(weekday_ahead(2, at_least=3), "15:00")
    appt = book(
        doctor, proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
    ).json()
    clock.set_to(start - timedelta(hours=23))
    assert worker.schedule(force=True) == 1  # 24 hours before
    clock.set_to(start - timedelta(minutes=14))
    assert worker.schedule(force=True) == 1  # 15 minutes before
    assert worker.schedule(force=True) == 0
    reminders = [f for k, f in seen(services, "sp.subei") if k == "consult-reminder"]
    assert reminders == [appt["id"], appt["id"]]
    assert [f for k, f in seen(services, "dr.xinyuan.people") if k == "consult-reminder"] == [
        appt["id"],
        appt["id"],
    ]


def test_a_shared_study_and_its_new_images_are_notified(
    app: FastAPI, as_user: Callable[[str], TestClient]
) -> None:
    """A study shared by a referral is notified to the hospital it opens to on acceptance
    (study-shared), and new images of it as they arrive (imaging-arrived); no one else."""
    services = services_of(app)
    doctor = as_user("dr.xinyuan.people")
    parts = ct_series(1)
    stored = doctor.post("/dicomweb/studies", content=multipart(parts), headers=stow_headers())
    assert stored.status_code == 200, stored.text
    study = pydicom.dcmread(io.BytesIO(parts[0])).StudyInstanceUID
    with acting_as(services, "dr.xinyuan.people") as acting:
        task = open_in(acting, services, "xy-people", "demo-aygul", studies=(study,))
    receive(services, "sp.subei", task)
    with services.db.transaction() as session:
        start = last_event_number(session)
    move(services, "sp.subei", task, "accepted")
    more = encode(ct_slice(study_uid=study, series_uid=generate_uid(), number=1))
    assert (
        doctor.post(
            "/dicomweb/studies", content=multipart([more]), headers=stow_headers()
        ).status_code
        == 200
    )
    assert seen(services, "sp.subei", start) == [
        ("referral-accepted", task),
        ("study-shared", study),
        ("imaging-arrived", study),
    ]
    assert seen(services, "sp.yz.tcm", start) == []
    assert seen(services, "dr.xinyuan.people", start) == [("referral-accepted", task)]


def test_a_down_referral_arrives_at_the_hospital_that_sent_the_patient_up(app: FastAPI) -> None:
    services = services_of(app)
    task = send(services, "xy-people", "demo-aygul")
    receive(services, "sp.subei", task)
    move(services, "sp.subei", task, "accepted")
    complete(services, "sp.subei", task)
    with services.db.transaction() as session:
        start = last_event_number(session)
    with acting_as(services, "sp.subei") as acting:
        summary = attach(acting, services, PDF, "application/pdf", "出院小结")
        down = commands.send_down(
            acting,
            task,
            discharge_summary=summary,
            plan=["每周复查心电图"],
        )
    assert seen(services, "dr.xinyuan.people", start) == [("down-referral-arrived", down.task_id)]
    assert seen(services, "sp.yz.tcm", start) == []
