"""The rules of a referral, run inside the FHIR writes of its resources.

A referral is a ServiceRequest (what is asked, of which hospital, why) and a Task that carries
its workflow. The Task's moves are checked against the state machine (referral.workflow) and
the party making them; each move is recorded as a Provenance and opens or closes the access
grants that let the receiving hospital read what the referral shares. Functions take the
session keyword-only (through the WriteContext) and never commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.audit.service import actor_of
from alliance.codes import (
    DECLINE_REASON,
    ICD10_CN,
    RECORD_KEEPER,
    RECORD_PATIENT,
    REQUEST_CATEGORY,
    TASK_BUSINESS_STATUS,
    TCM_DIAGNOSIS,
    WORKFLOW_MOVE,
)
from alliance.config import Settings
from alliance.errors import BadRequest, Conflict, Invalid, Issue, NotFound
from alliance.fhir.models import ResourceRow
from alliance.fhir.registry import Resource, Store, WriteContext
from alliance.fhir.types import Actor as Acting
from alliance.fhir.types import Version
from alliance.fhir.values import date_range, instant
from alliance.notify.models import Event
from alliance.notify.outbox import ADMINISTER, Recipient, record
from alliance.records import keeper_of, reference_id, stamp_keeper
from alliance.security.access import FULL, TRIAGE, shareable, visibility
from alliance.security.service import close_grants, end_grants, open_grant
from referral.models import Referral
from referral.workflow import AWAITING_DECISION, FINAL_STATES, SENT_OPEN, check_move

CATEGORIES = ("up-referral", "down-referral", "teleconsult")
LOINC = "http://loinc.org"
DISCHARGE_SUMMARY = "18842-5"
#: Code systems whose codes must also carry their version (DOMAIN.md "Codes").
VERSIONED_SYSTEMS = (ICD10_CN, TCM_DIAGNOSIS)
#: What the ServiceRequest's status becomes when its Task moves.
REQUEST_STATUS = {
    "requested": "active",
    "completed": "completed",
    "failed": "revoked",
    "rejected": "revoked",
    "cancelled": "revoked",
}


class ReferralRules:
    """The referral domain's hooks, bound to the settings they need (deadlines, grant days)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # ---- ServiceRequest -----------------------------------------------------------------

    def prepare_request(self, ctx: WriteContext, sr: Resource, previous: Resource | None) -> None:
        stamp_keeper(ctx, sr, previous)

    def check_request(
        self, ctx: WriteContext, sr: Resource, previous: Resource | None
    ) -> list[Issue]:
        session = ctx.session
        category = category_of(sr)
        if category is None:
            raise Invalid(
                f"a referral's category is one of {', '.join(CATEGORIES)} in {REQUEST_CATEGORY}",
                expression=["ServiceRequest.category"],
            )
        if sr.get("intent") != "order":
            raise Invalid("a referral's intent is order", expression=["ServiceRequest.intent"])
        patient_id = reference_id(sr.get("subject"), "Patient")
        if patient_id is None:
            raise Invalid(
                "a referral's subject is a Patient", expression=["ServiceRequest.subject"]
            )
        target = target_hospital(session, sr)
        check_codes(sr.get("reasonCode") or [], "ServiceRequest.reasonCode")
        if ctx.actor is None:
            return []
        for i, info in enumerate(sr.get("supportingInfo") or []):
            where = f"ServiceRequest.supportingInfo[{i}]"
            shared = self._shared_record(ctx, ctx.actor, info, where)
            about = shared.patient_id
            if about is not None and about != patient_id:
                raise Invalid(
                    f"supportingInfo[{i}] is about another patient",
                    expression=[f"ServiceRequest.supportingInfo[{i}]"],
                    rule="referral-other-patient",
                )
        if category == "down-referral":
            up = self._based_on_up_referral(ctx, ctx.actor, sr, patient_id)
            if target != keeper_of(up):
                raise Invalid(
                    f"a down-referral goes back to the hospital that referred the patient up: "
                    f"Organization/{keeper_of(up)}",
                    expression=["ServiceRequest.performer"],
                    rule="down-referral-back-to-sender",
                )
        for i, replaced in enumerate(sr.get("replaces") or []):
            old = reference_id(replaced, "ServiceRequest")
            row = session.scalar(
                select(Referral)
                .where(Referral.service_request_id == old)
                .order_by(Referral.created_at.desc())
            )
            if row is None or row.status != "rejected":
                raise Invalid(
                    "only a declined referral can be sent on to another hospital",
                    expression=[f"ServiceRequest.replaces[{i}]"],
                    rule="referral-forward-declined-only",
                )
        if previous is not None:
            sent = session.scalar(
                select(Referral.status).where(
                    Referral.service_request_id == sr["id"], Referral.status != "draft"
                )
            )
            if sent is not None:
                raise Conflict(
                    "this referral has been sent and cannot be changed; send a new one that "
                    "replaces it",
                    rule="referral-sent-unchanged",
                )
        return []

    def _visible_record(
        self, ctx: WriteContext, actor: Acting, reference: object, where: str
    ) -> Version:
        """A referenced record the actor can see (404 otherwise, as if it did not exist)."""
        ref = reference.get("reference") if isinstance(reference, dict) else None
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 2 or parts[0] not in ctx.store.registry:
            raise Invalid(f"{where} must reference a record on this server", expression=[where])
        visible = visibility(actor, ctx.store.registry.get)
        return ctx.store.read(parts[0], parts[1], session=ctx.session, visible=visible)

    def _shared_record(
        self, ctx: WriteContext, actor: Acting, reference: object, where: str
    ) -> Version:
        """A referenced record the actor's hospital may share: one it can see (404 otherwise)
        that it keeps or whose patient it keeps, not one it sees only through a referral
        (alliance.security.access.shareable: no re-sharing)."""
        found = self._visible_record(ctx, actor, reference, where)
        pair = (found.resource_type, found.id)
        if not shareable(ctx.session, actor.hospital_id, [pair]):
            raise Invalid(
                f"{found.resource_type}/{found.id} is a record another hospital shared with "
                "yours; only the hospital that keeps it (or keeps the patient) can share it",
                expression=[where],
                rule="record-not-yours-to-share",
            )
        return found

    def check_shared(self, ctx: WriteContext, references: list[tuple[str, object]]) -> None:
        """Every record a write lists to share ((where, reference) pairs) is one the writer
        may share; see `_shared_record`."""
        if ctx.actor is None:
            return
        for where, reference in references:
            self._shared_record(ctx, ctx.actor, reference, where)

    def _based_on_up_referral(
        self, ctx: WriteContext, actor: Acting, sr: Resource, patient_id: str
    ) -> Resource:
        ups = [reference_id(b, "ServiceRequest") for b in sr.get("basedOn") or []]
        ups = [u for u in ups if u]
        if not ups:
            raise Invalid(
                "a down-referral is basedOn the up-referral it answers",
                expression=["ServiceRequest.basedOn"],
                rule="down-referral-answers-up",
            )
        up = self._visible_record(
            ctx, actor, {"reference": f"ServiceRequest/{ups[0]}"}, "ServiceRequest.basedOn"
        ).resource()
        if category_of(up) != "up-referral" or reference_id(up.get("subject"), "Patient") != (
            patient_id
        ):
            raise Invalid(
                "a down-referral answers an up-referral of the same patient",
                expression=["ServiceRequest.basedOn"],
                rule="down-referral-answers-up",
            )
        return up

    # ---- Task -----------------------------------------------------------------------------

    def prepare_task(self, ctx: WriteContext, task: Resource, previous: Resource | None) -> None:
        stamp_keeper(ctx, task, previous)
        now = instant(clock.now())
        task["authoredOn"] = (previous or {}).get("authoredOn") or now
        task["lastModified"] = now
        task.pop("businessStatus", None)  # derived when served (overdue)
        if previous is not None and "restriction" in previous:
            task["restriction"] = previous["restriction"]
        else:
            task.pop("restriction", None)

    def check_task(
        self, ctx: WriteContext, task: Resource, previous: Resource | None
    ) -> list[Issue]:
        session = ctx.session
        sr_id = reference_id(task.get("focus"), "ServiceRequest")
        if sr_id is None:
            raise Invalid(
                "a referral Task's focus is its ServiceRequest", expression=["Task.focus"]
            )
        if ctx.actor is not None and previous is None:
            # Who creates a Task must see its request; who moves one needs only see the Task.
            sr = self._visible_record(
                ctx, ctx.actor, {"reference": f"ServiceRequest/{sr_id}"}, "Task.focus"
            ).resource()
        else:
            sr = ctx.store.read("ServiceRequest", sr_id, session=session).resource()
        patient_id = reference_id(sr.get("subject"), "Patient")
        if reference_id(task.get("for"), "Patient") != patient_id:
            raise Invalid("Task.for is the ServiceRequest's subject", expression=["Task.for"])
        owner = target_hospital(session, sr)
        if reference_id(task.get("owner"), "Organization") != owner:
            raise Invalid(
                f"Task.owner is the hospital the referral asks: Organization/{owner}",
                expression=["Task.owner"],
            )
        placer = keeper_of(task)
        if placer != keeper_of(sr):
            raise Invalid("a referral's Task is kept by the hospital that made the request")
        if task.get("intent") != "order":
            raise Invalid("a referral Task's intent is order", expression=["Task.intent"])
        target = task.get("status")
        if previous is None:
            if target not in ("draft", "requested"):
                raise Invalid("a referral starts as draft or requested", expression=["Task.status"])
            open_task = session.scalar(
                select(Referral.task_id).where(
                    Referral.service_request_id == sr_id, Referral.status.not_in(FINAL_STATES)
                )
            )
            if open_task is not None:
                raise Conflict(
                    f"ServiceRequest/{sr_id} already has an open Task/{open_task}",
                    rule="referral-open-task",
                )
            row = Referral(
                task_id=task["id"],
                service_request_id=sr_id,
                patient_id=patient_id or "",
                category=category_of(sr) or "",
                placer_org=placer or "",
                owner_org=owner,
                priority=task.get("priority") or sr.get("priority") or "routine",
                status="draft",
                created_at=clock.now(),
            )
            session.add(row)
            session.flush()
            if target == "requested":
                self._move(ctx, row, task, sr, "requested")
            return []
        current = session.get(Referral, task["id"], with_for_update=True)
        if current is None:
            raise NotFound(f"Task/{task['id']} is not a referral")
        row = current
        for key in ("focus", "for", "owner", "requester", "intent"):
            if task.get(key) != previous.get(key):
                raise Invalid(
                    f"Task.{key} does not change; a referral to another hospital is a new "
                    "ServiceRequest that replaces this one",
                    expression=[f"Task.{key}"],
                    rule="referral-target-fixed",
                )
        if target == row.status:
            # A move is a compare-and-set on the current state: a second `accepted` sent
            # after the first won (two specialists at once) is not a no-op success. A draft,
            # not yet sent, may be saved again.
            resent = row.status != "draft" and _notes(task) == _notes(previous)
            if _workflow_view(task) != _workflow_view(previous) or resent:
                raise Conflict(
                    f"the referral is already {row.status}; only output and notes change "
                    "without a move",
                    rule="referral-already-moved",
                )
            return []
        self._move(ctx, row, task, sr, str(target))
        return []

    def _party(self, actor: Acting | None, row: Referral) -> str | None:
        if actor is None:
            return None
        if actor.hospital_id == row.placer_org:
            return "placer"
        if actor.hospital_id == row.owner_org:
            return "owner"
        return None

    def _move(
        self, ctx: WriteContext, row: Referral, task: Resource, sr: Resource, target: str
    ) -> None:
        move = check_move(row.status, target, self._party(ctx.actor, row), row.held_from)
        now = clock.now()
        if "reason" in move.needs:
            reason = task.get("statusReason") or {}
            text = str(
                reason.get("text")
                or next((c.get("display") or c.get("code") for c in reason.get("coding") or []), "")
                or ""
            ).strip()
            if not text:
                raise Invalid(
                    f"moving a referral to {target} needs a reason (Task.statusReason)",
                    expression=["Task.statusReason"],
                    rule="referral-move-reason",
                )
            row.status_reason = text[:255]
            row.status_reason_code = next(
                (
                    c.get("code")
                    for c in reason.get("coding") or []
                    if c.get("system") == DECLINE_REASON
                ),
                None,
            )
        if "consent" in move.needs:
            self._check_send(ctx, sr, row)
        if "output" in move.needs:
            self._check_output(ctx, task, row)
        if target == "on-hold":
            row.held_from = row.status
        elif row.status == "on-hold":
            row.held_from = None
        row.status = target
        if target == "requested":
            row.requested_at = now
            hours = self.settings.deadline_hours.get(row.priority, 48)
            row.deadline = now + timedelta(hours=hours)
            task["restriction"] = {"period": {"end": instant(row.deadline)}}
        elif target == "received":
            row.received_at = now
        elif target == "accepted":
            row.accepted_at = now
        elif target == "rejected":
            row.rejected_at = now
        elif target == "completed":
            row.completed_at = now
        if target in FINAL_STATES:
            row.ended_at = now

    def _check_send(self, ctx: WriteContext, sr: Resource, row: Referral) -> None:
        """Before data leaves: the patient's consent naming the receiving hospital (PIPL art.
        23; 2014 teleconsult opinions). A down-referral home to the hospital that keeps the
        patient's record needs none: nothing leaves for a new recipient."""
        session = ctx.session
        home = session.scalar(
            select(ResourceRow.organization_id).where(
                ResourceRow.resource_type == "Patient", ResourceRow.id == row.patient_id
            )
        )
        if row.category == "down-referral":
            kinds = {_document_type(ctx, info) for info in sr.get("supportingInfo") or []}
            if DISCHARGE_SUMMARY not in kinds or "CarePlan" not in kinds:
                raise Invalid(
                    "a down-referral carries a discharge summary (DocumentReference of type "
                    f"LOINC {DISCHARGE_SUMMARY}) and a follow-up plan (CarePlan) in supportingInfo",
                    expression=["ServiceRequest.supportingInfo"],
                    rule="down-referral-documents",
                )
        if home == row.owner_org:
            return
        if not active_consents(ctx.store, session, row.patient_id, row.owner_org):
            raise Invalid(
                f"no active consent of the patient names Organization/{row.owner_org} as a "
                "recipient; record the patient's signed consent first",
                expression=["Consent"],
                rule="referral-needs-consent",
            )

    def _check_output(self, ctx: WriteContext, task: Resource, row: Referral) -> None:
        outputs = [
            doc
            for o in task.get("output") or []
            if (doc := reference_id(o.get("valueReference"), "DocumentReference")) is not None
        ]
        if not outputs:
            raise Invalid(
                "completing a referral needs its outcome document in Task.output "
                "(valueReference to a DocumentReference)",
                expression=["Task.output"],
                rule="referral-complete-outcome",
            )
        for doc_id in outputs:
            found = ctx.store.read("DocumentReference", doc_id, session=ctx.session)
            if found.patient_id != row.patient_id:
                raise Invalid(
                    "the outcome document is about another patient", rule="referral-other-patient"
                )

    def after_task(self, ctx: WriteContext, version: Version, previous: Resource | None) -> None:
        task = version.resource()
        before = (previous or {}).get("status")
        after = task["status"]
        if previous is not None and before == after:
            return
        row = ctx.session.get(Referral, version.id)
        assert row is not None
        move = "create" if previous is None else f"{before}-{after}"
        record_provenance(ctx, version, move, row.patient_id)
        self._notify(ctx, row, task, before, after)
        if previous is None and after == "draft":
            return
        reason = f"ServiceRequest/{row.service_request_id}"
        actor = actor_of(ctx.actor)
        # What the referral opens, it opens to the hospital asked, as the sending hospital's
        # share, under the request's name (so it closes and ends with it).
        open_to_owner = partial(
            open_grant,
            session=ctx.session,
            patient_id=row.patient_id,
            hospital_id=row.owner_org,
            reason=reason,
            actor=actor,
            shared_by=row.placer_org,
        )
        if after == "requested" and before in (None, "draft"):
            # The hospital asked sees the Task (its worklist item) while the referral lasts
            # (like everything it opens, it closes on rejection or cancellation and ends after
            # completion); and, until it decides, what it needs to decide (triage: the
            # request, the patient's name, sex and birth date, previews of what it lists).
            # Declining closes the triage view; the records open in full on acceptance.
            open_to_owner(resources=[("Task", row.task_id)])
            open_to_owner(resources=self.triage_records(ctx, row), level=TRIAGE)
        elif after == "accepted":
            open_to_owner(resources=self.shared_records(ctx, row))
        elif after in ("rejected", "cancelled"):
            close_grants(session=ctx.session, reason=reason, why=f"referral {after}", actor=actor)
        elif after in ("completed", "failed"):
            until = clock.now() + timedelta(days=self.settings.grant_days_after_completion)
            end_grants(session=ctx.session, reason=reason, until=until, actor=actor)
        status = REQUEST_STATUS.get(after)
        if status is not None:
            sr = ctx.store.read("ServiceRequest", row.service_request_id, session=ctx.session)
            body = sr.resource()
            if body.get("status") != status:
                body["status"] = status
                ctx.store.update("ServiceRequest", sr.id, body, session=ctx.session, actor=None)

    def _notify(
        self, ctx: WriteContext, row: Referral, task: Resource, before: str | None, after: str
    ) -> None:
        """The referral's move as an event of the outbox (alliance.notify), in this write's
        transaction: it concerns both hospitals, the requesting doctor and the one who moved
        it."""
        kind = {
            "received": "referral-received",
            "accepted": "referral-accepted",
            "rejected": "referral-declined",
            "completed": "referral-completed",
        }.get(after)
        if after == "requested" and before in (None, "draft"):
            kind = "down-referral-arrived" if row.category == "down-referral" else "referral-sent"
        if kind is None:
            return
        people = [
            Recipient(
                row.placer_org, practitioner_id=reference_id(task.get("requester"), "Practitioner")
            )
        ]
        if ctx.actor is not None and ctx.actor.practitioner_id:
            people.append(
                Recipient(ctx.actor.hospital_id, practitioner_id=ctx.actor.practitioner_id)
            )
        record(
            ctx.session,
            kind,
            focus=("Task", row.task_id),
            recipients=[
                Recipient(row.owner_org),
                Recipient(row.placer_org),
                *(p for p in people if p.practitioner_id),
            ],
            patient_id=row.patient_id,
            task_id=row.task_id,
            actor=ctx.actor,
        )

    def triage_records(self, ctx: WriteContext, row: Referral) -> list[tuple[str, str]]:
        """What the hospital asked sees while it decides (at triage level, so the patient and
        what the request lists are served as subsets): the request, the patient, and what it
        lists in supportingInfo."""
        sr = ctx.store.read("ServiceRequest", row.service_request_id, session=ctx.session)
        shared = [("ServiceRequest", sr.id), ("Patient", row.patient_id)]
        for info in sr.resource().get("supportingInfo") or []:
            ref = info.get("reference", "")
            if ref.count("/") == 1:
                rtype, rid = ref.split("/")
                shared.append((rtype, rid))
        return shared + self.added_records(ctx, row)

    def added_records(self, ctx: WriteContext, row: Referral) -> list[tuple[str, str]]:
        """What the sending hospital added to the referral after sending it (images uploaded
        later, referral.commands.add_studies): the records its messages on the request carry."""
        found = ctx.store.search(
            "Communication",
            [("based-on", f"ServiceRequest/{row.service_request_id}")],
            session=ctx.session,
            default_count=1000,
            max_count=1000,
        )
        return [
            pair
            for v in found.matches
            if keeper_of(v.resource()) == row.placer_org
            for pair in carried(v.resource())
        ]

    def shared_records(self, ctx: WriteContext, row: Referral) -> list[tuple[str, str]]:
        """What acceptance (and a teleconsult's booking, teleconsult.service) opens: the
        request, what it lists in supportingInfo, the consents naming the receiving hospital,
        and the patient's demographics. Nothing else; and of these only what the sending
        hospital may share (alliance.security.service.open_grant)."""
        shared = self.triage_records(ctx, row)
        for consent in active_consents(ctx.store, ctx.session, row.patient_id, row.owner_org):
            shared.append(("Consent", consent.id))
        return shared

    def on_read_task(self, ctx: WriteContext, version: Version) -> Version:
        """The owner opening a requested referral receives it (Task status `received`)."""
        actor = ctx.actor
        row = ctx.session.get(Referral, version.id)
        if row is None or row.status != "requested":
            return version
        if actor is None or actor.hospital_id != row.owner_org:
            return version
        task = version.resource()
        task["status"] = "received"
        return ctx.store.update("Task", version.id, task, session=ctx.session, actor=actor).version

    def present_tasks(self, session: Session, versions: list[Version]) -> None:
        """An open referral past its deadline shows `overdue` in businessStatus."""
        now = clock.now()
        ids = [v.id for v in versions if v.content is not None]
        if not ids:
            return
        overdue = set(
            session.scalars(
                select(Referral.task_id).where(
                    Referral.task_id.in_(ids),
                    Referral.status.in_(AWAITING_DECISION),
                    Referral.deadline < now,
                )
            )
        )
        if overdue:
            # The computed `overdue` is one trigger of the escalation; the worker's scheduler
            # is the other (issue 14.5). Recording it writes: a read-only unit of work is run
            # again as a write (alliance.security.guard), once per overdue referral.
            record_overdue(session, task_ids=sorted(overdue))
        for v in versions:
            if v.id in overdue:
                task = v.resource()
                task["businessStatus"] = {
                    "coding": [
                        {"system": TASK_BUSINESS_STATUS, "code": "overdue", "display": "已超时"}
                    ],
                    "text": "overdue",
                }
                v.content = _dumps(task)

    def overdue_condition(self, value: str) -> ColumnElement[bool]:
        """`Task?overdue=true`: awaiting a decision past the deadline, computed at query time."""
        if value not in ("true", "false"):
            raise BadRequest("overdue is true or false")
        late = select(Referral.task_id).where(
            Referral.status.in_(AWAITING_DECISION), Referral.deadline < clock.now()
        )
        cond = ResourceRow.id.in_(late)
        return cond if value == "true" else ~cond

    # ---- Communication ------------------------------------------------------------------------

    def prepare_record(
        self, ctx: WriteContext, resource: Resource, previous: Resource | None
    ) -> None:
        stamp_keeper(ctx, resource, previous)

    def check_communication(
        self, ctx: WriteContext, message: Resource, previous: Resource | None
    ) -> list[Issue]:
        """A message between the two doctors of a referral; only they (their hospitals) see it."""
        if ctx.actor is None:
            return []
        sr_id = next(
            (reference_id(b, "ServiceRequest") for b in message.get("basedOn") or []), None
        )
        if sr_id is None:
            raise Invalid(
                "a message is basedOn the referral's ServiceRequest",
                expression=["Communication.basedOn"],
            )
        basis = {"reference": f"ServiceRequest/{sr_id}"}
        self._visible_record(ctx, ctx.actor, basis, "Communication.basedOn")
        row = ctx.session.scalar(
            select(Referral)
            .where(Referral.service_request_id == sr_id)
            .order_by(Referral.created_at.desc())
        )
        if row is None or self._party(ctx.actor, row) is None:
            raise Invalid(
                "messages are exchanged between the two hospitals of a referral",
                rule="message-parties",
            )
        if previous is None and carried(message) and row.status not in SENT_OPEN:
            raise Invalid(
                f"the referral is {row.status}: records are added to a referral once it is sent "
                "and while it is open",
                expression=["Communication.payload"],
                rule="referral-records-closed",
            )
        if previous is None and row.status in ("rejected", "cancelled"):
            raise Invalid(
                f"the referral is {row.status}: its messages ended with it",
                expression=["Communication.basedOn"],
                rule="message-referral-closed",
            )
        for i, p in enumerate(message.get("payload") or []):
            if not isinstance(p, dict) or "contentReference" not in p:
                continue
            where = f"Communication.payload[{i}].contentReference"
            found = self._shared_record(ctx, ctx.actor, p["contentReference"], where)
            if found.patient_id not in (None, row.patient_id):
                raise Invalid(
                    f"{found.resource_type}/{found.id} is about another patient",
                    expression=[where],
                    rule="referral-other-patient",
                )
        return []

    def after_communication(
        self, ctx: WriteContext, version: Version, previous: Resource | None
    ) -> None:
        if previous is not None:
            return
        message = version.resource()
        sr_id = next(reference_id(b, "ServiceRequest") for b in message.get("basedOn") or [])
        row = ctx.session.scalar(
            select(Referral)
            .where(Referral.service_request_id == sr_id)
            .order_by(Referral.created_at.desc())
        )
        assert row is not None
        other = row.owner_org if keeper_of(message) == row.placer_org else row.placer_org
        # After completion a message stays open as long as the referral's other records.
        until = None
        if row.ended_at is not None:
            until = row.ended_at + timedelta(days=self.settings.grant_days_after_completion)
        open_grant(
            session=ctx.session,
            patient_id=row.patient_id,
            hospital_id=other,
            reason=f"ServiceRequest/{sr_id}",
            resources=[("Communication", version.id)],
            actor=actor_of(ctx.actor),
            shared_by=keeper_of(message),
            valid_until=until,
        )
        if carried(message):
            # Records a message carries join what the referral shares, at the level it shares
            # now: for triage while the hospital asked decides (acceptance opens them in full,
            # `added_records`), in full after; they close and end with the referral.
            deciding = other == row.owner_org and row.status in AWAITING_DECISION
            open_grant(
                session=ctx.session,
                patient_id=row.patient_id,
                hospital_id=other,
                reason=f"ServiceRequest/{sr_id}",
                resources=carried(message),
                actor=actor_of(ctx.actor),
                shared_by=keeper_of(message),
                valid_until=until,
                level=TRIAGE if deciding else FULL,
            )
        record(
            ctx.session,
            "message-posted",
            focus=("Communication", version.id),
            recipients=[Recipient(other)],
            patient_id=row.patient_id,
            task_id=row.task_id,
            actor=ctx.actor,
        )


# ---- escalation -------------------------------------------------------------------------------

#: Priorities whose deadline is escalated when missed (FHIR R4 request-priority: all but routine).
URGENT = ("urgent", "asap", "stat")


def record_overdue(session: Session, *, task_ids: Sequence[str] | None = None) -> int:
    """Escalate the urgent referrals whose owner has not decided by the deadline: one
    `referral-overdue` event each, for the asked hospital's administrators and the requesting
    hospital (issue 14.5). Raised by whoever notices first (the worker's scheduler, or a read
    that computes `overdue`); its key makes it once per referral. Returns how many were
    recorded."""
    late = select(Referral).where(
        Referral.status.in_(AWAITING_DECISION),
        Referral.priority.in_(URGENT),
        Referral.deadline < clock.now(),
        ~exists().where(Event.kind == "referral-overdue", Event.focus_id == Referral.task_id),
    )
    if task_ids is not None:
        late = late.where(Referral.task_id.in_(list(task_ids)))
    recorded = 0
    for row in session.scalars(late.order_by(Referral.deadline).limit(500)).all():
        event = record(
            session,
            "referral-overdue",
            focus=("Task", row.task_id),
            recipients=[Recipient(row.owner_org, capability=ADMINISTER), Recipient(row.placer_org)],
            patient_id=row.patient_id,
            task_id=row.task_id,
            key=f"referral-overdue:{row.task_id}",
        )
        recorded += event is not None
    return recorded


# ---- helpers ----------------------------------------------------------------------------------


def carried(message: Resource) -> list[tuple[str, str]]:
    """The records a message carries (FHIR R4 Communication.payload.contentReference), as
    (type, id)."""
    pairs = []
    for p in message.get("payload") or []:
        ref = (p.get("contentReference") or {}).get("reference", "") if isinstance(p, dict) else ""
        if isinstance(ref, str) and ref.count("/") == 1:
            rtype, rid = ref.split("/")
            pairs.append((rtype, rid))
    return pairs


def category_of(sr: Resource) -> str | None:
    for concept in sr.get("category") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") == REQUEST_CATEGORY and coding.get("code") in CATEGORIES:
                return str(coding["code"])
    return None


def target_hospital(session: Session, sr: Resource) -> str:
    """The alliance hospital a request asks (a department performer counts as its hospital)."""
    for performer in sr.get("performer") or []:
        org = reference_id(performer, "Organization")
        if org is None:
            continue
        row = session.get(ResourceRow, ("Organization", org))
        if row is None or row.deleted:
            break
        return row.organization_id or org
    raise Invalid(
        "the performer must be a hospital (or a department of one) of the alliance",
        expression=["ServiceRequest.performer"],
        rule="referral-performer",
    )


def check_codes(concepts: Iterable[Resource], where: str) -> None:
    """Every code carries its system, and its version where the system has versions."""
    for i, concept in enumerate(concepts):
        for j, coding in enumerate(concept.get("coding") or []):
            path = f"{where}[{i}].coding[{j}]"
            if not coding.get("system"):
                raise Invalid(
                    "every code carries its system",
                    expression=[f"{path}.system"],
                    rule="code-system",
                )
            if coding["system"] in VERSIONED_SYSTEMS and not coding.get("version"):
                raise Invalid(
                    f"codes of {coding['system']} carry the version of the code system "
                    "(ICD-10 国家临床版 '2.0', TCM '2020')",
                    expression=[f"{path}.version"],
                    rule="code-version",
                )


def active_consents(
    store: Store, session: Session, patient_id: str, recipient: str
) -> list[Version]:
    """The patient's consents in force that name `recipient` as a recipient."""
    found = store.search(
        "Consent",
        [
            ("patient", f"Patient/{patient_id}"),
            ("status", "active"),
            ("actor", f"Organization/{recipient}"),
            ("_count", "50"),
        ],
        session=session,
        default_count=50,
        max_count=50,
    )
    now = clock.now()
    return [c for c in found.matches if _in_force(c.resource(), now)]


def _in_force(consent: Resource, now: datetime) -> bool:
    period = (consent.get("provision") or {}).get("period") or {}
    if period.get("start") and date_range(period["start"])[0] > now:
        return False
    return not (period.get("end") and date_range(period["end"])[1] <= now)


def _document_type(ctx: WriteContext, info: Resource) -> str | None:
    ref = info.get("reference", "") if isinstance(info, dict) else ""
    if ref.startswith("CarePlan/"):
        return "CarePlan"
    if not ref.startswith("DocumentReference/"):
        return None
    doc = ctx.store.read("DocumentReference", ref.split("/")[1], session=ctx.session).resource()
    for coding in (doc.get("type") or {}).get("coding") or []:
        if coding.get("system") == LOINC:
            return str(coding.get("code"))
    return None


def _notes(task: Resource) -> tuple[object, object]:
    return task.get("output"), task.get("note")


def _workflow_view(task: Resource) -> Resource:
    """A Task without what may change without a move (output, notes, server-kept fields)."""
    ignored = {"meta", "output", "note", "lastModified", "businessStatus", "text"}
    return {k: v for k, v in task.items() if k not in ignored}


def record_provenance(ctx: WriteContext, version: Version, move: str, patient_id: str) -> None:
    """Who made this move of the referral, when, for which hospital (FHIR R4 provenance.html)."""
    actor = ctx.actor
    hospital = actor.hospital_id if actor is not None else keeper_of(version.resource())
    agent: Resource = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author",
                }
            ]
        },
        "who": (
            {"reference": f"Practitioner/{actor.practitioner_id}", "display": actor.username}
            if actor is not None and actor.practitioner_id
            else {"display": actor.username if actor is not None else "alliance server"}
        ),
        "onBehalfOf": {"reference": f"Organization/{hospital}"},
    }
    provenance = {
        "resourceType": "Provenance",
        "extension": [
            {"url": RECORD_KEEPER, "valueReference": {"reference": f"Organization/{hospital}"}},
            {"url": RECORD_PATIENT, "valueReference": {"reference": f"Patient/{patient_id}"}},
        ],
        "target": [{"reference": f"Task/{version.id}/_history/{version.version}"}],
        "recorded": instant(version.last_updated),
        "activity": {
            "coding": [{"system": WORKFLOW_MOVE, "code": move}],
            "text": move.replace("-", " → ") if move != "create" else "created",
        },
        "agent": [agent],
    }
    ctx.store.create("Provenance", provenance, session=ctx.session, resource_id=str(uuid.uuid4()))


def _dumps(resource: Resource) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
