"""The consult opinion: a DiagnosticReport (FHIR R4 diagnosticreport.html) the specialist drafts
(status preliminary) and signs (final).

Signing is an update to `final` by the specialist of the consult. In the same transaction the
server renders the opinion as HTML (kept in the blob store, attached as presentedForm and as a
DocumentReference), records a Provenance whose `signature` binds the signer to the SHA-256 of
exactly the version signed (FHIR R4 provenance.html, Signature datatype), files the
DocumentReference and the report in the consult Task's output, and completes the consult.

A signed opinion never changes (DOMAIN.md "Records"): any update of a final report answers
409, except an amendment: an update with status `amended`, the reason, signed again by the
specialist; the server links it to the version it replaces, and both versions stay readable
(vread), as do both renderings (the new DocumentReference `replaces` the old, which becomes
superseded).

The signature is an electronic signature attested by the server: a JWS (RFC 7515, EdDSA with
the server's Ed25519 signature key named by `kid`, alliance.security.signing) over the signer,
the time and the SHA-256 of the signed version's JSON. Anyone verifies it with the public key
(`verify_signature`, or the JWK Set at /auth/jwks.json); public keys are kept for good, so
rotating keys never makes an old opinion unverifiable. A signature backed by a certification
authority (电子签名法 art. 13) would replace `_attest` and keep the same shape.
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.attachments.models import Attachment
from alliance.attachments.service import ATTACHMENT_PARAM, fhir_attachment
from alliance.codes import ALLIANCE_BASE, RECORD_KEEPER, RECORD_PATIENT, RESIDENT_ID
from alliance.config import Settings
from alliance.errors import Conflict, Forbidden, Invalid, NotFound
from alliance.fhir.models import ResourceRow
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.store import Version
from alliance.fhir.values import instant
from alliance.notify.outbox import Recipient, record
from alliance.records import keeper_of, reference_id, stamp_keeper
from alliance.security import signing
from alliance.storage import BlobStore, open_blob_store
from referral.models import Referral
from referral.service import category_of, check_codes
from teleconsult.common import acting, ext, read_visible, refuse
from teleconsult.letter import LetterFacts, opinion_letter
from teleconsult.models import Booking
from teleconsult.time import format_for_site

LOINC = "http://loinc.org"
CONSULT_NOTE = "11488-4"
#: Why an amendment was made (R4 DiagnosticReport has no element for it).
AMENDMENT_REASON = f"{ALLIANCE_BASE}/StructureDefinition/amendment-reason"
#: The signed version an amendment replaces: `DiagnosticReport/{id}/_history/{n}`.
REPLACES = f"{ALLIANCE_BASE}/StructureDefinition/replaces"
#: ASTM E1762-95 signature types (FHIR R4 valueset-signature-type): author's signature.
SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
AUTHOR_SIGNATURE = "1.2.840.10065.1.12.1.1"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
_CONSULT_NOTE_CODING = {"system": LOINC, "code": CONSULT_NOTE, "display": "Consult note"}
DRAFT = ("registered", "partial", "preliminary")
SIGNED = ("final", "amended")


def content_digest(content: str) -> str:
    """The SHA-256 (hex) of a stored version's JSON text, which is what a signature covers."""
    return hashlib.sha256(content.encode()).hexdigest()


def verify_signature(session: Session, provenance: Resource, content: str) -> bool:
    """Whether the Provenance's signature is the server's over exactly `content`."""
    for signature in provenance.get("signature") or []:
        try:
            token = base64.b64decode(signature.get("data", "")).decode()
            claims = signing.verify(session, token)
        except (ValueError, Invalid):
            return False
        return bool(claims.get("sha256") == content_digest(content))
    return False


class OpinionRules:
    """The DiagnosticReport's hooks. The blob store is opened on the first signature."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._blobs: BlobStore | None = None

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = open_blob_store(self.settings.storage_url)
        return self._blobs

    def prepare(self, ctx: WriteContext, report: Resource, previous: Resource | None) -> None:
        stamp_keeper(ctx, report, previous)
        if not report.get("code"):
            report["code"] = {"coding": [_CONSULT_NOTE_CODING], "text": "远程会诊意见"}
        for url in (REPLACES,):
            report["extension"] = [e for e in report.get("extension") or [] if e.get("url") != url]
            if not report["extension"]:
                report.pop("extension")
        # The rendering is the server's, made when the opinion is signed.
        report.pop("presentedForm", None)

    def check(self, ctx: WriteContext, report: Resource, previous: Resource | None) -> list[Any]:
        """Drafts by the consult's hospital; signing and amending by its specialist."""
        session = ctx.session
        sr_ids = [
            s for b in report.get("basedOn") or [] if (s := reference_id(b, "ServiceRequest"))
        ]
        if len(sr_ids) != 1:
            refuse(
                Invalid,
                "opinion-request",
                "a consult opinion is basedOn its teleconsult ServiceRequest",
                "DiagnosticReport.basedOn",
            )
        sr = read_visible(ctx, "ServiceRequest", sr_ids[0])
        request = sr.resource()
        if category_of(request) != "teleconsult":
            refuse(Invalid, "opinion-request", f"ServiceRequest/{sr.id} is not a teleconsult")
        row = session.scalar(
            select(Referral)
            .where(Referral.service_request_id == sr.id)
            .order_by(Referral.created_at.desc())
        )
        if row is None:
            raise NotFound(f"ServiceRequest/{sr.id} has no Task")
        if ctx.actor is not None and acting(ctx).hospital_id != row.owner_org:
            refuse(
                Forbidden,
                "opinion-author",
                "the opinion is written at the hospital asked for the consult",
            )
        if report.get("subject") != request.get("subject"):
            refuse(
                Invalid,
                "opinion-subject",
                "the opinion is about the request's patient",
                "DiagnosticReport.subject",
            )
        before = (previous or {}).get("status")
        after = report.get("status")
        if before in SIGNED:
            if after != "amended":
                refuse(
                    Conflict,
                    "signed-opinion-unchangeable",
                    f"this opinion was signed ({before}) and never changes; correct it with an "
                    "amendment: status amended, with the reason (extension "
                    f"{AMENDMENT_REASON})",
                    "DiagnosticReport.status",
                )
            reason = (ext(report, AMENDMENT_REASON) or {}).get("valueString")
            if not isinstance(reason, str) or not reason.strip():
                refuse(
                    Invalid,
                    "amendment-reason",
                    f"an amendment gives its reason (extension {AMENDMENT_REASON}, valueString)",
                    "DiagnosticReport.extension",
                )
            current = session.scalar(
                select(ResourceRow.version).where(
                    ResourceRow.resource_type == "DiagnosticReport",
                    ResourceRow.id == report["id"],
                )
            )
            report.setdefault("extension", []).append(
                {
                    "url": REPLACES,
                    "valueReference": {
                        "reference": f"DiagnosticReport/{report['id']}/_history/{current}"
                    },
                }
            )
            self._sign(ctx, report, request, row)
            return []
        if before is not None and before not in DRAFT:
            refuse(Conflict, "opinion-closed", f"a {before} opinion does not change")
        if after in DRAFT or (after == "cancelled" and before is not None):
            return []
        if after == "final":
            self._sign(ctx, report, request, row)
            return []
        refuse(
            Invalid,
            "opinion-status",
            "an opinion is drafted (preliminary) and signed (final); amended corrects a signed one",
            "DiagnosticReport.status",
        )

    def _signer(self, ctx: WriteContext, row: Referral) -> str:
        """The specialist of the consult (of one of its bookings that was not cancelled)."""
        specialists = set(
            ctx.session.scalars(
                select(Booking.practitioner_id).where(
                    Booking.task_id == row.task_id,
                    Booking.status.in_(("booked", "arrived", "fulfilled")),
                )
            )
        )
        own: str | None = ctx.actor.practitioner_id if ctx.actor is not None else None
        if own is None or own not in specialists:
            refuse(
                Forbidden,
                "opinion-signer",
                "the opinion is signed by the specialist of the consult",
            )
        return own

    def _check_started(self, ctx: WriteContext, row: Referral, signer: str) -> None:
        """An opinion is signed once the consult has started (its Encounter started, or its
        booked time reached), never before it took place."""
        bookings = ctx.session.execute(
            select(Booking.status, Booking.starts).where(
                Booking.task_id == row.task_id,
                Booking.practitioner_id == signer,
                Booking.status.in_(("booked", "arrived", "fulfilled")),
            )
        ).all()
        now = clock.now()
        if any(status in ("arrived", "fulfilled") or starts <= now for status, starts in bookings):
            return
        first = min(starts for _status, starts in bookings)
        refuse(
            Conflict,
            "consult-not-started",
            f"the consult starts at {instant(first)}; its opinion is signed once it has started",
        )

    def _sign(self, ctx: WriteContext, report: Resource, request: Resource, row: Referral) -> None:
        signer = self._signer(ctx, row)
        if row.status not in ("accepted", "in-progress", "completed"):
            refuse(
                Conflict,
                "consult-not-accepted",
                f"the consult request is {row.status}; an opinion is signed once it is accepted",
            )
        self._check_started(ctx, row, signer)
        if not (report.get("conclusion") or "").strip():
            refuse(
                Invalid,
                "opinion-conclusion",
                "a signed opinion states its conclusion",
                "DiagnosticReport.conclusion",
            )
        check_codes(report.get("conclusionCode") or [], "DiagnosticReport.conclusionCode")
        now = clock.now()
        report["issued"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        report["resultsInterpreter"] = [{"reference": f"Practitioner/{signer}"}]
        report.setdefault("performer", [{"reference": f"Organization/{acting(ctx).hospital_id}"}])
        attachment = self._render(ctx, report, request, row, signer, now)
        report["presentedForm"] = [attachment]

    def _render(
        self,
        ctx: WriteContext,
        report: Resource,
        request: Resource,
        row: Referral,
        signer: str,
        now: datetime,
    ) -> Resource:
        """The opinion as the signed letter (teleconsult.letter: a print-ready Chinese page,
        every value escaped), kept in the blob store (content-addressed) with an attachment
        row of the signing hospital."""
        session = ctx.session
        store = ctx.store

        def read(rtype: str, rid: str | None) -> Resource:
            if not rid:
                return {}
            try:
                return store.read(rtype, rid, session=session).resource()
            except NotFound:
                return {}

        def first_name(resource: Resource, fallback: str) -> str:
            return str(next((n.get("text") for n in resource.get("name") or []), fallback))

        practitioner = read("Practitioner", signer)
        title = next(
            (
                c.get("display")
                for q in practitioner.get("qualification") or []
                for c in (q.get("code") or {}).get("coding") or []
            ),
            "",
        )
        patient = read("Patient", reference_id(report.get("subject"), "Patient"))
        requester = request.get("requester") or {}
        asking = read("Practitioner", reference_id(requester, "Practitioner"))
        starts = session.scalar(
            select(func.min(Booking.starts)).where(
                Booking.task_id == row.task_id,
                Booking.status.in_(("booked", "arrived", "fulfilled")),
            )
        )
        amendment = None
        if report.get("status") == "amended":
            amendment = str((ext(report, AMENDMENT_REASON) or {}).get("valueString", ""))
        body = opinion_letter(
            LetterFacts(
                hospital=str(read("Organization", acting(ctx).hospital_id).get("name", "")),
                patient_name=first_name(patient, "—"),
                sex=patient.get("gender"),
                birth_date=patient.get("birthDate"),
                identity_number=next(
                    (
                        str(i.get("value"))
                        for i in patient.get("identifier") or []
                        if i.get("system") == RESIDENT_ID
                    ),
                    None,
                ),
                requesting_hospital=str(read("Organization", keeper_of(request)).get("name", "")),
                requesting_doctor=first_name(asking, str(requester.get("display", ""))),
                consult_time=format_for_site(starts, xinjiang=False) if starts else "",
                conclusion=str(report.get("conclusion") or ""),
                diagnoses=[
                    (c.get("code"), str(c.get("display") or c.get("code") or ""))
                    for concept in report.get("conclusionCode") or []
                    for c in concept.get("coding") or []
                ]
                + [
                    (None, str(concept["text"]))
                    for concept in report.get("conclusionCode") or []
                    if not concept.get("coding") and concept.get("text")
                ],
                signer=first_name(practitioner, signer),
                signer_title=str(title),
                signed_at=format_for_site(now, xinjiang=False),
                signed_on=now.astimezone(clock.BEIJING).date(),
                amendment=amendment,
            )
        )
        stored = self.blobs.put(io.BytesIO(body), content_type="text/html")
        letter = Attachment(
            id=str(uuid.uuid4()),
            blob_key=stored.key,
            sha256=stored.sha256,
            size=stored.size,
            content_type="text/html",
            title="远程会诊意见书",
            hospital_id=acting(ctx).hospital_id,
            uploaded_by=acting(ctx).username,
            created=now,
        )
        session.add(letter)
        session.flush()
        return fhir_attachment(self.settings.base_url, letter)

    def after(self, ctx: WriteContext, version: Version, previous: Resource | None) -> None:
        """After a signature: the Provenance with the signature, the DocumentReference, the
        Task's output, and the consult completed."""
        report = version.resource()
        before = (previous or {}).get("status")
        signed_now = report["status"] == "amended" or (
            report["status"] == "final" and before != "final"
        )
        if not signed_now:
            return
        assert version.content is not None
        signer = reference_id(report["resultsInterpreter"][0], "Practitioner") or ""
        patient_id = reference_id(report.get("subject"), "Patient") or ""
        hospital = acting(ctx).hospital_id
        now = clock.now()
        target = f"DiagnosticReport/{version.id}/_history/{version.version}"
        token = self._attest(ctx.session, signer, target, version.content, now)
        ctx.store.create(
            "Provenance",
            {
                "resourceType": "Provenance",
                "extension": [
                    {
                        "url": RECORD_KEEPER,
                        "valueReference": {"reference": f"Organization/{hospital}"},
                    },
                    {
                        "url": RECORD_PATIENT,
                        "valueReference": {"reference": f"Patient/{patient_id}"},
                    },
                ],
                "target": [{"reference": target}],
                "recorded": report["issued"],
                "activity": {
                    "coding": [
                        {
                            "system": DATA_OPERATION,
                            "code": "UPDATE" if previous is not None else "CREATE",
                        }
                    ],
                    "text": "signed" if report["status"] == "final" else "amended and signed",
                },
                "agent": [
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "provenance-participant-type",
                                    "code": "author",
                                }
                            ]
                        },
                        "who": {"reference": f"Practitioner/{signer}"},
                        "onBehalfOf": {"reference": f"Organization/{hospital}"},
                    }
                ],
                "signature": [
                    {
                        "type": [{"system": SIGNATURE_TYPE, "code": AUTHOR_SIGNATURE}],
                        "when": report["issued"],
                        "who": {"reference": f"Practitioner/{signer}"},
                        "targetFormat": "application/fhir+json",
                        "sigFormat": "application/jose",
                        "data": base64.b64encode(token.encode()).decode(),
                    }
                ],
            },
            session=ctx.session,
            resource_id=str(uuid.uuid4()),
        )
        document = self._file_document(ctx, version, report, previous, signer)
        self._notify(ctx, report, version, signer)
        self._complete(ctx, report, version, document)

    @staticmethod
    def _notify(ctx: WriteContext, report: Resource, version: Version, signer: str) -> None:
        """The signature as an event of the outbox: for the requesting hospital, and the
        specialist who signed."""
        sr_id = reference_id(report["basedOn"][0], "ServiceRequest")
        row = ctx.session.scalar(
            select(Referral)
            .where(Referral.service_request_id == sr_id)
            .order_by(Referral.created_at.desc())
        )
        assert row is not None
        record(
            ctx.session,
            "opinion-amended" if report["status"] == "amended" else "opinion-signed",
            focus=("DiagnosticReport", version.id),
            recipients=[
                Recipient(row.placer_org),
                Recipient(row.owner_org),
                Recipient(acting(ctx).hospital_id, practitioner_id=signer),
            ],
            patient_id=row.patient_id,
            task_id=row.task_id,
            actor=acting(ctx),
        )

    def _attest(
        self, session: Session, signer: str, target: str, content: str, now: datetime
    ) -> str:
        claims: dict[str, Any] = {
            "iss": self.settings.fhir_base,
            "sub": f"Practitioner/{signer}",
            "iat": int(now.timestamp()),
            "target": target,
            "sha256": content_digest(content),
        }
        return signing.sign(self.settings, session, claims)

    def _file_document(
        self,
        ctx: WriteContext,
        version: Version,
        report: Resource,
        previous: Resource | None,
        signer: str,
    ) -> str:
        """The rendering as a DocumentReference (LOINC 11488-4); an amendment's replaces the
        previous rendering, which becomes superseded (FHIR R4 documentreference.html)."""
        previous_docs = []
        for form in (previous or {}).get("presentedForm") or []:
            if (previous or {}).get("status") in SIGNED and form.get("url"):
                previous_docs += ctx.store.search(
                    "DocumentReference",
                    [(ATTACHMENT_PARAM, form["url"]), ("status", "current")],
                    session=ctx.session,
                    default_count=10,
                    max_count=10,
                ).matches
        doc: Resource = {
            "resourceType": "DocumentReference",
            "status": "current",
            "docStatus": "amended" if report["status"] == "amended" else "final",
            "type": {
                "coding": [{"system": LOINC, "code": CONSULT_NOTE, "display": "Consult note"}]
            },
            "subject": report["subject"],
            "date": report["issued"],
            "author": [{"reference": f"Practitioner/{signer}"}],
            "authenticator": {"reference": f"Practitioner/{signer}"},
            "custodian": {"reference": f"Organization/{acting(ctx).hospital_id}"},
            "description": "远程会诊意见",
            "content": [{"attachment": report["presentedForm"][0]}],
            "context": {
                "related": [
                    {"reference": f"DiagnosticReport/{version.id}/_history/{version.version}"},
                    {"reference": f"DiagnosticReport/{version.id}"},
                ]
            },
        }
        if previous_docs:
            doc["relatesTo"] = [
                {"code": "replaces", "target": {"reference": f"DocumentReference/{d.id}"}}
                for d in previous_docs
            ]
        created = ctx.store.create("DocumentReference", doc, session=ctx.session, actor=ctx.actor)
        for old in previous_docs:
            body = old.resource()
            body["status"] = "superseded"
            ctx.store.update(
                "DocumentReference", old.id, body, session=ctx.session, actor=ctx.actor
            )
        return created.version.id

    def _complete(
        self, ctx: WriteContext, report: Resource, version: Version, document: str
    ) -> None:
        """File the opinion in the Task's output and complete the consult (referral workflow:
        in-progress -> completed needs its output document)."""
        sr_id = reference_id(report["basedOn"][0], "ServiceRequest")
        row = ctx.session.scalar(
            select(Referral)
            .where(Referral.service_request_id == sr_id)
            .order_by(Referral.created_at.desc())
        )
        assert row is not None
        if row.status == "accepted":
            self._move(ctx, row.task_id, "in-progress", None)
        target = "completed" if row.status == "in-progress" else row.status
        outputs = [
            {
                "type": {"text": "consult opinion"},
                "valueReference": {"reference": f"DocumentReference/{document}"},
            },
            {
                "type": {"text": "consult report"},
                "valueReference": {
                    "reference": f"DiagnosticReport/{version.id}/_history/{version.version}"
                },
            },
        ]
        self._move(ctx, row.task_id, target, outputs)

    @staticmethod
    def _move(ctx: WriteContext, task_id: str, status: str, outputs: list[Resource] | None) -> None:
        task = ctx.store.read("Task", task_id, session=ctx.session).resource()
        task["status"] = status
        if outputs:
            task["output"] = [*(task.get("output") or []), *outputs]
        ctx.store.update("Task", task_id, task, session=ctx.session, actor=ctx.actor)
