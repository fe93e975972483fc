"""Who hears what (issue 14, access): over a generated mix of 200 referrals between the three
partnerships, a subscriber of 扬州市中医院 (yz-tcm) hears exactly the events of its own
referrals, and never one about a referral between 新源县人民医院 and 苏北人民医院; a resource
is sent in full only where yz-tcm may read it."""

from __future__ import annotations

import random
from collections import Counter

from fastapi import FastAPI
from sqlalchemy import select

from alliance.config import Settings
from referral import commands
from referral.models import Referral
from server.app import Services
from server.notify import build_worker
from tests.notices import (
    DOCTOR,
    PATIENTS,
    SPECIALIST,
    Receiver,
    acting_as,
    drain,
    open_in,
    partner,
    receive_in,
    subscription_body,
)

PARTNER = {"xy-people": "subei", "xy-tcm": "yz-tcm", "xy-mch": "yz-mch"}


def test_a_subscriber_hears_only_its_own_hospitals_referrals(
    app: FastAPI, settings: Settings
) -> None:
    services: Services = app.state.services
    worker = build_worker(settings, services.db, services.fhir)
    his = partner(app, "yz-tcm-his", "yz-tcm")
    rng = random.Random(14)
    expected: Counter[tuple[str, str]] = Counter()
    with Receiver() as receiver:
        assert (
            his.post(
                "/fhir/Subscription",
                json=subscription_body(receiver.url, content="full-resource"),
            ).status_code
            == 201
        )
        # 200 referrals, sent and then moved in one unit of work per doctor (fast).
        plan = [rng.choice(sorted(PARTNER)) for _ in range(200)]
        sent: list[tuple[str, str, float]] = []
        for county in sorted(PARTNER):
            with acting_as(services, DOCTOR[county]) as acting:
                for c in plan:
                    if c == county:
                        task = open_in(acting, services, county, rng.choice(PATIENTS[county]))
                        sent.append((county, task, rng.random()))
        for county, city in sorted(PARTNER.items()):
            with acting_as(services, SPECIALIST[city]) as acting:
                for c, task, fate in sent:
                    if c != county or fate >= 0.5:
                        continue
                    receive_in(acting, task)
                    if fate < 0.25:
                        commands.move_referral(acting, task, "accepted")
                    else:
                        commands.move_referral(acting, task, "rejected", reason="床位已满")
            with acting_as(services, DOCTOR[county]) as acting:
                for c, task, fate in sent:
                    if c == county and fate < 0.25:
                        commands.post_message(acting, task, "患者已出发", "医生 · 县医院")
        for county, task, fate in sent:
            if PARTNER[county] != "yz-tcm":
                continue
            expected[("referral-sent", task)] += 1
            if fate < 0.5:
                expected[("referral-received", task)] += 1
                if fate < 0.25:
                    expected[("referral-accepted", task)] += 1
                    expected[("message-posted", task)] += 1
                else:
                    expected[("referral-declined", task)] += 1
        drain(worker)
        events = receiver.events()
        notes = receiver.notifications("event-notification")

    with services.db.transaction() as session:
        parties = {
            r.task_id: {r.placer_org, r.owner_org} for r in session.scalars(select(Referral))
        }
        messages = {}
        for note in notes:
            for resource in note["resources"]:
                if resource and resource["resourceType"] == "Communication":
                    messages[resource["id"]] = resource
    assert len(parties) == len(plan) and sum(expected.values()) > len(plan) // 4
    # Every event of yz-tcm's referrals, once each; nothing else.
    heard_tasks: Counter[tuple[str, str]] = Counter()
    for note in notes:
        for (number, kind, focus), resource in zip(note["events"], note["resources"], strict=True):
            assert number > 0
            if focus.startswith("Task/"):
                task_id = focus.split("/")[1]
            else:
                assert resource is not None and resource["resourceType"] == "Communication"
                task_id = _task_of(services, resource)
            assert "yz-tcm" in parties[task_id], (kind, focus)
            heard_tasks[(kind, task_id)] += 1
    assert heard_tasks == expected
    assert [n for n, _k, _f in events] == list(range(1, len(events) + 1))
    # Full resources only of yz-tcm's referrals: Tasks owned by or sent to it.
    tasks = [r for n in notes for r in n["resources"] if r and r["resourceType"] == "Task"]
    assert tasks and all(t["owner"]["reference"] == "Organization/yz-tcm" for t in tasks)
    assert all(t["id"] in {k[1] for k in expected} for t in tasks)


def _task_of(services: Services, message: dict[str, object]) -> str:
    basis = message["basedOn"][0]["reference"].split("/")[1]  # type: ignore[index]
    with services.db.transaction() as session:
        task = session.scalar(select(Referral.task_id).where(Referral.service_request_id == basis))
    assert task is not None
    return task
