"""The DICOM C-STORE receiver (PS3.4 Annex B Storage Service Class; PS3.7 9.1.1 C-STORE;
PS3.8 association negotiation), for county PACS and modalities.

Each hospital's calling AE titles are configured (ALLIANCE_DICOM_CALLING_AES); pynetdicom
refuses an association from any other calling AE title (A-ASSOCIATE-RJ, "calling AE title not
recognised", PS3.8 7.1.1.9), and the refusal is audited. An accepted association stores for
the hospital its AE title belongs to, through the same ingest as STOW-RS (imaging.service):
each C-STORE writes its rows and an AuditEvent in one transaction. The FHIR ImagingStudy of a
new study is created with its first instance; metadata and the ImagingStudy are brought up to
date when the association ends (and by any later ingest of the study).

Status codes (PS3.4 B.2.3, PS3.7 C): 0x0000 success; 0xA700 out of resources (blob store or
database unavailable, instance too large); 0xA900 data set does not match SOP Class (missing
or malformed UIDs, inconsistent pixel data, another patient); 0xC211 cannot understand (not
parseable as DICOM); 0x0111 duplicate SOP instance with other content; 0x0124 refused, not
authorised (a study kept by another hospital); 0x0110 processing failure.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session

from alliance.audit.service import AuditActor, AuditInput, append
from alliance.errors import AllianceError
from alliance.sweep import SPOOL_PREFIXES
from imaging import dicom
from imaging.dicom import Rejected
from imaging.models import Study
from imaging.service import Imaging, Outcome, study_lock

log = logging.getLogger("alliance.dicom")

#: Verification SOP Class (PS3.4 Annex A): C-ECHO, so a PACS can test the link.
VERIFICATION = "1.2.840.10008.1.1"
#: "Cannot understand" as the C-STORE receiver reports it (PS3.4 B.2.3, 0xCxxx).
CANNOT_UNDERSTAND = 0xC211

#: Transfer syntaxes accepted for every storage SOP class: the uncompressed ones and every
#: compressed one stored as received (nothing is transcoded on the way in).
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.5",
]


def _status(outcome_status: int) -> int:
    return CANNOT_UNDERSTAND if outcome_status == dicom.CANNOT_UNDERSTAND else outcome_status


class StorageSCP:
    """A pynetdicom Application Entity receiving C-STORE for the alliance."""

    def __init__(
        self,
        imaging: Imaging,
        *,
        ae_title: str,
        calling_aes: dict[str, str],
        max_instance_bytes: int,
    ) -> None:
        self.imaging = imaging
        self.calling_aes = dict(calling_aes)
        self.max_instance_bytes = max_instance_bytes
        self.ae = AE(ae_title=ae_title)
        self.ae.require_calling_aet = list(self.calling_aes)
        for context in StoragePresentationContexts:
            assert context.abstract_syntax is not None
            self.ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(VERIFICATION)
        self.ae.maximum_associations = 16
        self._server: ThreadedAssociationServer | None = None
        # Studies touched per association, to refresh when it ends; lives only as long as the
        # association, which belongs to this process anyway.
        self._touched: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def start(self, host: str, port: int, *, block: bool = False) -> None:
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        if block:
            self.ae.start_server((host, port), block=True, evt_handlers=handlers)
            return
        self._server = self.ae.start_server((host, port), block=False, evt_handlers=handlers)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the C-STORE receiver is not started")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # ---- handlers ---------------------------------------------------------------------

    def _actor(self, event: Event) -> tuple[AuditActor, str | None]:
        calling = str(event.assoc.requestor.ae_title).strip()
        hospital = self.calling_aes.get(calling)
        return (
            AuditActor(f"dicom:{calling}", hospital, "hospital-system", None, "client"),
            event.assoc.requestor.address,
        )

    def _on_store(self, event: Event) -> int:
        actor, address = self._actor(event)
        hospital = actor.hospital_id
        if hospital is None:  # cannot happen: require_calling_aet refused it
            return dicom.NOT_AUTHORISED
        path: Path | None = None
        outcome: Outcome
        try:
            path = self._spool(event)
            outcome = self._ingest(path, hospital, actor, address, id(event.assoc))
        except Rejected as exc:
            outcome = Outcome.rejected(exc)
            self._audit_failure(actor, address, outcome)
        except Exception:
            log.exception("C-STORE from %s failed", actor.username)
            outcome = Outcome(dicom.PROCESSING_FAILURE, "internal error")
            self._audit_failure(actor, address, outcome)
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        return _status(outcome.status)

    def _spool(self, event: Event) -> Path:
        """The received data set as a PS3.10 file: preamble, file meta, then the bytes exactly
        as sent (they are what is stored and served)."""
        request = event.request
        if not isinstance(request, C_STORE) or request.DataSet is None:
            raise Rejected(dicom.CANNOT_UNDERSTAND, "a C-STORE request without a data set")
        encoded = request.DataSet.getvalue()
        if len(encoded) > self.max_instance_bytes:
            raise Rejected(dicom.OUT_OF_RESOURCES, "the instance is over the size limit")
        meta = event.file_meta
        fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIXES[1], suffix=".dcm")
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\x00" * 128 + b"DICM")
            out = DicomFileLike(handle)
            out.is_little_endian, out.is_implicit_VR = True, False
            write_file_meta_info(out, meta, enforce_standard=True)
            handle.write(encoded)
        return Path(name)

    def _ingest(
        self, path: Path, hospital: str, actor: AuditActor, address: str | None, assoc: int
    ) -> Outcome:
        imaging = self.imaging
        staged = imaging.stage(path)
        try:
            with imaging.db.transaction(write=True) as session:
                outcome = imaging.index(session, [staged], hospital_id=hospital)[0]
                if outcome.ok and outcome.study_uid:
                    self._note(assoc, outcome.study_uid)
                    self._create_if_new(session, outcome.study_uid)
                self._audit(session, actor, address, outcome)
        except AllianceError as exc:
            imaging.sweep([(staged.parsed.study_uid, staged.blob.key)])
            status = dicom.OUT_OF_RESOURCES if exc.status == 503 else dicom.PROCESSING_FAILURE
            failed = Outcome(status, exc.message, sop_instance_uid=staged.parsed.sop_instance_uid)
            self._audit_failure(actor, address, failed)
            return failed
        except BaseException:
            imaging.sweep([(staged.parsed.study_uid, staged.blob.key)])
            raise
        if not outcome.ok:
            imaging.sweep([(staged.parsed.study_uid, staged.blob.key)])
        return outcome

    def _create_if_new(self, session: Session, study_uid: str) -> None:
        """A study's first instance makes its ImagingStudy at once, so who may see the study
        is decided by the same rules from the first instance on (imaging.service)."""
        study = session.get(Study, study_uid)
        if study is not None and study.number_of_instances == 1:
            self.imaging.finish(session, [study_uid])

    def _note(self, assoc: int, study_uid: str) -> None:
        with self._lock:
            self._touched.setdefault(assoc, set()).add(study_uid)

    def _on_end(self, event: Event) -> None:
        with self._lock:
            studies = self._touched.pop(id(event.assoc), set())
        if not studies:
            return
        try:
            with self.imaging.db.transaction(write=True) as session:
                for uid in sorted(studies):
                    study_lock(session, uid)
                self.imaging.finish(session, studies)
        except Exception:
            # The next ingest of the study, or the next metadata request, catches up.
            log.exception("refreshing studies after an association failed")

    def _on_rejected(self, event: Event) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        self._audit_event(
            AuditInput(
                type="security",
                subtype="dicom-association-rejected",
                action="E",
                outcome="4",
                actor=AuditActor(f"dicom:{calling}", None, None, None, "client"),
                client_address=event.assoc.requestor.address,
                description=f"association from calling AE {calling!r} refused: not configured",
            )
        )

    # ---- audit ------------------------------------------------------------------------

    def _input(self, actor: AuditActor, address: str | None, outcome: Outcome) -> AuditInput:
        return AuditInput(
            type="transfer",
            subtype="store",
            action="C",
            outcome="0" if outcome.ok else "4",
            actor=actor,
            client_address=address,
            entity=f"ImagingStudy/{outcome.study_uid}" if outcome.study_uid else None,
            patient_id=outcome.patient_id,
            description=None if outcome.ok else f"status 0x{outcome.status:04X}: {outcome.reason}",
        )

    def _audit(
        self, session: Session, actor: AuditActor, address: str | None, outcome: Outcome
    ) -> None:
        append(session, [self._input(actor, address, outcome)])

    def _audit_failure(self, actor: AuditActor, address: str | None, outcome: Outcome) -> None:
        self._audit_event(self._input(actor, address, outcome))

    def _audit_event(self, event: AuditInput) -> None:
        try:
            with self.imaging.db.transaction(write=True) as session:
                append(session, [event])
        except Exception:
            log.exception("could not audit a DICOM event: %s", event)
