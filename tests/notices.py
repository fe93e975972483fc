"""Builders for notification tests: domain commands run in-process as a demo account (fast:
no HTTP, no password check), and a referral's moves."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from sqlalchemy.orm import Session

from alliance.attachments.service import fhir_attachment, store_attachment
from alliance.fhir.registry import OperationContext
from alliance.security.access import Principal, check_write, visibility
from alliance.security.service import get_user, principal_for, token_claims
from alliance.security.tokens import TokenClaims
from referral import commands
from server.app import Services
from tests.referrals import PNG

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


def open_in(
    acting: OperationContext,
    services: Services,
    county: str,
    patient_id: str,
    *,
    priority: str = "routine",
) -> str:
    """An up-referral from `county` to its partner's department, sent in the caller's unit of
    work; its Task id."""
    form = store_attachment(
        session=acting.session,
        blobs=services.blobs,
        stream=io.BytesIO(PNG),
        content_type="image/png",
        title="知情同意书",
        principal=acting.actor,  # type: ignore[arg-type]
        max_bytes=services.settings.max_attachment_bytes,
    )
    opened = commands.open_referral(
        acting,
        commands.ReferralRequest(
            patient_id=patient_id,
            department_id=PARTNER_DEPARTMENT[county],
            diagnosis=commands.Diagnosis("胸痛待查"),
            summary="胸痛三天",
            consent_form=fhir_attachment(services.settings.base_url, form),
            priority=priority,
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
        services.fhir.read(
            "Task", task_id, session=acting.session, visible=acting.visible, actor=acting.actor
        )
