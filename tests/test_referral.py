"""The referral workflow through the FHIR API: every (state, move, party), the access grants,
bad input, races, and the alliance's figures."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alliance import clock
from alliance.attachments.models import Attachment
from alliance.config import Settings
from alliance.db import Database
from alliance.security.service import OPERATOR, create_user
from referral.models import Referral
from referral.stats import percentile
from referral.workflow import MOVES, moves_from
from tests.conftest import bearer
from tests.referrals import (
    CONSULT_NOTE,
    PDF,
    PNG,
    care_plan,
    consent_body,
    create,
    document,
    guardian_performer,
    move,
    record_consent,
    request_body,
    send_referral,
    task_body,
    upload,
)

Users = Callable[[str], TestClient]
STATES = [
    "draft",
    "requested",
    "received",
    "accepted",
    "in-progress",
    "on-hold",
    "completed",
    "failed",
    "rejected",
    "cancelled",
]
# How to bring a fresh referral (made as draft) into each state: (party, status) steps.
PATHS: dict[str, list[tuple[str, str]]] = {
    "draft": [],
    "requested": [("placer", "requested")],
    "received": [("placer", "requested"), ("owner", "received")],
    "accepted": [("placer", "requested"), ("owner", "received"), ("owner", "accepted")],
    "in-progress": [
        ("placer", "requested"),
        ("owner", "received"),
        ("owner", "accepted"),
        ("owner", "in-progress"),
    ],
    "on-hold": [("placer", "requested"), ("owner", "received"), ("owner", "on-hold")],
    "completed": [
        ("placer", "requested"),
        ("owner", "received"),
        ("owner", "accepted"),
        ("owner", "in-progress"),
        ("owner", "completed"),
    ],
    "failed": [
        ("placer", "requested"),
        ("owner", "received"),
        ("owner", "accepted"),
        ("owner", "in-progress"),
        ("owner", "failed"),
    ],
    "rejected": [("placer", "requested"), ("owner", "received"), ("owner", "rejected")],
    "cancelled": [("placer", "requested"), ("placer", "cancelled")],
}
REASON = {"statusReason": {"text": "病情需要"}}


@pytest.fixture
def parties(as_user: Users) -> dict[str, TestClient]:
    return {"placer": as_user("dr.xinyuan.people"), "owner": as_user("sp.subei")}


def _extras(client: TestClient, status: str, patient_id: str) -> dict[str, Any]:
    """What a move needs besides the status: a reason, or an outcome document (written here by
    the county doctor, who can always write about the patient)."""
    if status in ("rejected", "cancelled", "failed"):
        return dict(REASON)
    if status == "completed":
        opinion = document(client, patient_id, CONSULT_NOTE, "会诊意见")
        return {
            "output": [
                {
                    "type": {"text": "opinion"},
                    "valueReference": {"reference": f"DocumentReference/{opinion['id']}"},
                }
            ]
        }
    return {}


def _drive(
    parties: dict[str, TestClient], task: dict[str, Any], steps: list[tuple[str, str]]
) -> None:
    for party, status in steps:
        client = parties[party]
        extras = _extras(parties["placer"], status, "demo-aygul")
        r = move(client, task, status, reader=parties["placer"], **extras)
        assert r.status_code == 200, (steps, party, status, r.text)


def _shared(client: TestClient, sr: dict[str, Any]) -> bool:
    """Are this referral's records open in full to the client (by its own grant, not
    another's)? The document it lists is then served whole, not as its triage preview."""
    doc = client.get(f"/fhir/{sr['supportingInfo'][0]['reference']}")
    tags = [t.get("code") for t in doc.json().get("meta", {}).get("tag", [])]
    return doc.status_code == 200 and "SUBSETTED" not in tags


def _triage(client: TestClient, sr: dict[str, Any]) -> bool:
    """Is this referral's request open to the client, at least for triage?"""
    return client.get(f"/fhir/ServiceRequest/{sr['id']}").status_code == 200


@pytest.mark.parametrize("state", STATES)
def test_every_state_move_and_party(
    parties: dict[str, TestClient], as_user: Users, state: str
) -> None:
    """Legal moves by the right party succeed; illegal ones answer 409 naming the allowed
    moves; the wrong party gets 403; a hospital outside the referral sees nothing (404); and
    the referral's records are open to the hospital asked exactly while it should be."""
    outsider = as_user("sp.yz.tcm")
    held_from = "received" if state == "on-hold" else None
    allowed = {m.target: m.party for m in moves_from(state, held_from)}
    for target in STATES:
        # A refused move changes nothing, so one referral serves the parties in turn until a
        # move succeeds (the outsider first, the owner last: the owner opening a requested
        # referral marks it received).
        fresh: tuple[dict[str, Any], dict[str, Any]] | None = None
        for party in ("outsider", "placer", "owner"):
            if fresh is None:
                fresh = send_referral(parties["placer"], status="draft")
                _drive(parties, fresh[1], PATHS[state])
            sr, task = fresh
            client = outsider if party == "outsider" else parties[party]
            extras = _extras(parties["placer"], target, "demo-aygul")
            r = move(client, task, target, reader=parties["placer"], **extras)
            case = (state, target, party, r.text)
            closed = state in ("draft", "rejected", "cancelled")
            if party == "outsider" or (party == "owner" and closed):
                # A draft is not sent yet, a declined or cancelled one is closed: the hospital
                # asked does not see it (nor does anyone else).
                assert r.status_code == 404, case
                continue
            if target == state:
                # A draft may be edited, and output added without a move; anything else sent
                # again is a move that lost the race (compare-and-set on the state).
                edit = state == "draft" or "output" in extras
                assert r.status_code == (200 if edit else 409), case
                continue
            if target not in allowed:
                assert r.status_code == 409, case
                assert "may move to" in r.json()["issue"][0]["diagnostics"]
                continue
            if allowed[target] not in ("either", party):
                assert r.status_code == 403, case
                continue
            assert r.status_code == 200, case
            fresh = None
            # The request opens on acceptance, stays open while the referral runs (on hold
            # too) and after it ends well (for a while), and closes on rejection or
            # cancellation.
            running = state in ("accepted", "in-progress")
            expect = target in ("accepted", "in-progress", "completed", "failed") or (
                target == "on-hold" and running
            )
            assert _shared(parties["owner"], sr) == expect, case
            # The request itself is open for triage from sending until declined or cancelled.
            assert _triage(parties["owner"], sr) == (target not in ("rejected", "cancelled")), case


def test_the_move_table_is_the_issue_s_state_machine() -> None:
    moves = {(m.source, m.target, m.party) for m in MOVES}
    assert ("draft", "requested", "placer") in moves
    assert ("requested", "received", "owner") in moves
    assert ("received", "accepted", "owner") in moves and ("received", "rejected", "owner") in moves
    assert ("accepted", "in-progress", "owner") in moves
    assert {("in-progress", "completed", "owner"), ("in-progress", "failed", "owner")} <= moves
    assert {s for s, t, p in moves if t == "cancelled" and p == "placer"} == {
        "draft",
        "requested",
        "received",
        "accepted",
        "in-progress",
        "on-hold",
    }


def test_every_move_is_recorded(parties: dict[str, TestClient]) -> None:
    _, task = send_referral(parties["placer"])
    _drive(parties, task, [("owner", "received"), ("owner", "accepted")])
    provenance = parties["placer"].get("/fhir/Provenance", params={"target": f"Task/{task['id']}"})
    # Provenance targets name versions (Task/x/_history/n): search them by the history too.
    found = parties["placer"].get("/fhir/Provenance", params={"_count": "200"}).json()
    mine = [
        e["resource"]
        for e in found["entry"]
        if e["resource"]["target"][0]["reference"].startswith(f"Task/{task['id']}/")
    ]
    moves = sorted(p["activity"]["coding"][0]["code"] for p in mine)
    assert moves == ["create", "received-accepted", "requested-received"]
    accepted = next(p for p in mine if p["activity"]["coding"][0]["code"] == "received-accepted")
    assert accepted["agent"][0]["who"]["reference"] == "Practitioner/sp-subei"
    assert accepted["agent"][0]["onBehalfOf"]["reference"] == "Organization/subei"
    assert provenance.status_code == 200
    history = parties["placer"].get(f"/fhir/Task/{task['id']}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == [
        "accepted",
        "received",
        "requested",
    ]


def test_the_owner_opening_it_receives_it(parties: dict[str, TestClient]) -> None:
    _, task = send_referral(parties["placer"])
    assert parties["placer"].get(f"/fhir/Task/{task['id']}").json()["status"] == "requested"
    assert parties["owner"].get(f"/fhir/Task/{task['id']}").json()["status"] == "received"
    # A search does not count as opening it.
    _, other = send_referral(parties["placer"])
    parties["owner"].get("/fhir/Task", params={"_id": other["id"]})
    assert parties["placer"].get(f"/fhir/Task/{other['id']}").json()["status"] == "requested"


def test_worklist_and_overdue(parties: dict[str, TestClient], settings: Settings) -> None:
    sr, task = send_referral(parties["placer"], priority="urgent")
    worklist = (
        parties["owner"]
        .get(
            "/fhir/Task",
            params=[
                ("owner", "Organization/subei"),
                ("status", "requested,received"),
                ("_sort", "deadline"),
                ("_include", "Task:focus"),
                ("_include", "Task:patient"),
            ],
        )
        .json()
    )
    found = {(e["resource"]["resourceType"], e["resource"]["id"]): e for e in worklist["entry"]}
    assert ("Task", task["id"]) in found
    # Before acceptance the hospital asked sees what it needs to decide (triage): the request
    # whole, and of the patient only the name, sex and birth date (no identity number).
    assert found[("ServiceRequest", sr["id"])]["resource"] == parties["placer"].get(
        f"/fhir/ServiceRequest/{sr['id']}"
    ).json() | {"meta": found[("ServiceRequest", sr["id"])]["resource"]["meta"]}
    patient = found[("Patient", "demo-aygul")]["resource"]
    assert set(patient) == {
        "resourceType",
        "id",
        "meta",
        "name",
        "gender",
        "birthDate",
        "managingOrganization",
        "active",
    } - ({"active"} - set(patient))
    assert patient["meta"]["tag"][-1]["code"] == "SUBSETTED"
    assert task["restriction"]["period"]["end"]  # the deadline, set by the server
    assert (
        parties["owner"]
        .get("/fhir/Task", params={"overdue": "true", "_id": task["id"]})
        .json()["entry"]
        == []
    )
    # Two hours later (urgent), it is overdue: shown in businessStatus and searchable. The
    # service's clock moves; nobody sleeps and no row is edited.
    clock.advance(timedelta(hours=2, minutes=1))
    late = parties["placer"].get("/fhir/Task", params={"overdue": "true", "_id": task["id"]}).json()
    assert [e["resource"]["id"] for e in late["entry"]] == [task["id"]]
    assert late["entry"][0]["resource"]["businessStatus"]["coding"][0]["code"] == "overdue"
    by_patient = (
        parties["placer"]
        .get("/fhir/ServiceRequest", params={"patient": "demo-aygul", "category": "up-referral"})
        .json()
    )
    assert sr["id"] in {e["resource"]["id"] for e in by_patient["entry"]}
    sent = parties["placer"].get("/fhir/Task", params={"requester:missing": "x"})
    assert sent.status_code == 400


def test_bad_input_changes_nothing(parties: dict[str, TestClient], as_user: Users) -> None:
    doctor = parties["placer"]
    # A patient the user cannot see: 404.
    r = doctor.post("/fhir/ServiceRequest", json=request_body("demo-ma-xiulan"))
    assert r.status_code == 404
    # A target outside the alliance: 422.
    r = doctor.post("/fhir/ServiceRequest", json=request_body("demo-aygul", performer="nowhere"))
    assert r.status_code == 422 and "alliance" in r.text
    # Codes carry system and version.
    bad = request_body("demo-aygul")
    bad["reasonCode"][0]["coding"][0].pop("version")
    r = doctor.post("/fhir/ServiceRequest", json=bad)
    assert r.status_code == 422 and "version" in r.text
    # No consent, or one that names another hospital: 422 saying so; the Task stays draft.
    record_consent(doctor, "demo-memet", ("yz-tcm",))
    sr = create(doctor, request_body("demo-memet"))
    r = doctor.post("/fhir/Task", json=task_body(sr, "subei"))
    assert r.status_code == 422 and "consent" in r.text
    draft = create(doctor, task_body(sr, "subei", "draft"))
    assert move(doctor, draft, "requested").status_code == 422
    assert doctor.get(f"/fhir/Task/{draft['id']}").json()["status"] == "draft"
    # The Task's owner is the hospital asked.
    r = doctor.post("/fhir/Task", json=task_body(sr, "yz-tcm", "draft"))
    assert r.status_code == 422
    # Declining needs a reason.
    _, task = send_referral(doctor)
    owner = parties["owner"]
    owner.get(f"/fhir/Task/{task['id']}")
    r = move(owner, task, "rejected")
    assert r.status_code == 422 and "reason" in r.text
    # A consent needs its signed form and, from a relative, the relationship.
    form = upload(doctor, PNG, "image/png")
    no_form = consent_body("demo-aygul", form)
    no_form.pop("sourceAttachment")
    assert doctor.post("/fhir/Consent", json=no_form).status_code == 422
    relative = consent_body("demo-aygul", form, performer=[{"display": "张伟"}])
    assert doctor.post("/fhir/Consent", json=relative).status_code == 422
    guardian = consent_body("demo-aygul", form, performer=[guardian_performer()])
    assert doctor.post("/fhir/Consent", json=guardian).status_code == 201


def test_attachments_are_checked_and_served_only_to_those_who_may_see_them(
    parties: dict[str, TestClient], settings: Settings, as_user: Users
) -> None:
    doctor = parties["placer"]
    db = Database(settings.database_url)

    def attachments() -> int:
        with db.transaction() as s:
            return s.query(Attachment).count()

    before = attachments()
    too_big = doctor.post(
        "/api/attachments",
        content=b"%PDF-" + b"0" * settings.max_attachment_bytes,
        headers={"Content-Type": "application/pdf"},
    )
    assert too_big.status_code == 413
    assert (
        doctor.post(
            "/api/attachments",
            content=b"MZ\x90\x00",
            headers={"Content-Type": "application/x-msdownload"},
        ).status_code
        == 415
    )
    assert (
        doctor.post(
            "/api/attachments",
            content=b"not a pdf at all",
            headers={"Content-Type": "application/pdf"},
        ).status_code
        == 415
    )
    assert attachments() == before
    db.dispose()
    summary = document(doctor, "demo-aygul")
    url = summary["content"][0]["attachment"]["url"].removeprefix("http://testserver")
    got = doctor.get(url)
    assert got.status_code == 200 and got.content == PDF
    assert summary["content"][0]["attachment"]["size"] == len(PDF)
    assert parties["owner"].get(url).status_code == 404
    # Files are clinical: a token that may read no clinical record is refused outright.
    assert as_user("auditor").get(url).status_code == 403


def test_two_specialists_accepting_at_once(
    parties: dict[str, TestClient], settings: Settings, app: Any
) -> None:
    db = Database(settings.database_url)
    with db.transaction(write=True) as s:
        create_user(
            session=s,
            by=OPERATOR,
            username="sp.subei.2",
            hospital_id="subei",
            role="specialist",
            password=None,
            practitioner_id="subei-resp",
        )
    db.dispose()
    second = TestClient(app, headers=bearer(settings, "sp.subei.2"))
    _, task = send_referral(parties["placer"])
    received = parties["owner"].get(f"/fhir/Task/{task['id']}").json()
    body = {**received, "status": "accepted"}

    def accept(client: TestClient) -> int:
        return client.put(f"/fhir/Task/{task['id']}", json=body).status_code

    with ThreadPoolExecutor(2) as pool:
        results = sorted(pool.map(accept, [parties["owner"], second]))
    assert results == [200, 409]


def test_rerouting_a_declined_referral(parties: dict[str, TestClient], as_user: Users) -> None:
    doctor = parties["placer"]
    sr, task = send_referral(doctor)
    parties["owner"].get(f"/fhir/Task/{task['id']}")
    assert move(parties["owner"], task, "rejected", **REASON).status_code == 200
    record_consent(doctor, "demo-aygul", ("yz-tcm",))
    onward = create(
        doctor,
        request_body(
            "demo-aygul", performer="yz-tcm", replaces=[{"reference": f"ServiceRequest/{sr['id']}"}]
        ),
    )
    new_task = create(doctor, task_body(onward, "yz-tcm"))
    assert new_task["status"] == "requested"
    assert as_user("sp.yz.tcm").get(f"/fhir/Task/{new_task['id']}").json()["status"] == "received"
    # Only a declined referral can be sent on.
    _, open_task = send_referral(doctor)
    open_sr = doctor.get(f"/fhir/Task/{open_task['id']}").json()["focus"]
    r = doctor.post(
        "/fhir/ServiceRequest",
        json=request_body("demo-aygul", performer="yz-tcm", replaces=[open_sr]),
    )
    assert r.status_code == 422


def test_messages_are_seen_by_both_sides_only(
    parties: dict[str, TestClient], as_user: Users
) -> None:
    sr, task = send_referral(parties["placer"])
    message = {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "subject": {"reference": "Patient/demo-aygul"},
        "payload": [{"contentString": "请问患者是否有高血压病史？"}],
    }
    parties["owner"].get(f"/fhir/Task/{task['id']}")
    # Before accepting, the specialist does not see the request: no messages about it yet.
    assert parties["owner"].post("/fhir/Communication", json=message).status_code == 404
    assert move(parties["owner"], task, "accepted").status_code == 200
    from_owner = create(parties["owner"], message)
    assert parties["placer"].get(f"/fhir/Communication/{from_owner['id']}").status_code == 200
    reply = create(
        parties["placer"], {**message, "payload": [{"contentString": "有，服用氨氯地平。"}]}
    )
    assert parties["owner"].get(f"/fhir/Communication/{reply['id']}").status_code == 200
    assert as_user("sp.yz.tcm").get(f"/fhir/Communication/{reply['id']}").status_code == 404
    assert as_user("sp.yz.tcm").post("/fhir/Communication", json=message).status_code == 404


def test_down_referral_needs_a_discharge_summary_and_a_plan(parties: dict[str, TestClient]) -> None:
    up, task = send_referral(parties["placer"])
    specialist = parties["owner"]
    specialist.get(f"/fhir/Task/{task['id']}")
    assert move(specialist, task, "accepted").status_code == 200
    plan = care_plan(specialist, "demo-aygul")
    down = create(
        specialist,
        request_body(
            "demo-aygul",
            performer="xy-people",
            category="down-referral",
            basedOn=[{"reference": f"ServiceRequest/{up['id']}"}],
            supporting=[f"CarePlan/{plan['id']}"],
        ),
    )
    r = specialist.post("/fhir/Task", json=task_body(down, "xy-people"))
    assert r.status_code == 422 and "discharge summary" in r.text
    # Down only to the hospital that referred up.
    wrong = request_body(
        "demo-aygul",
        performer="xy-tcm",
        category="down-referral",
        basedOn=[{"reference": f"ServiceRequest/{up['id']}"}],
    )
    assert specialist.post("/fhir/ServiceRequest", json=wrong).status_code == 422


# ---- the alliance's figures ----------------------------------------------------------------


def test_referral_figures_match_an_independent_count(settings: Settings, as_user: Users) -> None:
    rng = random.Random(7)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    pairs = [
        ("xy-people", "subei", "up-referral"),
        ("xy-tcm", "yz-tcm", "up-referral"),
        ("subei", "xy-people", "down-referral"),
    ]
    reasons = [("no-capacity", "床位已满"), ("wrong-specialty", "非本专科"), (None, "资料不全")]
    rows: list[Referral] = []
    for i in range(120):
        placer, owner, category = rng.choice(pairs)
        requested = start + timedelta(hours=rng.randint(0, 24 * 150))
        row = Referral(
            task_id=f"gen-{i}",
            service_request_id=f"gen-sr-{i}",
            patient_id="demo-aygul",
            category=category,
            placer_org=placer,
            owner_org=owner,
            priority="routine",
            status="requested",
            created_at=requested,
            requested_at=requested,
            deadline=requested + timedelta(hours=48),
        )
        fate = rng.choice(["requested", "accepted", "rejected", "completed", "cancelled"])
        if fate in ("accepted", "completed"):
            row.accepted_at = requested + timedelta(minutes=rng.randint(5, 3000))
        if fate == "completed":
            row.completed_at = row.accepted_at + timedelta(hours=rng.randint(1, 200))  # type: ignore[operator]
        if fate == "rejected":
            row.rejected_at = requested + timedelta(hours=1)
            row.status_reason_code, row.status_reason = rng.choice(reasons)
        row.status = fate
        rows.append(row)
    db = Database(settings.database_url)
    with db.transaction(write=True) as s:
        s.add_all(rows)
    db.dispose()
    figures = as_user("auditor").get(
        "/api/stats/referrals", params={"from": "2026-01-01", "to": "2026-12-31"}
    )
    assert figures.status_code == 200, figures.text
    body = figures.json()
    expected: Counter[tuple[str, str, str, str, str]] = Counter()
    for r in rows:
        month = (r.requested_at + timedelta(hours=8)).strftime("%Y-%m")  # type: ignore[operator]
        key = (month, "up" if r.category == "up-referral" else "down", r.placer_org, r.owner_org)
        expected[(*key, "sent")] += 1
        for kind, when in (
            ("accepted", r.accepted_at),
            ("rejected", r.rejected_at),
            ("completed", r.completed_at),
        ):
            if when is not None:
                expected[(*key, kind)] += 1
        if r.status == "cancelled":
            expected[(*key, "cancelled")] += 1
    got: Counter[tuple[str, str, str, str, str]] = Counter()
    for p in body["pairs"]:
        for kind in ("sent", "accepted", "rejected", "completed", "cancelled"):
            if p[kind]:
                got[(p["month"], p["direction"], p["from"], p["to"], kind)] = p[kind]
    assert got == expected
    waits = [(r.accepted_at - r.requested_at).total_seconds() / 3600 for r in rows if r.accepted_at]  # type: ignore[operator]
    ordered = sorted(waits)
    assert body["turnaround"]["request_to_acceptance"]["count"] == len(waits)
    assert body["turnaround"]["request_to_acceptance"]["median_hours"] == pytest.approx(
        statistics.median(waits), abs=1e-3
    )
    assert body["turnaround"]["request_to_acceptance"]["p90_hours"] == pytest.approx(
        ordered[-(-9 * len(ordered) // 10) - 1], abs=1e-3
    )
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9) == 9.0
    # Decline reasons are counted by code (no code: other); their free text, which may name
    # the patient, is given only to the two hospitals of each referral: not to the auditor.
    declined = Counter(r.status_reason_code or "other" for r in rows if r.rejected_at)
    assert {x["code"]: x["count"] for x in body["rejection_reasons"]} == declined
    assert "reason" not in str(body["rejection_reasons"]) and body["own_rejection_reasons"] == []
    assert body["overdue_now"] == sum(1 for r in rows if r.status == "requested")
    assert as_user("dr.xinyuan.people").get("/api/stats/referrals").status_code == 403
    admin = as_user("admin.subei").get(
        "/api/stats/referrals", params={"from": "2026-01-01", "to": "2026-12-31"}
    )
    assert admin.status_code == 200
    own = Counter(
        (r.status_reason_code or "other", r.status_reason, r.placer_org, r.owner_org)
        for r in rows
        if r.rejected_at and "subei" in (r.placer_org, r.owner_org)
    )
    assert {
        (x["code"], x["reason"], x["from"], x["to"]): x["count"]
        for x in admin.json()["own_rejection_reasons"]
    } == own


def test_the_default_period_ends_today_in_beijing(settings: Settings, as_user: Users) -> None:
    # 17:00 UTC on 1 December is 01:00 on 2 December in Beijing: a referral sent then is
    # today's, and the default period (the last year up to today) counts it.
    sent = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    clock.set_to(sent + timedelta(minutes=5))
    assert clock.today().isoformat() == "2026-12-02"
    db = Database(settings.database_url)
    with db.transaction(write=True) as s:
        s.add(
            Referral(
                task_id="evening",
                service_request_id="evening-sr",
                patient_id="demo-aygul",
                category="up-referral",
                placer_org="xy-people",
                owner_org="subei",
                priority="routine",
                status="requested",
                created_at=sent,
                requested_at=sent,
                deadline=sent + timedelta(hours=48),
            )
        )
    db.dispose()
    figures = as_user("auditor").get("/api/stats/referrals")
    assert figures.status_code == 200, figures.text
    assert [(p["month"], p["from"], p["to"], p["sent"]) for p in figures.json()["pairs"]] == [
        ("2026-12", "xy-people", "subei", 1)
    ]
