"""Uploaded files (a scanned consent form, a report, a rendered opinion) and the one rule for
them, which every resource type inherits because the FHIR store applies it on every write:

- a file belongs to the hospital that uploaded it, and only records that hospital keeps may
  reference it (any element of any type that carries a FHIR `Attachment` whose `url` is one of
  ours; FHIR R4 datatypes.html#Attachment);
- the server, not the client, states its type, size and hash;
- it is served (`GET /api/attachments/{id}`) to those who may see, in full, a record that
  references it, within their token's scopes; and to its own hospital's clinical staff while
  no record references it yet.

So a file cannot leave its hospital by being named in another hospital's record, and it stops
being served to another hospital when the grant that opened its record closes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.attachments.models import Attachment
from alliance.codes import ATTACHMENT_SHA256
from alliance.errors import Forbidden, Invalid, NotFound, PayloadTooLarge, UnsupportedMediaType
from alliance.fhir.models import ResourceRow, TokenIndex
from alliance.security.access import Principal, kept_by, opened_in_full
from alliance.security.scopes import allows
from alliance.storage import BlobStore

Resource = dict[str, Any]
#: Where uploads are served, under the base URL.
ATTACHMENT_PATH = "/api/attachments/"
#: The token search parameter every type's attachment URLs are indexed under.
ATTACHMENT_PARAM = "attachment"
#: What may be uploaded, and the first bytes each kind of file starts with (so a file cannot
#: pass for what it is not).
ACCEPTED_TYPES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "text/plain": (),
}


class _Sniffer:
    """Reads the upload through, checking its first bytes against its declared type."""

    def __init__(self, stream: BinaryIO, content_type: str) -> None:
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
            raise UnsupportedMediaType(
                f"the file is not a {self.content_type}", rule="file-content"
            )
        if self.content_type == "text/plain":
            try:
                self.head.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.start < len(self.head) - 3:  # not a character cut at the boundary
                    raise UnsupportedMediaType(
                        "text/plain uploads are UTF-8 text", rule="file-content"
                    ) from None


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
    if "clinical" not in principal.capabilities:
        raise Forbidden("only clinical staff attach documents", rule="file-clinical-staff")
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in ACCEPTED_TYPES:
        raise UnsupportedMediaType(
            f"{ctype or 'no type'} cannot be attached; accepted: {', '.join(ACCEPTED_TYPES)}",
            rule="file-type",
        )
    try:
        stored = blobs.put(_Sniffer(stream, ctype), content_type=ctype, max_bytes=max_bytes)  # type: ignore[arg-type]
    except PayloadTooLarge as exc:
        raise PayloadTooLarge(exc.message, rule="file-too-large") from None
    if stored.size == 0:
        raise Invalid("the file is empty", rule="file-empty")
    row = Attachment(
        id=str(uuid.uuid4()),
        blob_key=stored.key,
        sha256=stored.sha256,
        size=stored.size,
        content_type=ctype,
        title=(title or "")[:255] or None,
        hospital_id=principal.hospital_id,
        uploaded_by=principal.username[:64],
        created=clock.now(),
    )
    session.add(row)
    session.flush()
    return row


def attachment_url(base_url: str, attachment_id: str) -> str:
    return f"{base_url.rstrip('/')}{ATTACHMENT_PATH}{attachment_id}"


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


def attachments_in(
    resource: object, base_url: str, path: str = ""
) -> Iterator[tuple[str, Resource]]:
    """Every element of a resource, at any depth, that points at one of our uploads: an
    object whose `url` is under `/api/attachments/` (the shape of FHIR's Attachment, in any
    element, extension or contained resource), as (element path, the object)."""
    prefix = attachment_url(base_url, "")
    if isinstance(resource, dict):
        url = resource.get("url")
        if isinstance(url, str) and url.startswith(prefix):
            yield path, resource
        for key, value in resource.items():
            yield from attachments_in(value, base_url, f"{path}.{key}" if path else key)
    elif isinstance(resource, list):
        for i, item in enumerate(resource):
            yield from attachments_in(item, base_url, f"{path}[{i}]")


def check_attachments(
    session: Session, resource_type: str, resource: Resource, keeper: str | None, base_url: str
) -> list[str]:
    """The sharing rule for files, on a record about to be stored: each upload it points at
    exists and was uploaded by `keeper`, the hospital that keeps the record (422 otherwise);
    its type, size and hash become the server's. Returns the URLs, for the search index."""
    prefix = attachment_url(base_url, "")
    urls: list[str] = []
    for where, attachment in attachments_in(resource, base_url):
        at = f"{resource_type}.{where}" if where else resource_type
        url = str(attachment["url"])
        row = session.get(Attachment, url.removeprefix(prefix))
        if row is None:
            raise Invalid(
                f"{at}.url is not an uploaded attachment", rule="file-unknown", expression=[at]
            )
        if keeper is None or row.hospital_id != keeper:
            raise Invalid(
                f"{at} is a file uploaded by another hospital; a file is referenced only by "
                "records of the hospital that uploaded it",
                rule="file-kept-by",
                expression=[at],
            )
        attachment.update(fhir_attachment(base_url, row))
        urls.append(url)
    return list(dict.fromkeys(urls))


def readable_attachment(
    *,
    session: Session,
    principal: Principal,
    attachment_id: str,
    base_url: str,
    clinical_types: list[str],
) -> Attachment:
    """The attachment, if the principal may see in full a record that references it (of a type
    its token may read), or its own hospital uploaded it and no record references it yet.
    A token that may read none of the `clinical_types` answers 403; anything else unseen, 404."""
    readable = [t for t in clinical_types if allows(list(principal.scopes), t, "r")]
    if "clinical" not in principal.capabilities or not readable:
        raise Forbidden(
            f"the token's scope ({principal.scope_text or 'none'}) and role allow no clinical "
            "record, so no file"
        )
    row = session.get(Attachment, attachment_id)
    if row is None:
        raise NotFound(f"attachment {attachment_id} is not known")
    url = attachment_url(base_url, attachment_id)[:255]
    hospital = principal.hospital_id
    holder = (
        select(ResourceRow.id)
        .join(
            TokenIndex,
            and_(
                TokenIndex.resource_type == ResourceRow.resource_type,
                TokenIndex.resource_id == ResourceRow.id,
            ),
        )
        .where(
            TokenIndex.param == ATTACHMENT_PARAM,
            TokenIndex.code == url,
            ResourceRow.resource_type.in_(readable),
            ResourceRow.deleted.is_(False),
            or_(kept_by(hospital), opened_in_full(hospital, clock.now())),
        )
    )
    if session.scalar(select(exists(holder))):
        return row
    held = session.scalar(
        select(exists().where(TokenIndex.param == ATTACHMENT_PARAM, TokenIndex.code == url))
    )
    if not held and row.hospital_id == hospital:
        return row
    raise NotFound(f"attachment {attachment_id} is not known")
