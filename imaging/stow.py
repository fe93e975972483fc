"""STOW-RS (PS3.18 10.5) apart from HTTP: who may store, one received part staged, and the
response body (the ReferencedSOPSequence and FailedSOPSequence of PS3.18 10.5.3)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble

from alliance.errors import Conflict, Forbidden
from alliance.security.access import Principal
from alliance.storage import BlobWriter
from alliance.sweep import SPOOL_PREFIXES
from imaging import dicom
from imaging.dicom import Rejected
from imaging.service import Imaging, Outcome, Staged
from imaging.web import Part


class StowFailed(Conflict):
    """No instance of a STOW-RS request was stored: audited as a failure, answered with the
    FailedSOPSequence (PS3.18 10.5.3): 409 Conflict, or 503 Busy when every instance failed
    for want of resources (0xA700: the image store is down or full), so the sender tries again
    later rather than changing its request."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        busy = all(o.status == dicom.OUT_OF_RESOURCES for o in outcomes)
        super().__init__(
            "the image store cannot take instances now" if busy else "no instance was stored"
        )
        self.status = 503 if busy else 409
        self.outcomes = outcomes


def may_store(principal: Principal) -> None:
    principal.check_scope("ImagingStudy", "create")
    if "clinical" not in principal.capabilities:
        raise Forbidden(
            f"the role {principal.role} does not store imaging", rule="imaging-clinical-staff"
        )


def staged_key(staged: Staged) -> tuple[str | None, str | None]:
    """(study UID, blob key) of a staged instance, as `Imaging.sweep` takes them."""
    return staged.parsed.study_uid, staged.blob.key


def part_writer(imaging: Imaging) -> BlobWriter:
    """Where a part of the body goes as it arrives (`Imaging.writer`)."""
    return imaging.writer(spool_prefix=SPOOL_PREFIXES[0])


def stage_part(imaging: Imaging, part: Part, study: str | None) -> Staged | Outcome:
    """Check and store one part of the body; what is not stored of it is discarded."""
    try:
        ctype = part.content_type or dicom.MEDIA_TYPE
        if ctype != dicom.MEDIA_TYPE:
            return Outcome(dicom.CANNOT_UNDERSTAND, f"a part of type {ctype} is not DICOM")
        if isinstance(part.sink, BlobWriter):
            return imaging.stage_written(part.sink, expected_study=study)
        if part.path is None:
            raise Rejected(dicom.OUT_OF_RESOURCES, "the part could not be received")
        return imaging.stage(part.path, expected_study=study)
    except Rejected as exc:
        head = part.sink.head if isinstance(part.sink, BlobWriter) else None
        sop_class, sop_instance = _uids_of(bytes(head) if head is not None else part.path)
        return Outcome.rejected(exc, sop_class_uid=sop_class, sop_instance_uid=sop_instance)
    finally:
        part.discard()


def stow_json(outcomes: list[Outcome], study: str | None, base: str) -> dict[str, Any]:
    """The response body, keys in tag order (PS3.18 10.5.3, Table 10.5.3-1)."""
    body: dict[str, Any] = {}
    studies = {o.study_uid for o in outcomes if o.ok and o.study_uid}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{target}"]}
    failed = [o for o in outcomes if not o.ok]
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_sop_item(o) for o in failed]}
    stored = [o for o in outcomes if o.ok]
    if stored:
        items = []
        for o in stored:
            item = _sop_item(o)
            item["00081190"] = {
                "vr": "UR",
                "Value": [
                    f"{base}/studies/{o.study_uid}/series/{o.series_uid}"
                    f"/instances/{o.sop_instance_uid}"
                ],
            }
            items.append(dict(sorted(item.items())))
        body["00081199"] = {"vr": "SQ", "Value": items}
    return dict(sorted(body.items()))


def _sop_item(o: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if o.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [o.sop_class_uid]}
    if o.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [o.sop_instance_uid]}
    if not o.ok:
        item["00081197"] = {"vr": "US", "Value": [o.status]}
    return item


def _uids_of(source: Path | bytes | None) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs of a refused file (or of its first bytes), from its file
    meta if readable, so the FailedSOPSequence can name it."""
    try:
        if isinstance(source, bytes):
            handle = io.BytesIO(source)
            read_preamble(handle, False)
            meta = _read_file_meta_info(handle)
        elif source is not None:
            meta = read_file_meta_info(str(source))
        else:
            return None, None
    except Exception:
        return None, None
    found = [
        str(meta.get(k) or "") for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
    ]
    return tuple(u if dicom.valid_uid(u) else None for u in found)  # type: ignore[return-value]
