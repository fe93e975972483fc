"""Documents and consents: the DocumentReferences that present uploaded files
(alliance.attachments), and the patient's consent to share records with a named hospital."""

from __future__ import annotations

from alliance.attachments.service import attachment_url
from alliance.errors import Invalid
from alliance.fhir.models import ResourceRow
from alliance.fhir.registry import Resource, WriteContext
from alliance.records import reference_id


def require_uploads(attachments: list[tuple[str, Resource]], base_url: str) -> None:
    """These attachments point at uploaded files (whose owner, type, size and hash the FHIR
    store checks on every write: alliance.attachments), not at data inline or elsewhere."""
    prefix = attachment_url(base_url, "")
    for where, attachment in attachments:
        url = attachment.get("url")
        if not isinstance(url, str) or not url.startswith(prefix):
            if attachment.get("data") is not None:
                raise Invalid(
                    "upload the file to /api/attachments and reference it by url",
                    expression=[where],
                    rule="file-upload-first",
                )
            raise Invalid(
                f"{where}.url must be an attachment uploaded to {prefix}",
                expression=[where],
                rule="file-upload-first",
            )


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
        raise Invalid(
            "a consent names its patient", expression=["Consent.patient"], rule="consent-patient"
        )
    provision = consent.get("provision") or {}
    if provision.get("type") != "permit":
        raise Invalid(
            "a sharing consent permits (provision.type permit)",
            expression=["Consent.provision.type"],
            rule="consent-permit",
        )
    recipients = consent_recipients(consent)
    if not recipients:
        raise Invalid(
            "a consent names the hospital(s) that may receive the records (provision.actor)",
            expression=["Consent.provision.actor"],
            rule="consent-recipient",
        )
    for org in recipients:
        row = ctx.session.get(ResourceRow, ("Organization", org))
        if row is None or row.deleted:
            raise Invalid(
                f"Organization/{org} is not a hospital of the alliance",
                expression=["Consent.provision.actor"],
                rule="consent-recipient",
            )
    if not provision.get("purpose"):
        raise Invalid(
            "a consent names its purpose (provision.purpose)",
            expression=["Consent.provision.purpose"],
            rule="consent-purpose",
        )
    performers = consent.get("performer") or []
    if not performers:
        raise Invalid(
            "a consent names who gave it (performer)",
            expression=["Consent.performer"],
            rule="consent-signer",
        )
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
                rule="consent-relationship",
            )
    source = consent.get("sourceAttachment")
    if not isinstance(source, dict):
        raise Invalid(
            "a consent carries the signed form (sourceAttachment): scan or photograph it",
            expression=["Consent.sourceAttachment"],
            rule="consent-form",
        )
    require_uploads([("Consent.sourceAttachment", source)], base_url)


def check_document(ctx: WriteContext, doc: Resource, base_url: str) -> None:
    if reference_id(doc.get("subject"), "Patient") is None:
        raise Invalid(
            "a document is about a patient (subject)", expression=["DocumentReference.subject"]
        )
    contents = doc.get("content") or []
    require_uploads(
        [
            (f"DocumentReference.content[{i}].attachment", c["attachment"])
            for i, c in enumerate(contents)
        ],
        base_url,
    )
