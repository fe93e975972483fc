"""kill -9 of the server in the middle of a burst loses no notification (issue 14.3).

`alliance serve` runs in a process of its own with its delivery worker (the default); a test
HIS subscribes to the messages of its hospital's referrals; three clients post messages while
the server is killed with SIGKILL, and it is started again. Then every message the server
committed (acknowledged or not) reaches the receiver: the subscription's event numbers 1..N
all arrive, N the number of message events committed, each number always naming the same
message (a repeat is the same event again, which the receiver drops by its number)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import func, select

from alliance.config import Settings
from alliance.notify.models import Event
from alliance.security.service import register_client
from server.app import build_services
from tests.conftest import bearer, serving
from tests.notices import Receiver, send, subscription_body

WAIT_S = 60.0
SENDERS, PER_SENDER, KILL_AFTER = 3, 15, 12


def _until(what: str, done: Callable[[], bool]) -> None:
    """Wait for what the server brings about (a stuck wait fails, it is not a timed test)."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill_9_mid_burst_loses_no_notification(settings: Settings, tmp_path: Path) -> None:
    services = build_services(settings)
    try:
        with services.db.transaction(write=True) as session:
            secret = register_client(
                session=session, client_id="subei-his", name="HIS", hospital_id="subei"
            )
        task = send(services, "xy-people", "demo-aygul")
        with services.db.transaction() as session:
            sr_id = services.fhir.read("Task", task, session=session).resource()["focus"][
                "reference"
            ]
        doctor = bearer(settings, "dr.xinyuan.people")
        acknowledged: list[str] = []
        with Receiver() as receiver:
            with serving(settings, tmp_path / "first.log") as (url, proc):
                token = httpx.post(
                    f"{url}/auth/token",
                    data={"grant_type": "client_credentials"},
                    auth=("subei-his", secret),
                ).json()["access_token"]
                body = subscription_body(receiver.url, topic="message-posted")
                sd = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
                body["channel"]["extension"] = [
                    {"url": f"{sd}/backport-timeout", "valueUnsignedInt": 2}
                ]
                r = httpx.post(
                    f"{url}/fhir/Subscription",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 201, r.text
                _until("the handshake", lambda: bool(receiver.notifications("handshake")))

                lock = threading.Lock()

                def post(n: int) -> None:
                    with httpx.Client(base_url=url, headers=doctor, timeout=30) as c:
                        for i in range(PER_SENDER):
                            try:
                                r = c.post(
                                    "/fhir/Communication",
                                    json={
                                        "resourceType": "Communication",
                                        "status": "completed",
                                        "basedOn": [{"reference": sr_id}],
                                        "subject": {"reference": "Patient/demo-aygul"},
                                        "payload": [{"contentString": f"消息 {n}-{i}"}],
                                    },
                                )
                            except httpx.TransportError:
                                return
                            if r.status_code != 201:
                                return
                            with lock:
                                acknowledged.append(r.json()["id"])

                senders = [threading.Thread(target=post, args=(n,)) for n in range(SENDERS)]
                for s in senders:
                    s.start()
                _until("messages acknowledged", lambda: len(acknowledged) >= KILL_AFTER)
                proc.kill()  # SIGKILL: no shutdown of any kind
                proc.wait(20)
                for s in senders:
                    s.join(30)
            assert len(acknowledged) < SENDERS * PER_SENDER  # killed mid-burst

            with services.db.transaction() as session:
                committed = session.scalar(
                    select(func.count()).where(
                        Event.kind == "message-posted", Event.task_id == task
                    )
                )
            assert committed is not None and committed >= len(acknowledged)
            with serving(settings, tmp_path / "second.log"):
                _until(
                    "every committed event",
                    lambda: {n for n, _k, _f in receiver.events()} >= set(range(1, committed + 1)),
                )
            events = receiver.events()
            numbers = {n for n, _k, _f in events}
            assert numbers == set(range(1, committed + 1))
            named: dict[int, str] = {}
            for number, _kind, focus in events:
                assert named.setdefault(number, focus) == focus
            assert {f"Communication/{c}" for c in acknowledged} <= set(named.values())
    finally:
        services.db.dispose()
