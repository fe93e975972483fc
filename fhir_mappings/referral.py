"""The FHIR face of two-way referral: Consent, ServiceRequest, Task, DocumentReference,
CarePlan, Communication and Provenance (FHIR R4; workflow per task.html and the referral
state machine in referral.workflow)."""

from __future__ import annotations

from collections.abc import Callable

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from sqlalchemy import ColumnElement

from alliance.attachments.service import ATTACHMENT_PARAM
from alliance.config import Settings
from alliance.errors import Issue
from alliance.fhir.models import ResourceRow
from alliance.fhir.registry import (
    ALL_INTERACTIONS,
    Resource,
    ResourceDefinition,
    SearchParam,
    WriteContext,
)
from alliance.records import keeper_of, record_patient_of, reference_id
from referral.documents import check_consent, check_document
from referral.service import ReferralRules

#: Clinical records are never deleted (DOMAIN.md "Records"): they are amended or cancelled.
NO_DELETE = ALL_INTERACTIONS - {"delete"}
READ_ONLY = frozenset({"read", "vread", "history-instance", "search-type"})


def _subject(path: str) -> Callable[[Resource], str | None]:
    def patient_of(resource: Resource) -> str | None:
        return reference_id(resource.get(path), "Patient")

    return patient_of


def _kept_by(value: str) -> ColumnElement[bool]:
    return ResourceRow.organization_id == value.removeprefix("Organization/")


def _task_writers(task: Resource) -> set[str | None]:
    """Both hospitals of a referral move its Task: the one that sent it, the one asked."""
    return {keeper_of(task), reference_id(task.get("owner"), "Organization")}


def definitions(settings: Settings, rules: ReferralRules) -> list[ResourceDefinition]:
    base = settings.base_url

    def consent_hook(ctx: WriteContext, consent: Resource, _prev: Resource | None) -> list[Issue]:
        check_consent(ctx, consent, base)
        # The records a consent names to share are records its hospital may share.
        data = (consent.get("provision") or {}).get("data") or []
        rules.check_shared(
            ctx,
            [
                (f"Consent.provision.data[{i}].reference", d.get("reference"))
                for i, d in enumerate(data)
                if isinstance(d, dict)
            ],
        )
        return []

    def document_hook(ctx: WriteContext, doc: Resource, _prev: Resource | None) -> list[Issue]:
        check_document(ctx, doc, base)
        return []

    patient = SearchParam("patient", "reference", "subject", "The patient", ("Patient",))
    subject = SearchParam("subject", "reference", "subject", "The patient", ("Patient",))
    return [
        ResourceDefinition(
            "Consent",
            Consent,
            [
                SearchParam("patient", "reference", "patient", "The patient", ("Patient",)),
                SearchParam("status", "token", "status", "draft, active, inactive, ..."),
                SearchParam(
                    "actor",
                    "reference",
                    "provision.actor.reference",
                    "A hospital the records may be shared with",
                    ("Organization",),
                ),
                SearchParam("purpose", "token", "provision.purpose", "Why they may be shared"),
                SearchParam("period", "date", "provision.period", "When the consent is in force"),
                SearchParam("date", "date", "dateTime", "When it was given"),
                SearchParam(
                    ATTACHMENT_PARAM, "token", "sourceAttachment.url", "The signed form's URL"
                ),
            ],
            "The patient's written consent to share named records with a named hospital for a "
            "named purpose, with the signed form attached. Withdraw it by setting status "
            "inactive; it is never deleted.",
            interactions=NO_DELETE,
            prepare=rules.prepare_record,
            on_write=consent_hook,
            patient_of=_subject("patient"),
            organization_of=keeper_of,
        ),
        ResourceDefinition(
            "ServiceRequest",
            ServiceRequest,
            [
                patient,
                subject,
                SearchParam(
                    "category", "token", "category", "up-referral, down-referral, teleconsult"
                ),
                SearchParam("status", "token", "status", "draft, active, completed, revoked"),
                SearchParam("priority", "token", "priority", "routine, urgent, asap, stat"),
                SearchParam(
                    "requester",
                    "reference",
                    "requester",
                    "Who asks",
                    ("PractitionerRole", "Practitioner"),
                ),
                SearchParam(
                    "performer",
                    "reference",
                    "performer",
                    "The hospital or department asked",
                    ("Organization", "PractitionerRole", "Practitioner"),
                ),
                SearchParam("authored", "date", "authoredOn", "When it was written"),
                SearchParam(
                    "based-on",
                    "reference",
                    "basedOn",
                    "The up-referral a down-referral answers",
                    ("ServiceRequest",),
                ),
                SearchParam(
                    "replaces",
                    "reference",
                    "replaces",
                    "The declined referral this sends on",
                    ("ServiceRequest",),
                ),
                SearchParam(
                    "reason-code", "token", "reasonCode", "Diagnosis (ICD-10 国家临床版2.0)"
                ),
                SearchParam(
                    "supporting-info",
                    "reference",
                    "supportingInfo",
                    "Documents and studies shared",
                ),
            ],
            "A referral up (county to city) or down (city to county), or a teleconsult request: "
            "what is asked, of which hospital, why (coded, with system and version), with the "
            "documents and imaging it shares. Its workflow is its Task.",
            interactions=NO_DELETE,
            prepare=rules.prepare_request,
            on_write=rules.check_request,
            patient_of=_subject("subject"),
            organization_of=keeper_of,
        ),
        ResourceDefinition(
            "Task",
            Task,
            [
                SearchParam("owner", "reference", "owner", "The hospital asked", ("Organization",)),
                SearchParam(
                    "requester",
                    "reference",
                    "requester",
                    "Who asked",
                    ("PractitionerRole", "Practitioner", "Organization"),
                ),
                SearchParam("status", "token", "status", "draft, requested, received, ..."),
                SearchParam("priority", "token", "priority", "routine, urgent, asap, stat"),
                SearchParam("patient", "reference", "for", "The patient", ("Patient",)),
                SearchParam(
                    "focus", "reference", "focus", "The ServiceRequest", ("ServiceRequest",)
                ),
                SearchParam("authored-on", "date", "authoredOn", "When it was created"),
                SearchParam("modified", "date", "lastModified", "When it last moved"),
                SearchParam(
                    "deadline",
                    "date",
                    "restriction.period.end",
                    "When the owner must accept or decline by (sort by it: overdue first)",
                ),
                SearchParam(
                    "placer",
                    "reference",
                    "extension",
                    "The hospital that sent it (which keeps the Task)",
                    ("Organization",),
                    condition=_kept_by,
                ),
                SearchParam(
                    "overdue",
                    "token",
                    "businessStatus",
                    "true: awaiting a decision past its deadline (computed when searched)",
                    condition=rules.overdue_condition,
                ),
            ],
            "The workflow of a referral, enforced by the server: draft → requested → received "
            "→ accepted | rejected → in-progress → completed | failed; cancelled by the sender; "
            "on-hold and back. An illegal move answers 409 naming the allowed moves; a move by "
            "the wrong hospital 403. Every move is recorded as a Provenance.",
            interactions=NO_DELETE,
            prepare=rules.prepare_task,
            on_write=rules.check_task,
            after_write=[rules.after_task],
            on_read=rules.on_read_task,
            present=rules.present_tasks,
            patient_of=_subject("for"),
            organization_of=keeper_of,
            writers=_task_writers,
            versioned_updates=True,
        ),
        ResourceDefinition(
            "DocumentReference",
            DocumentReference,
            [
                patient,
                subject,
                SearchParam("type", "token", "type", "Kind of document (LOINC)"),
                SearchParam("category", "token", "category", "Category"),
                SearchParam("date", "date", "date", "When it was written"),
                SearchParam("status", "token", "status", "current, superseded"),
                SearchParam("author", "reference", "author", "Who wrote it"),
                SearchParam(
                    "relatesto",
                    "reference",
                    "relatesTo.target",
                    "A document it amends",
                    ("DocumentReference",),
                ),
                SearchParam(
                    ATTACHMENT_PARAM, "token", "content.attachment.url", "An attachment's URL"
                ),
            ],
            "Clinical summaries, lab reports, discharge summaries, consult opinions: the file is "
            "uploaded to /api/attachments first (size-limited, type-checked, SHA-256 recorded).",
            interactions=NO_DELETE,
            prepare=rules.prepare_record,
            on_write=document_hook,
            patient_of=_subject("subject"),
            organization_of=keeper_of,
        ),
        ResourceDefinition(
            "CarePlan",
            CarePlan,
            [
                patient,
                subject,
                SearchParam("status", "token", "status", "draft, active, completed, ..."),
                SearchParam("category", "token", "category", "Kind of plan"),
                SearchParam("date", "date", "period", "When the plan is in force"),
            ],
            "A follow-up / rehabilitation plan sent down with a down-referral: follow-up "
            "visits, medication, rehabilitation.",
            interactions=NO_DELETE,
            prepare=rules.prepare_record,
            patient_of=_subject("subject"),
            organization_of=keeper_of,
        ),
        ResourceDefinition(
            "Communication",
            Communication,
            [
                patient,
                subject,
                SearchParam(
                    "based-on",
                    "reference",
                    "basedOn",
                    "The referral it is about",
                    ("ServiceRequest",),
                ),
                SearchParam("sent", "date", "sent", "When it was sent"),
                SearchParam("sender", "reference", "sender", "Who sent it"),
                SearchParam("recipient", "reference", "recipient", "Who it is for"),
                SearchParam(
                    ATTACHMENT_PARAM, "token", "payload.contentAttachment.url", "An attachment"
                ),
            ],
            "Messages between the two doctors of a referral; visible to the two hospitals only.",
            interactions=NO_DELETE,
            prepare=rules.prepare_record,
            on_write=rules.check_communication,
            after_write=[rules.after_communication],
            patient_of=_subject("subject"),
            organization_of=keeper_of,
        ),
        ResourceDefinition(
            "Provenance",
            Provenance,
            [
                SearchParam("target", "reference", "target", "The record version it is about"),
                SearchParam("recorded", "date", "recorded", "When"),
                SearchParam("agent", "reference", "agent.who", "Who"),
                SearchParam("activity", "token", "activity", "Which move"),
            ],
            "Who made each move of a referral, when, and for which hospital. Written by the "
            "server only.",
            interactions=READ_ONLY,
            patient_of=record_patient_of,
            organization_of=keeper_of,
        ),
    ]
