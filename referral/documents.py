"""Documents and consents: uploaded attachments (in the blob store), the DocumentReferences
that present them, and the patient's consent to share records with a named hospital."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from alliance.codes import ATTACHMENT_SHA256
from alliance.errors import Invalid, NotFound, UnsupportedMediaType
from alliance.fhir.models import ResourceRow, TokenIndex
from alliance.fhir.registry import Resource, WriteContext
from alliance.records import reference_id
from alliance.security.access import Principal, clinical_reach
from alliance.storage import BlobStore
from referral.models import Attachment

#: What may be uploaded, and the first bytes each kind of file starts with (so a file cannot
#: pass for what it is not).
ACCEPTED_TYPES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "text/plain": (),
}
#: Types that point at an uploaded attachment, and where (for "who may download it").
ATTACHMENT_HOLDERS = ("DocumentReference", "Consent", "Communication")
ATTACHMENT_PARAM = "attachment"


class _Sniffer:
    """Reads the upload through, checking its first bytes against its declared type."""

    def __init__(self, stream: Any, content_type: str) -> None:
        self.stream = stream
        self.signatures = ACCEPTED_TYPES[content_type]
        self.head = b""
        self.content_type = content_type

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self.stream.read(size)
        if len(self.head) < 16:
            self.head += chunk[: 16 - len(self.head)]
            if len(self.head) >= 8 or not chunk:
                self._check()
        return chunk

    def _check(self) -> None:
        if self.signatures and not any(self.head.startswith(s) for s in self.signatures):
            raise UnsupportedMediaType(f"the file is not a {self.content_type}")
        if self.content_type == "text/plain":
            try:
                self.head.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.start < len(self.head) - 3:  # not a character cut at the boundary
                    raise UnsupportedMediaType("text/plain uploads are UTF-8 text") from None


def store_attachment(
    *,
    session: Session,
    blobs: BlobStore,
    stream: BinaryIO,
    content_type: str,
    title: str | None,
    principal: Principal,
    max_bytes: int,
) -> Attachment:
    """Store an upload: the blob first (content-addressed), then its row. A refused upload
    (too large: 413, wrong type: 415) leaves no row; its blob, if any, is an orphan."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in ACCEPTED_TYPES:
        raise UnsupportedMediaType(
            f"{ctype or 'no type'} cannot be attached; accepted: {', '.join(ACCEPTED_TYPES)}"
        )
    stored = blobs.put(_Sniffer(stream, ctype), content_type=ctype, max_bytes=max_bytes)  # type: ignore[arg-type]
    if stored.size == 0:
        raise Invalid("the file is empty")
    row = Attachment(
        id=str(uuid.uuid4()),
        blob_key=stored.key,
        sha256=stored.sha256,
        size=stored.size,
        content_type=ctype,
        title=(title or "")[:255] or None,
        hospital_id=principal.hospital_id,
        uploaded_by=principal.username,
        created=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return row


def attachment_url(base_url: str, attachment_id: str) -> str:
    return f"{base_url.rstrip('/')}/api/attachments/{attachment_id}"


def fhir_attachment(base_url: str, row: Attachment) -> Resource:
    """The FHIR Attachment for an upload (its SHA-256 in an extension: FHIR's hash is SHA-1)."""
    attachment: Resource = {
        "extension": [{"url": ATTACHMENT_SHA256, "valueString": row.sha256}],
        "contentType": row.content_type,
        "url": attachment_url(base_url, row.id),
        "size": row.size,
        "creation": row.created.isoformat(),
    }
    if row.title:
        attachment["title"] = row.title
    return attachment


def readable_attachment(
    *, session: Session, principal: Principal, attachment_id: str, base_url: str
) -> Attachment:
    """The attachment, if the principal may see a record that holds it, or uploaded it and it
    is not yet in any record; else NotFound."""
    row = session.get(Attachment, attachment_id)
    if row is None:
        raise NotFound(f"attachment {attachment_id} is not known")
    url = attachment_url(base_url, attachment_id)
    holders = [
        select(ResourceRow.id)
        .join(
            TokenIndex,
            (TokenIndex.resource_type == ResourceRow.resource_type)
            & (TokenIndex.resource_id == ResourceRow.id),
        )
        .where(
            ResourceRow.resource_type == rtype,
            ResourceRow.deleted.is_(False),
            TokenIndex.param == ATTACHMENT_PARAM,
            TokenIndex.code == url[:255],
            clinical_reach(principal, rtype),
        )
        for rtype in ATTACHMENT_HOLDERS
    ]
    if any(session.scalar(select(exists(q))) for q in holders):
        return row
    held = session.scalar(
        select(exists().where(TokenIndex.param == ATTACHMENT_PARAM, TokenIndex.code == url[:255]))
    )
    if (
        not held
        and row.hospital_id == principal.hospital_id
        and "clinical" in principal.capabilities
    ):
        return row
    raise NotFound(f"attachment {attachment_id} is not known")


def check_attachments(
    ctx: WriteContext, attachments: list[tuple[str, Resource]], base_url: str
) -> None:
    """Attachments of a record point at uploads of the writer's hospital; their size, type and
    hash are the server's, not the client's."""
    prefix = attachment_url(base_url, "")
    for where, attachment in attachments:
        url = attachment.get("url")
        if not isinstance(url, str) or not url.startswith(prefix):
            if attachment.get("data") is not None:
                raise Invalid(
                    "upload the file to /api/attachments and reference it by url",
                    expression=[where],
                )
            raise Invalid(
                f"{where}.url must be an attachment uploaded to {prefix}", expression=[where]
            )
        row = ctx.session.get(Attachment, url.removeprefix(prefix))
        if row is None:
            raise Invalid(f"{where}.url is not an uploaded attachment", expression=[where])
        if ctx.actor is not None and row.hospital_id != ctx.actor.hospital_id:
            raise Invalid(f"{where} was uploaded by another hospital", expression=[where])
        attachment.update(fhir_attachment(base_url, row))


# ---- Consent ----------------------------------------------------------------------------------

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
RELATIONSHIP_EXTENSION = "https://fhir.yzxy-alliance.cn/StructureDefinition/consenter-relationship"


def consent_recipients(consent: Resource) -> list[str]:
    provision = consent.get("provision") or {}
    return [
        org
        for actor in provision.get("actor") or []
        if (org := reference_id(actor.get("reference"), "Organization")) is not None
    ]


def check_consent(ctx: WriteContext, consent: Resource, base_url: str) -> None:
    """The patient's (or a guardian's or close relative's, with the relationship) written
    consent to share named records with named hospitals for a named purpose (PIPL art. 23, 29),
    with the signed form as an attachment."""
    if reference_id(consent.get("patient"), "Patient") is None:
        raise Invalid("a consent names its patient", expression=["Consent.patient"])
    provision = consent.get("provision") or {}
    if provision.get("type") != "permit":
        raise Invalid(
            "a sharing consent permits (provision.type permit)",
            expression=["Consent.provision.type"],
        )
    recipients = consent_recipients(consent)
    if not recipients:
        raise Invalid(
            "a consent names the hospital(s) that may receive the records (provision.actor)",
            expression=["Consent.provision.actor"],
        )
    for org in recipients:
        row = ctx.session.get(ResourceRow, ("Organization", org))
        if row is None or row.deleted:
            raise Invalid(
                f"Organization/{org} is not a hospital of the alliance",
                expression=["Consent.provision.actor"],
            )
    if not provision.get("purpose"):
        raise Invalid(
            "a consent names its purpose (provision.purpose)",
            expression=["Consent.provision.purpose"],
        )
    performers = consent.get("performer") or []
    if not performers:
        raise Invalid("a consent names who gave it (performer)", expression=["Consent.performer"])
    for i, performer in enumerate(performers):
        is_patient = reference_id(performer, "Patient") == reference_id(
            consent.get("patient"), "Patient"
        )
        relationship = any(
            e.get("url") == RELATIONSHIP_EXTENSION for e in performer.get("extension") or []
        )
        if not is_patient and not relationship:
            raise Invalid(
                "a consent given by someone other than the patient records their relationship "
                f"(extension {RELATIONSHIP_EXTENSION})",
                expression=[f"Consent.performer[{i}]"],
            )
    source = consent.get("sourceAttachment")
    if not isinstance(source, dict):
        raise Invalid(
            "a consent carries the signed form (sourceAttachment): scan or photograph it",
            expression=["Consent.sourceAttachment"],
        )
    check_attachments(ctx, [("Consent.sourceAttachment", source)], base_url)


def check_document(ctx: WriteContext, doc: Resource, base_url: str) -> None:
    if reference_id(doc.get("subject"), "Patient") is None:
        raise Invalid(
            "a document is about a patient (subject)", expression=["DocumentReference.subject"]
        )
    contents = doc.get("content") or []
    check_attachments(
        ctx,
        [
            (f"DocumentReference.content[{i}].attachment", c["attachment"])
            for i, c in enumerate(contents)
        ],
        base_url,
    )
