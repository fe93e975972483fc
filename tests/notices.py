"""Builders for notification tests: domain commands run in-process as a demo account (fast:
no HTTP, no password check), and a referral's moves."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from alliance.attachments.service import fhir_attachment, store_attachment
from alliance.fhir.registry import OperationContext
from alliance.security.access import Principal, check_write, visibility
from alliance.security.service import get_user, principal_for, register_client, token_claims
from alliance.security.tokens import TokenClaims
from referral import commands
from server.app import Services
from tests.referrals import PDF, PNG

#: The demo's departments a county hospital refers to, per partnership.
PARTNER_DEPARTMENT = {
    "xy-people": "subei-cardiology",
    "xy-tcm": "yz-tcm-tcm-internal",
    "xy-mch": "yz-mch-obstetrics",
}
DOCTOR = {"xy-people": "dr.xinyuan.people", "xy-tcm": "dr.xinyuan.tcm", "xy-mch": "dr.xinyuan.mch"}
SPECIALIST = {"subei": "sp.subei", "yz-tcm": "sp.yz.tcm", "yz-mch": "sp.yz.mch"}
PATIENTS = {
    "xy-people": ("demo-wang-jianguo", "demo-aygul", "demo-memet"),
    "xy-tcm": ("demo-ma-xiulan", "demo-erlan"),
    "xy-mch": ("demo-patigul", "demo-zhang-min"),
}


def principal(session: Session, username: str) -> Principal:
    claims: TokenClaims = token_claims(get_user(session=session, username=username), "")
    return principal_for(session, claims)


@contextmanager
def acting_as(services: Services, username: str) -> Iterator[OperationContext]:
    """One write unit of work as `username`, as the domain commands take the caller."""
    with services.db.transaction(write=True) as session:
        who = principal(session, username)
        yield OperationContext(
            session,
            services.fhir,
            who,
            visibility(who, services.fhir.registry.get),
            partial(check_write, who),
        )


def attach(
    acting: OperationContext, services: Services, data: bytes, content_type: str, title: str
) -> dict[str, Any]:
    """`data` stored as a file of the acting hospital, in the caller's unit of work; the
    Attachment that names it."""
    stored = store_attachment(
        session=acting.session,
        blobs=services.blobs,
        stream=io.BytesIO(data),
        content_type=content_type,
        title=title,
        principal=acting.actor,  # type: ignore[arg-type]
        max_bytes=services.settings.max_attachment_bytes,
    )
    return fhir_attachment(services.settings.base_url, stored)


def open_in(
    acting: OperationContext,
    services: Services,
    county: str,
    patient_id: str,
    *,
    priority: str = "routine",
    studies: tuple[str, ...] = (),
) -> str:
    """An up-referral from `county` to its partner's department, sharing `studies`, sent in
    the caller's unit of work; its Task id."""
    form = attach(acting, services, PNG, "image/png", "知情同意书")
    opened = commands.open_referral(
        acting,
        commands.ReferralRequest(
            patient_id=patient_id,
            department_id=PARTNER_DEPARTMENT[county],
            diagnosis=commands.Diagnosis("胸痛待查"),
            summary="胸痛三天",
            consent_form=form,
            priority=priority,
            studies=studies,
        ),
    )
    return opened.task_id


def send(services: Services, county: str, patient_id: str, *, priority: str = "routine") -> str:
    """`open_in` in a unit of work of its own, as the county's doctor."""
    with acting_as(services, DOCTOR[county]) as acting:
        return open_in(acting, services, county, patient_id, priority=priority)


def move(services: Services, username: str, task_id: str, target: str, reason: str = "") -> None:
    with acting_as(services, username) as acting:
        commands.move_referral(acting, task_id, target, reason=reason)


def receive(services: Services, username: str, task_id: str) -> None:
    """The owner opens the referral (FHIR read hook: requested -> received)."""
    with acting_as(services, username) as acting:
        receive_in(acting, task_id)


def receive_in(acting: OperationContext, task_id: str) -> None:
    acting.store.read(
        "Task", task_id, session=acting.session, visible=acting.visible, actor=acting.actor
    )


class Receiver:
    """A hospital system's notification endpoint: a real HTTP server on a free port that keeps
    every notification it acknowledged, and answers `failing` (an HTTP status) while set."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.refused = 0
        self.failing: int | None = None
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner.lock:
                    status = owner.failing or 200
                    if status == 200:
                        owner.received.append(
                            {"body": json.loads(body), "headers": dict(self.headers)}
                        )
                    else:
                        owner.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def notifications(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The acknowledged notifications' SubscriptionStatus (as {type, events: [(number,
        kind, focus)], ...}), optionally of one type."""
        with self.lock:
            bodies = [r["body"] for r in self.received]
        out = []
        for bundle in bodies:
            status = bundle["entry"][0]["resource"]
            params = {p["name"]: p for p in status["parameter"]}
            events = [
                (
                    int(_part(p, "event-number")["valueString"]),
                    p["extension"][0]["valueCode"],
                    (_part(p, "focus") or {}).get("valueReference", {}).get("reference"),
                )
                for p in status["parameter"]
                if p["name"] == "notification-event"
            ]
            note = {
                "type": params["type"]["valueCode"],
                "status": params["status"]["valueCode"],
                "since_start": int(params["events-since-subscription-start"]["valueString"]),
                "events": events,
                "resources": [e.get("resource") for e in bundle["entry"][1:]],
            }
            if kind is None or note["type"] == kind:
                out.append(note)
        return out

    def events(self) -> list[tuple[int, str, str]]:
        """Every event acknowledged, in the order received (repeats included)."""
        return [e for n in self.notifications("event-notification") for e in n["events"]]


def _part(param: dict[str, Any], name: str) -> dict[str, Any]:
    return next((p for p in param.get("part", []) if p["name"] == name), {})


def subscription_body(
    endpoint: str,
    topic: str = "all",
    content: str = "id-only",
    heartbeat: int | None = None,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A topic-based Subscription (R4 Subscriptions Backport IG) with a rest-hook channel."""
    sd = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {
            "extension": [{"url": f"{sd}/backport-payload-content", "valueCode": content}]
        },
        "header": list(headers),
    }
    if heartbeat is not None:
        channel["extension"] = [
            {"url": f"{sd}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}
        ]
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "新源县人民医院 HIS",
        "criteria": f"https://fhir.yzxy-alliance.cn/SubscriptionTopic/{topic}",
        "channel": channel,
    }


def partner(app: Any, client_id: str, hospital_id: str) -> TestClient:
    """A partner system of one hospital, registered and signed in with client_credentials
    (POST /auth/token) as a hospital system would."""
    services: Services = app.state.services
    with services.db.transaction(write=True) as session:
        secret = register_client(
            session=session, client_id=client_id, name=client_id, hospital_id=hospital_id
        )
    plain = TestClient(app)
    r = plain.post(
        "/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert r.status_code == 200, r.text
    return TestClient(app, headers={"Authorization": f"Bearer {r.json()['access_token']}"})


def complete(services: Services, username: str, task_id: str) -> None:
    """The owner starts and completes a referral with its opinion document (a PDF)."""
    with acting_as(services, username) as acting:
        commands.move_referral(acting, task_id, "in-progress")
        opinion = attach(acting, services, PDF, "application/pdf", "会诊意见")
        commands.complete_with_opinion(acting, task_id, opinion)


def drain(worker: Any, passes: int = 100) -> int:
    """Run the worker's passes until one has nothing to do; how many deliveries it made."""
    done = 0
    for _ in range(passes):
        made = worker.run_once()
        if not made:
            return done
        done += made
    raise AssertionError("the worker did not settle")
