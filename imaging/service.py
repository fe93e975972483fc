"""Ingest (one path for STOW-RS and C-STORE), the index, linking to patients, and sweeping.

Who may see a study is `imaging.access`; the views the FHIR derivation reads, `imaging.views`.

An instance goes through two steps, whichever face received it:

1. `Imaging.stage`: the PS3.10 file, spooled to a local temporary file by the face, is scanned,
   parsed and checked (`imaging.dicom`), then put into the blob store under its SHA-256.
   Nothing here touches the database, so a rejected file costs no row and no lock.
2. `Imaging.index`, in the caller's unit of work (the guarded request's, or the C-STORE
   handler's): under a per-study lock, the instance is linked to its patient, refused if it
   conflicts with what is indexed (same SOP Instance UID with other bytes, a study kept by
   another hospital, another patient), and its rows are written; `Imaging.finish` then brings
   the series metadata and the FHIR ImagingStudy up to date in the same transaction.

A blob is always in the store before the row that points to it commits (the row is written
only after a successful put, and the blob's presence is re-checked under the study lock). A
blob put for an instance that was then not indexed, or whose transaction failed, is removed by
`Imaging.sweep` under the same lock, unless a committed row uses it (content addressing: the
same bytes already stored by an earlier upload); when the store is down by then, the age-based
sweep (`server.sweep`) removes it later.

The blob store going down in the middle of a request fails only the instances it did not take
(0xA700, PS3.4 B.2.3; in the STOW-RS FailedSOPSequence, PS3.18 10.5.3): those it took before
are indexed, and no message names the store's endpoint, folders or keys.

Patients (PS3.3 C.7.1.1): an instance is linked to the uploading hospital's Patient whose
resident identity number (GB 11643) is the PatientID or one of the Other Patient IDs, or else
whose medical record number at that hospital is the PatientID (when the Issuer of Patient ID is
empty or names that hospital). A study that matches no Patient is "held for reconciliation":
indexed, visible to its hospital's clinical users over DICOMweb only, and without a FHIR
ImagingStudy (whose subject is mandatory) until `link_study` or a later instance links it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.attachments.models import Attachment
from alliance.codes import HOSPITAL_MRN
from alliance.config import Settings
from alliance.db import Database, named_lock
from alliance.directory.identity import IdentityNumberError, parse_identity_number
from alliance.directory.models import PatientIdentity
from alliance.errors import AllianceError, Invalid, NotFound, Unavailable
from alliance.fhir.models import ResourceRow, TokenIndex
from alliance.fhir.store import FhirStore
from alliance.fhir.values import fold
from alliance.notify.outbox import Recipient, record
from alliance.security.access import granted_to
from alliance.storage import BlobStore, BlobWriter, StoredBlob
from alliance.sweep import keys_in_use
from imaging import dicom
from imaging.access import IMAGING_STUDY
from imaging.dicom import Parsed, Rejected, resolve_base
from imaging.models import Instance, Series, Study
from imaging.structure import mapped, scan
from imaging.views import EndpointDeriver, StudyDeriver, study_view

log = logging.getLogger("alliance.imaging")

ENDPOINT_ID = "dicomweb"


@dataclass
class Staged:
    """A checked instance whose bytes are in the blob store, not yet indexed."""

    parsed: Parsed
    blob: StoredBlob


@dataclass
class Outcome:
    """What became of one instance (PS3.18 10.5.3: a ReferencedSOPSequence or FailedSOPSequence
    item; PS3.4 B.2.3: a C-STORE status)."""

    status: int
    reason: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None
    #: The blob it put (None when it failed before the put).
    blob_key: str | None = None
    #: False when the very same instance was already stored (a no-op success).
    new: bool = True

    @property
    def ok(self) -> bool:
        return self.status == 0

    @classmethod
    def rejected(
        cls,
        exc: Rejected,
        staged: Staged | None = None,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> Outcome:
        if staged is None:
            return cls(exc.status, exc.reason, sop_class_uid, sop_instance_uid)
        p = staged.parsed
        return cls(
            exc.status,
            exc.reason,
            p.sop_class_uid,
            p.sop_instance_uid,
            p.study_uid,
            p.series_uid,
            blob_key=staged.blob.key,
        )


def study_lock(session: Session, study_uid: str) -> None:
    named_lock(session, f"imaging-study:{study_uid}")


class Imaging:
    """The imaging domain's operations over one database, blob store and FHIR store."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        fhir: FhirStore,
        settings: Settings,
        derive_study: StudyDeriver,
        derive_endpoint: EndpointDeriver,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.fhir = fhir
        self.settings = settings
        self.derive_study = derive_study
        self.derive_endpoint = derive_endpoint

    @property
    def base(self) -> str:
        return self.settings.dicomweb_base

    # ---- step 1: check and store the bytes ----------------------------------------------

    def stage(self, path: Path, *, expected_study: str | None = None) -> Staged:
        """Scan, parse and check the PS3.10 file at `path`; put it in the blob store.

        Raises `Rejected`; nothing is stored then. `expected_study` is the study of a STOW-RS
        request to `/studies/{study}` (PS3.18 10.5.1: instances of other studies fail).
        """
        parsed = self._check(path, expected_study)
        try:
            with path.open("rb") as handle:
                blob = self.blobs.put(handle, content_type=dicom.MEDIA_TYPE)
        except AllianceError as exc:
            # The store's own message names its endpoint, folders or keys: logged, not answered.
            log.warning(
                "the blob store did not take SOP Instance %s: %s", parsed.sop_instance_uid, exc
            )
            raise Rejected(dicom.OUT_OF_RESOURCES, STORE_REFUSED) from None
        except OSError as exc:
            raise Rejected(
                dicom.OUT_OF_RESOURCES, f"cannot read the received file: {exc}"
            ) from None
        return Staged(parsed, blob)

    def writer(self, *, spool_prefix: str, max_bytes: int | None = None) -> BlobWriter:
        """Where an instance goes as it arrives (a STOW-RS part, a C-STORE data set): straight
        into the blob store, hashed on the way, one pass over its bytes, for `stage_written`.
        Past `max_bytes` it keeps no bytes and only counts them (its error says so). A store
        that cannot begin a blob makes a refused writer: that instance alone fails, with
        0xA700 once it has arrived."""
        try:
            return self.blobs.writer(
                spool_prefix=spool_prefix, content_type=dicom.MEDIA_TYPE, max_bytes=max_bytes
            )
        except AllianceError as exc:
            return BlobWriter.refused(exc)

    def stage_written(self, writer: BlobWriter, *, expected_study: str | None = None) -> Staged:
        """`stage` for a file written straight into the blob store as it arrived (`writer`):
        scanned and parsed where it was written, then committed under its SHA-256, computed
        on the way in; it is never copied. Raises `Rejected`, and nothing is stored then."""
        if writer.error is not None or writer.path is None:
            log.warning("the blob store did not take an instance: %s", writer.error)
            raise Rejected(dicom.OUT_OF_RESOURCES, STORE_REFUSED)
        parsed = self._check(writer.path, expected_study)
        try:
            blob = writer.commit()
        except AllianceError as exc:
            log.warning(
                "the blob store did not take SOP Instance %s: %s", parsed.sop_instance_uid, exc
            )
            raise Rejected(dicom.OUT_OF_RESOURCES, STORE_REFUSED) from None
        return Staged(parsed, blob)

    def _check(self, path: Path, expected_study: str | None) -> Parsed:
        """Scan, parse and check the PS3.10 file at `path` (see `stage`)."""
        try:
            with mapped(path) as buf:
                structure = scan(buf)
        except OSError as exc:
            raise Rejected(
                dicom.OUT_OF_RESOURCES, f"cannot read the received file: {exc}"
            ) from None
        parsed = dicom.parse(path, structure)
        if expected_study is not None and parsed.study_uid != expected_study:
            raise Rejected(
                dicom.DOES_NOT_MATCH,
                f"StudyInstanceUID {parsed.study_uid} differs from {expected_study} in the URL",
            )
        return parsed

    # ---- step 2: index ------------------------------------------------------------------

    def index(self, session: Session, staged: list[Staged], *, hospital_id: str) -> list[Outcome]:
        """Index staged instances for `hospital_id`, in the caller's transaction.

        Every study is locked first, in UID order (so two batches never wait on each other in
        a cycle); each instance then either gets its rows or a failure `Outcome`.
        """
        for uid in sorted({s.parsed.study_uid for s in staged}):
            study_lock(session, uid)
        now = clock.now()
        # Which of the batch's instances are indexed already: one query, not one per instance;
        # kept up to date as this batch adds its own (the same instance may come twice).
        uids = sorted({s.parsed.sop_instance_uid for s in staged})
        known: dict[str, Instance] = {}
        for start in range(0, len(uids), 1000):
            chunk = uids[start : start + 1000]
            for row in session.scalars(
                select(Instance).where(Instance.sop_instance_uid.in_(chunk))
            ):
                known[row.sop_instance_uid] = row
        outcomes = []
        # The patient identifiers of this batch that matched no Patient of the hospital: the
        # instances of a study carry the same ones, and are not matched again one by one.
        unmatched: set[tuple[Any, ...]] = set()
        for item in staged:
            try:
                outcomes.append(self._index_one(session, item, hospital_id, now, known, unmatched))
            except Rejected as exc:
                outcomes.append(Outcome.rejected(exc, item))
        session.flush()
        return outcomes

    def _index_one(
        self,
        session: Session,
        item: Staged,
        hospital_id: str,
        now: datetime,
        known: dict[str, Instance],
        unmatched: set[tuple[Any, ...]],
    ) -> Outcome:
        p = item.parsed
        existing = known.get(p.sop_instance_uid)
        if existing is not None:
            if existing.sha256 != item.blob.sha256:
                raise Rejected(
                    dicom.DUPLICATE_INSTANCE,
                    f"SOP Instance {p.sop_instance_uid} is already stored with other content; "
                    "stored instances are never overwritten",
                )
            study = session.get(Study, existing.study_uid)
            if study is None or study.hospital_id != hospital_id:
                raise Rejected(dicom.NOT_AUTHORISED, "the study is kept by another hospital")
            return Outcome(
                0,
                sop_class_uid=p.sop_class_uid,
                sop_instance_uid=p.sop_instance_uid,
                study_uid=p.study_uid,
                series_uid=p.series_uid,
                patient_id=study.patient_id,
                blob_key=item.blob.key,
                new=False,
            )
        study = session.get(Study, p.study_uid)
        if study is not None and study.hospital_id != hospital_id:
            raise Rejected(dicom.NOT_AUTHORISED, "the study is kept by another hospital")
        if study is not None and (study.dicom_patient_id or "") != (p.patient_id or ""):
            raise Rejected(
                dicom.DOES_NOT_MATCH,
                f"PatientID {p.patient_id!r} differs from the study's {study.dicom_patient_id!r}",
            )
        series = session.get(Series, p.series_uid)
        if series is not None and series.study_uid != p.study_uid:
            raise Rejected(dicom.DOES_NOT_MATCH, f"Series {p.series_uid} belongs to another study")
        if not self._still_stored(item):
            raise Rejected(
                dicom.PROCESSING_FAILURE, "the stored bytes vanished before indexing; send again"
            )
        parents_added = study is None or series is None
        if study is None:
            patient = _match_once(session, hospital_id, p, unmatched)
            study = self._new_study(session, p, hospital_id, patient, now)
        elif study.patient_id is None:
            study.patient_id = _match_once(session, hospital_id, p, unmatched)
        if series is None:
            series = Series(
                series_uid=p.series_uid,
                study_uid=p.study_uid,
                modality=p.modality,
                series_number=p.series_number,
                series_description=_clip(p.series_description, 200),
                body_part_examined=_clip(p.body_part_examined, 64),
                series_date=p.series_date,
                series_time=_clip(p.series_time, 16),
                number_of_instances=0,
                size_bytes=0,
                created=now,
            )
            session.add(series)
            study.number_of_series += 1
        if parents_added:
            # No ORM relationships link the tables, so flush parents before their children.
            session.flush()
        instance = Instance(
            sop_instance_uid=p.sop_instance_uid,
            series_uid=p.series_uid,
            study_uid=p.study_uid,
            sop_class_uid=p.sop_class_uid,
            instance_number=p.instance_number,
            transfer_syntax_uid=p.transfer_syntax,
            rows=p.rows,
            columns=p.columns,
            number_of_frames=p.number_of_frames,
            blob_key=item.blob.key,
            sha256=item.blob.sha256,
            size_bytes=item.blob.size,
            metadata_z=dicom.compress_json(p.metadata_json()),
            frame_ranges=dicom.ranges_json(p.frame_ranges),
            created=now,
        )
        session.add(instance)
        known[p.sop_instance_uid] = instance
        series.number_of_instances += 1
        series.size_bytes += item.blob.size
        series.metadata_gz = None
        study.number_of_instances += 1
        study.size_bytes += item.blob.size
        study.updated = now
        study.fhir_stale = True
        if p.modality and p.modality not in study.modalities.split("\\"):
            study.modalities = "\\".join(
                sorted(filter(None, [*study.modalities.split("\\"), p.modality]))
            )
        return Outcome(
            0,
            sop_class_uid=p.sop_class_uid,
            sop_instance_uid=p.sop_instance_uid,
            study_uid=p.study_uid,
            series_uid=p.series_uid,
            patient_id=study.patient_id,
            blob_key=item.blob.key,
        )

    def _still_stored(self, item: Staged) -> bool:
        """Whether a staged blob is still in the store, asked under its study's lock.

        The lock is held, so the clean-up of a failed upload of the same bytes (`sweep`) cannot
        run now, but one may have run between our put and the lock. When the store cannot
        answer (it went down after our put, in the middle of a STOW-RS request), the put that
        this request completed is the evidence, so what was stored before the outage is indexed
        (issue 11, section 3). The one way to be wrong then needs that clean-up to have run in
        the moments between our put and the outage; WADO-RS checks every blob before its 200,
        so even then a retrieve answers 404 rather than a cut body.
        """
        try:
            return self.blobs.exists(item.blob.key)
        except Unavailable as exc:
            log.warning(
                "the blob store cannot confirm SOP Instance %s; indexed on its put: %s",
                item.parsed.sop_instance_uid,
                exc,
            )
            return True

    def _new_study(
        self, session: Session, p: Parsed, hospital_id: str, patient: str | None, now: datetime
    ) -> Study:
        alpha, ideo, phon = p.name_groups
        study = Study(
            study_uid=p.study_uid,
            hospital_id=hospital_id,
            patient_id=patient,
            fhir_stale=True,
            patient_name=_clip(p.patient_name, 200),
            name_alphabetic=_fold(alpha),
            name_ideographic=_fold(ideo),
            name_phonetic=_fold(phon),
            dicom_patient_id=_clip(p.patient_id, 64),
            issuer_of_patient_id=_clip(p.issuer_of_patient_id, 64),
            patient_birth_date=p.patient_birth_date,
            patient_sex=_clip(p.patient_sex, 16),
            study_date=p.study_date,
            study_time=_clip(p.study_time, 16),
            accession_number=_clip(p.accession_number, 64),
            study_id=_clip(p.study_id, 16),
            study_description=_clip(p.study_description, 200),
            referring_physician_name=_clip(p.referring_physician_name, 200),
            timezone_offset=_clip(p.timezone_offset, 8),
            modalities="",
            number_of_series=0,
            number_of_instances=0,
            size_bytes=0,
            created=now,
            updated=now,
        )
        session.add(study)
        session.flush()
        return study

    # ---- after a batch: metadata and FHIR -----------------------------------------------

    def finish(self, session: Session, study_uids: Iterable[str]) -> None:
        """Bring each study's ImagingStudy up to date. A series' metadata is not rebuilt here:
        indexing an instance drops its series' cached copy, and the first WADO-RS metadata
        request rebuilds it (wado.metadata), once, however many stores came before. (Rebuilt
        at every store, a series sent one instance per request cost the whole series again
        each time: quadratic in its size.)"""
        for uid in sorted(set(study_uids)):
            study = session.get(Study, uid)
            if study is None:
                continue
            if study.patient_id is None:
                study.fhir_stale = False  # nothing to keep until it is linked
            elif study.fhir_stale:
                self._write_imaging_study(session, study)
        session.flush()

    def build_series_metadata(self, session: Session, series: Series) -> None:
        """The series' WADO-RS metadata (PS3.18 10.4.1.2) as one gzip JSON array."""
        parts = [
            dicom.decompress_json(z)
            for z in session.scalars(
                select(Instance.metadata_z)
                .where(Instance.series_uid == series.series_uid)
                .order_by(Instance.instance_number, Instance.sop_instance_uid)
            )
        ]
        text = resolve_base(b"[" + b",".join(parts) + b"]", self.base)
        series.metadata_gz = gzip.compress(text, compresslevel=6, mtime=0)
        series.metadata_etag = hashlib.sha256(text).hexdigest()[:32]
        series.metadata_base = self.base

    def _write_imaging_study(self, session: Session, study: Study) -> None:
        self._ensure_endpoint(session)
        view = study_view(session, study)
        resource = self.derive_study(view, self.base, ENDPOINT_ID)
        try:
            self.fhir.read(IMAGING_STUDY, study.study_uid, session=session)
        except NotFound:
            self.fhir.create(IMAGING_STUDY, resource, session=session, resource_id=study.study_uid)
            study.fhir_stale = False
            return
        resource["id"] = study.study_uid
        self.fhir.update(IMAGING_STUDY, study.study_uid, resource, session=session)
        study.fhir_stale = False
        # New images of a study already opened to another hospital (for a referral or a
        # consult): that hospital hears of them (alliance.notify).
        opened = session.scalars(granted_to(IMAGING_STUDY, study.study_uid, clock.now())).all()
        if opened:
            record(
                session,
                "imaging-arrived",
                focus=(IMAGING_STUDY, study.study_uid),
                recipients=[Recipient(h) for h in opened],
                patient_id=study.patient_id,
            )

    def _ensure_endpoint(self, session: Session) -> None:
        wanted = self.derive_endpoint(ENDPOINT_ID, self.base)
        try:
            current = self.fhir.read("Endpoint", ENDPOINT_ID, session=session).resource()
        except NotFound:
            named_lock(session, "imaging-endpoint")
            try:
                self.fhir.read("Endpoint", ENDPOINT_ID, session=session)
            except NotFound:
                self.fhir.create("Endpoint", wanted, session=session, resource_id=ENDPOINT_ID)
            return
        if current.get("address") != wanted["address"]:
            wanted["id"] = ENDPOINT_ID
            self.fhir.update("Endpoint", ENDPOINT_ID, wanted, session=session)

    def link_study(
        self, session: Session, study_uid: str, patient_id: str, *, hospital_id: str
    ) -> None:
        """Reconcile a held study: link it to a Patient its hospital keeps."""
        study_lock(session, study_uid)
        study = session.get(Study, study_uid)
        if study is None or study.hospital_id != hospital_id:
            raise NotFound(f"study {study_uid} is not known")
        patient = session.get(ResourceRow, ("Patient", patient_id))
        if patient is None or patient.deleted or patient.organization_id != hospital_id:
            raise NotFound(f"Patient/{patient_id} is not known")
        if study.patient_id not in (None, patient_id):
            raise Invalid(
                f"study {study_uid} is linked to Patient/{study.patient_id} already",
                rule="study-linked",
            )
        study.patient_id = patient_id
        study.fhir_stale = True
        self.finish(session, [study_uid])

    # ---- sweeping -----------------------------------------------------------------------

    def sweep(self, outcomes: Iterable[tuple[str | None, str | None]]) -> int:
        """Delete the blobs of (study UID, blob key) pairs that no committed row uses.

        Runs under each study's lock, so it cannot remove a blob that a concurrent upload of
        the same bytes is about to index (that upload re-checks the blob under the lock).
        """
        wanted: dict[str, set[str]] = {}
        for study_uid, key in outcomes:
            if key is not None:
                wanted.setdefault(study_uid or "", set()).add(key)
        if not wanted:
            return 0
        removed = 0
        keys = set().union(*wanted.values())
        try:
            with self.db.transaction(write=True) as session:
                for uid in sorted(wanted):
                    study_lock(session, uid)
                used = keys_in_use(session, keys, BLOB_REFERENCES)
                for key in sorted(keys - used):
                    self.blobs.delete(key)
                    removed += 1
        except AllianceError as exc:
            # A clean-up that fails (the store or the database went down) must not replace the
            # answer about the instances: what it leaves is an orphan the age-based sweep
            # (`alliance storage sweep`, and at start-up) removes.
            log.warning(
                "%d unindexed blobs left for the sweep: %s", len(keys) - removed, exc.message
            )
        return removed

    def refresh_stale(self, *, dry_run: bool = False) -> list[str]:
        """Bring every study whose ImagingStudy fell behind its index up to date; return them.

        C-STORE refreshes a study's ImagingStudy when the association ends: a process killed
        before that leaves the study marked stale (numberOfInstances 1 while 50 are indexed).
        """
        with self.db.transaction(write=not dry_run) as session:
            uids = list(
                session.scalars(
                    select(Study.study_uid)
                    .where(Study.fhir_stale.is_(True))
                    .order_by(Study.study_uid)
                )
            )
            if dry_run or not uids:
                return uids
            for uid in uids:
                study_lock(session, uid)
            self.finish(session, uids)
        return uids


#: Why an instance the blob store did not take failed (0xA700), as its sender may read it.
STORE_REFUSED = (
    "the image store cannot take the instance now (unavailable or full); nothing of it was "
    "stored: send it again later"
)

#: Every column whose rows reference a blob: a blob any of them names is never swept. Rendered
#: opinions are attachments too; audit checkpoints are kept by prefix (`server.sweep`).
BLOB_REFERENCES = (Instance.blob_key, Attachment.blob_key)


# ---- patients --------------------------------------------------------------------------------


def _match_once(
    session: Session, hospital_id: str, parsed: Parsed, unmatched: set[tuple[Any, ...]]
) -> str | None:
    """`match_patient`, not asked again for identifiers that matched nothing already."""
    asked = (parsed.patient_id, tuple(parsed.other_patient_ids), parsed.issuer_of_patient_id)
    if asked in unmatched:
        return None
    found = match_patient(session, hospital_id, parsed)
    if found is None:
        unmatched.add(asked)
    return found


def match_patient(session: Session, hospital_id: str, parsed: Parsed) -> str | None:
    """The uploading hospital's Patient this instance is about, or None (see module doc)."""
    for value in [parsed.patient_id, *parsed.other_patient_ids]:
        if not value:
            continue
        try:
            number = parse_identity_number(value).value
        except IdentityNumberError:
            continue
        found = session.scalar(
            select(PatientIdentity.patient_id).where(
                PatientIdentity.organization_id == hospital_id,
                PatientIdentity.identity_number == number,
            )
        )
        if found is not None:
            return found
    issuer = (parsed.issuer_of_patient_id or "").strip()
    mrn_system = f"{HOSPITAL_MRN}/{hospital_id}"
    if parsed.patient_id and issuer in ("", hospital_id, mrn_system):
        return session.scalar(
            select(ResourceRow.id)
            .join(
                TokenIndex,
                and_(
                    TokenIndex.resource_type == ResourceRow.resource_type,
                    TokenIndex.resource_id == ResourceRow.id,
                ),
            )
            .where(
                ResourceRow.resource_type == "Patient",
                ResourceRow.deleted.is_(False),
                ResourceRow.organization_id == hospital_id,
                TokenIndex.param == "identifier",
                TokenIndex.system == mrn_system,
                TokenIndex.code == parsed.patient_id,
            )
            .order_by(ResourceRow.id)
            .limit(1)
        )
    return None


# ---- helpers ---------------------------------------------------------------------------------


def _clip(value: str | None, size: int) -> str | None:
    return value[:size] if value else None


def _fold(value: str | None) -> str | None:
    return fold(value)[:200] if value else None
