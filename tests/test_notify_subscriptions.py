"""FHIR Subscriptions (issue 14.2-3, R4 Subscriptions Backport IG) delivered by the worker to a
test HIS, a real HTTP receiver: handshake, events in order with their numbers, heartbeats,
retries with back-off while the receiver fails, catching up with $events, and what
administrators and /metrics see. The clock is moved, never slept."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from alliance import clock
from alliance.config import Settings
from alliance.notify.models import Subscription
from alliance.notify.worker import Worker
from alliance.security.service import set_client_active
from server.app import Services, create_app
from server.notify import build_worker
from tests.notices import (
    Receiver,
    acting_as,
    complete,
    drain,
    move,
    open_in,
    partner,
    receive,
    send,
    subscription_body,
)
from tests.teleconsults import (
    beijing,
    book,
    open_consult,
    opinion,
    proposal_at,
    respond,
    slot_id,
    start_consult,
    weekday_ahead,
)

Users = Callable[[str], TestClient]


def test_a_hospital_system_hears_a_referral_and_a_consult_in_order(
    app: FastAPI, settings: Settings, as_user: Users
) -> None:
    services: Services = app.state.services
    worker = build_worker(settings, services.db, services.fhir)
    his = partner(app, "subei-his", "subei")
    with Receiver() as receiver:
        r = his.post(
            "/fhir/Subscription",
            json=subscription_body(
                receiver.url, content="full-resource", heartbeat=60, headers=("X-His-Key: k1",)
            ),
        )
        assert r.status_code == 201, r.text
        sub = r.json()
        assert sub["status"] == "requested"

        # The handshake first; it makes the subscription active.
        assert drain(worker) == 1
        [handshake] = receiver.notifications()
        assert (handshake["type"], handshake["since_start"]) == ("handshake", 0)
        assert receiver.received[0]["headers"]["X-His-Key"] == "k1"
        assert his.get(f"/fhir/Subscription/{sub['id']}").json()["status"] == "active"

        # An up-referral sent, received, accepted and completed (domain commands, in-process).
        task = send(services, "xy-people", "demo-aygul")
        receive(services, "sp.subei", task)
        move(services, "sp.subei", task, "accepted")
        complete(services, "sp.subei", task)
        # A teleconsult booked, started and its opinion signed (over the FHIR API).
        doctor, specialist = as_user("dr.xinyuan.people"), as_user("sp.subei")
        sr, consult = open_consult(doctor)
        start = beijing(weekday_ahead(2), "15:00")
        appt = book(
            doctor, proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
        ).json()
        assert respond(specialist, appt["id"], "accepted", "PractitionerRole/sp-subei-role")
        encounter = start_consult(specialist, appt["id"]).json()
        draft = specialist.post(
            "/fhir/DiagnosticReport",
            json=opinion(sr, encounter={"reference": f"Encounter/{encounter['id']}"}),
        ).json()
        signed = specialist.put(
            f"/fhir/DiagnosticReport/{draft['id']}", json={**draft, "status": "final"}
        )
        assert signed.status_code == 200, signed.text

        drain(worker)
        events = receiver.events()
        ct = consult["id"]
        assert [(k, f) for _n, k, f in events] == [
            ("referral-sent", f"Task/{task}"),
            ("referral-received", f"Task/{task}"),
            ("referral-accepted", f"Task/{task}"),
            ("referral-completed", f"Task/{task}"),
            ("referral-sent", f"Task/{ct}"),
            ("consult-booked", f"Appointment/{appt['id']}"),
            ("referral-received", f"Task/{ct}"),
            ("referral-accepted", f"Task/{ct}"),
            ("consult-started", f"Encounter/{encounter['id']}"),
            ("opinion-signed", f"DiagnosticReport/{draft['id']}"),
            ("referral-completed", f"Task/{ct}"),
        ]
        # Numbered from 1 without a gap, each once.
        assert [n for n, _k, _f in events] == list(range(1, 12))
        # Full resources, as the subscriber may read them: the completed Task.
        notes = receiver.notifications("event-notification")
        resources = [r for n in notes for r in n["resources"]]
        assert resources[3]["resourceType"] == "Task" and resources[3]["status"] == "completed"

        # Quiet for a heartbeat period: a heartbeat, with the count so far.
        clock.advance(timedelta(seconds=61))
        assert drain(worker) == 1
        beat = receiver.notifications()[-1]
        assert (beat["type"], beat["since_start"], beat["events"]) == ("heartbeat", 11, [])

        # $status and $events: a receiver that missed events catches up by number.
        status = his.get(f"/fhir/Subscription/{sub['id']}/$status").json()
        params = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
        assert params["events-since-subscription-start"]["valueString"] == "11"
        assert params["status"]["valueCode"] == "active"
        caught = his.get(
            f"/fhir/Subscription/{sub['id']}/$events",
            params={"eventsSinceNumber": "3", "eventsUntilNumber": "5", "content": "id-only"},
        ).json()
        status_of_events = caught["entry"][0]["resource"]["parameter"]
        numbers = [
            p["part"][0]["valueString"]
            for p in status_of_events
            if p["name"] == "notification-event"
        ]
        assert numbers == ["3", "4", "5"]
        assert all("resource" not in e for e in caught["entry"][1:])  # id-only asked
        # Another hospital's system does not see this subscription.
        other = partner(app, "yz-tcm-his", "yz-tcm")
        assert other.get(f"/fhir/Subscription/{sub['id']}/$status").status_code == 404


def test_a_receiver_down_for_an_hour_gets_everything_once(
    app: FastAPI, settings: Settings, as_user: Users
) -> None:
    services: Services = app.state.services
    worker = build_worker(settings, services.db, services.fhir)
    his = partner(app, "xy-people-his", "xy-people")
    with Receiver() as receiver:
        sub = his.post("/fhir/Subscription", json=subscription_body(receiver.url)).json()
        drain(worker)
        receiver.failing = 500
        tasks = [send(services, "xy-people", p) for p in ("demo-aygul", "demo-memet")]
        attempts = 0
        for _ in range(40):  # an hour and more, in the worker's own back-off steps
            attempts += worker.run_once()
            clock.advance(timedelta(minutes=2))
        assert receiver.refused == attempts >= 15  # retried, at most 5 minutes apart
        assert his.get(f"/fhir/Subscription/{sub['id']}").json()["status"] == "error"
        # Administrators see the failures.
        admin = as_user("admin.xinyuan.people")
        state = admin.get("/api/notify/deliveries").json()
        [mine] = state["subscriptions"]
        assert (mine["status"], mine["failuresInARow"]) == ("error", attempts)
        assert {a["httpStatus"] for a in state["attempts"] if not a["ok"]} == {500}
        assert as_user("dr.xinyuan.people").get("/api/notify/deliveries").status_code == 403

        more = send(services, "xy-people", "demo-wang-jianguo")
        receiver.failing = None
        clock.advance(timedelta(minutes=5))
        drain(worker)
        assert [(n, f) for n, _k, f in receiver.events()] == [
            (1, f"Task/{tasks[0]}"),
            (2, f"Task/{tasks[1]}"),
            (3, f"Task/{more}"),
        ]
        assert his.get(f"/fhir/Subscription/{sub['id']}").json()["status"] == "active"
        metrics = TestClient(app).get("/metrics").text
        assert (
            'alliance_notify_attempts_total{outcome="failed",type="event-notification"}' in metrics
        )

        # A partner system that is locked hears nothing more: its subscription goes off.
        with services.db.transaction(write=True) as session:
            set_client_active(session=session, client_id="xy-people-his", active=False)
        send(services, "xy-people", "demo-aygul")
        drain(worker)
        assert len(receiver.events()) == 3
        with services.db.transaction() as session:
            row = session.get(Subscription, sub["id"])
            assert row is not None
            assert (row.status, row.error) == ("off", "the subscriber's account is locked")


def test_two_workers_never_deliver_one_event_twice(app: FastAPI, settings: Settings) -> None:
    """Two workers at once on one subscription, one event per notification: each event is
    delivered once, in order (leases; SKIP LOCKED on PostgreSQL)."""
    services: Services = app.state.services
    workers = [build_worker(settings, services.db, services.fhir, name=n) for n in "ab"]
    his = partner(app, "subei-his", "subei")
    with Receiver() as receiver:
        body = subscription_body(receiver.url)
        sd = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
        body["channel"]["extension"] = [{"url": f"{sd}/backport-max-count", "valueUnsignedInt": 1}]
        assert his.post("/fhir/Subscription", json=body).status_code == 201
        drain(workers[0])
        with acting_as(services, "dr.xinyuan.people") as acting:
            tasks = [open_in(acting, services, "xy-people", "demo-aygul") for _ in range(8)]

        def run(worker: Worker) -> None:
            for _ in range(200):
                if not worker.run_once() and len(receiver.events()) >= len(tasks):
                    return

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert receiver.events() == [
            (n, "referral-sent", f"Task/{t}") for n, t in enumerate(tasks, start=1)
        ]


def test_a_subscription_names_what_to_correct(app: FastAPI) -> None:
    """Each refusal is a 422 OperationOutcome with its rule, and creates nothing; the topics
    are listed in the CapabilityStatement (backport IG)."""
    his = partner(app, "subei-his", "subei")
    sd = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
    good = subscription_body("https://his.example/notify")
    cases = {
        "subscription-topic": {**good, "criteria": "Task?status=requested"},
        "subscription-channel": {**good, "channel": {**good["channel"], "type": "email"}},
        "subscription-endpoint": {**good, "channel": {**good["channel"], "endpoint": "ftp://x"}},
        "subscription-filter": {
            **good,
            "_criteria": {
                "extension": [{"url": f"{sd}/backport-filter-criteria", "valueString": "x=y"}]
            },
        },
        "subscription-content": {
            **good,
            "channel": {
                **good["channel"],
                "_payload": {
                    "extension": [{"url": f"{sd}/backport-payload-content", "valueCode": "all"}]
                },
            },
        },
    }
    for rule, body in cases.items():
        r = his.post("/fhir/Subscription", json=body)
        assert r.status_code == 422, (rule, r.text)
        assert rule in r.text
    assert his.get("/fhir/Subscription").json().get("entry", []) == []
    metadata = TestClient(app).get("/fhir/metadata").json()
    [entry] = [e for e in metadata["rest"][0]["resource"] if e["type"] == "Subscription"]
    topics = {e["valueCanonical"] for e in entry["extension"]}
    assert "https://fhir.yzxy-alliance.cn/SubscriptionTopic/referral-overdue" in topics
    assert {op["name"] for op in entry["operation"]} == {"status", "events", "get-ws-binding-token"}


def test_a_rest_hook_goes_only_to_the_endpoints_the_operator_listed(settings: Settings) -> None:
    """With ALLIANCE_NOTIFY_ENDPOINTS set, a partner's token cannot make the server post to
    any other address (SSRF): 422 naming the rule, nothing created; a listed one is taken."""
    listed = settings.model_copy(update={"notify_endpoints": "https://his.subei.example/fhir/"})
    application = create_app(listed)
    try:
        his = partner(application, "subei-his", "subei")
        for endpoint in ("http://169.254.169.254/latest/meta-data", "https://his.subei.example/"):
            r = his.post("/fhir/Subscription", json=subscription_body(endpoint))
            assert r.status_code == 422, (endpoint, r.text)
            assert "subscription-endpoint-not-allowed" in r.text
        assert his.get("/fhir/Subscription").json().get("entry", []) == []
        body = subscription_body("https://his.subei.example/fhir/notify")
        assert his.post("/fhir/Subscription", json=body).status_code == 201
    finally:
        application.state.services.db.dispose()


def test_a_websocket_subscription_streams_its_events(app: FastAPI) -> None:
    """The backport's websocket channel: a binding token, `bind-with-token`, the handshake,
    then the events in order; a wrong token is refused; $status counts what was sent."""
    services: Services = app.state.services
    his = partner(app, "subei-his", "subei")
    body = subscription_body("", heartbeat=1)
    body["channel"] = {**body["channel"], "type": "websocket"}
    del body["channel"]["endpoint"]
    sub = his.post("/fhir/Subscription", json=body).json()
    binding = his.get(f"/fhir/Subscription/{sub['id']}/$get-ws-binding-token").json()
    params = {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in binding["parameter"]
    }
    assert params["websocket-url"] == "ws://testserver/api/notify/ws"
    socket_client = TestClient(app)
    with socket_client.websocket_connect("/api/notify/ws") as ws:
        ws.send_text("bind-with-token not-a-token")
        with pytest.raises(WebSocketDisconnect) as refused:
            ws.receive_json()
        assert refused.value.code == 1008
    with socket_client.websocket_connect("/api/notify/ws") as ws:
        ws.send_text(f"bind-with-token {params['token']}")
        handshake = ws.receive_json()
        assert _status(handshake)["type"] == "handshake"
        tasks = [send(services, "xy-people", p) for p in ("demo-aygul", "demo-memet")]
        got: list[tuple[str, str]] = []
        while len(got) < 2:
            note = _status(ws.receive_json())
            got += [(n, f) for n, f in note["events"]]
        assert got == [("1", f"Task/{tasks[0]}"), ("2", f"Task/{tasks[1]}")]
        # A second socket for the same subscription is refused while this one is bound.
        with socket_client.websocket_connect("/api/notify/ws") as other:
            other.send_text(f"bind-with-token {params['token']}")
            with pytest.raises(WebSocketDisconnect):
                other.receive_json()
        assert _status(ws.receive_json())["type"] == "heartbeat"
    status = his.get(f"/fhir/Subscription/{sub['id']}/$status").json()
    counted = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert counted["events-since-subscription-start"]["valueString"] == "2"
    assert counted["status"]["valueCode"] == "active"


def _status(bundle: dict[str, Any]) -> dict[str, Any]:
    params = bundle["entry"][0]["resource"]["parameter"]
    return {
        "type": next(p["valueCode"] for p in params if p["name"] == "type"),
        "events": [
            (
                next(x["valueString"] for x in p["part"] if x["name"] == "event-number"),
                next(x["valueReference"]["reference"] for x in p["part"] if x["name"] == "focus"),
            )
            for p in params
            if p["name"] == "notification-event"
        ],
    }
