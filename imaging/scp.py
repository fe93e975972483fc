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
or malformed UIDs, inconsistent pixel data, another patient); 0xC000 cannot understand (not
parseable as DICOM); 0x0111 duplicate SOP instance with other content; 0x0124 refused, not
authorised (a study kept by another hospital); 0x0110 processing failure.

Each data set is streamed to disk as its P-DATA-TF PDUs arrive (PS3.8 9.3.5 and Annex E):
pynetdicom's chunked receive writes every PDV into a `ReceivedDataSet`, which writes it straight
into the blob store, hashed on the way (as STOW-RS parts are), so an instance of any size costs
the receiver one PDU of memory (and no PDU over `MAX_PDU_BYTES` is read), and its bytes are
written once. Past `max_instance_bytes` nothing more is kept and the C-STORE is answered 0xA700
once the request is complete (there is no way to refuse a C-STORE before then other than
aborting the association). What was written is committed as a blob once checked, or removed
when its C-STORE is answered otherwise, or when the association ends with it half-received.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, StoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer
from sqlalchemy.orm import Session

from alliance.audit.service import AuditActor, AuditInput, append
from alliance.errors import AllianceError, PayloadTooLarge
from alliance.storage import BlobWriter
from alliance.sweep import SPOOL_PREFIXES
from imaging import dicom
from imaging.dicom import Rejected
from imaging.models import Study
from imaging.service import Imaging, Outcome, study_lock

log = logging.getLogger("alliance.dicom")

#: Verification SOP Class (PS3.4 Annex A): C-ECHO, so a PACS can test the link.
VERIFICATION = "1.2.840.10008.1.1"

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


class ReceivedDataSet:
    """One C-STORE data set, written as its P-DATA arrives straight into the blob store: a
    `BlobWriter` (`Imaging.writer`), hashed on the way and committed under its SHA-256 once
    checked, as a STOW-RS part is. The bytes are written once and read once (the check).

    pynetdicom writes the file meta (built from the request's Affected SOP Class and Instance
    UIDs and the presentation context's transfer syntax) and then every data set PDV here, as
    it would into the temporary file it makes itself. Past the limit the writer drops what it
    has and only counts the rest (`over_limit`).
    """

    def __init__(
        self, writer: BlobWriter, on_close: Callable[[ReceivedDataSet], None] | None = None
    ) -> None:
        self.writer = writer
        # pynetdicom gives the data set's path to the handler by this name; a writer the store
        # refused has no file, and its name then only finds it here.
        self.name = str(writer.path) if writer.path is not None else f"refused-{uuid.uuid4()}"
        self._on_close = on_close

    def __bool__(self) -> bool:
        return True  # pynetdicom tests the file for truth before writing to it

    @property
    def file(self) -> ReceivedDataSet:
        return self  # pynetdicom flushes `file` after each PDV: see `flush`

    def flush(self) -> None:
        """Nothing to do: the bytes are read only once the data set is complete and closed, and
        made durable when the blob is committed."""

    def write(self, data: bytes) -> int:
        self.writer.write(data)
        return len(data)

    @property
    def over_limit(self) -> bool:
        return isinstance(self.writer.error, PayloadTooLarge)

    def close(self) -> None:
        """All of the data set has arrived (or none more will)."""
        self.writer.finish()
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None

    def discard(self) -> None:
        """Drop what was written, unless it was committed as a blob."""
        self.close()
        self.writer.discard()


#: Largest PDU read from a peer. pynetdicom reads a PDU whole, of whatever length its header
#: declares; the receiver's Maximum Length Received (PS3.8 D.1, `RECEIVE_PDU_BYTES`) bounds
#: what a P-DATA-TF may hold, and an A-ASSOCIATE-RQ with every presentation context and a user
#: identity fits well within this.
MAX_PDU_BYTES = 1024 * 1024
#: The Maximum Length Received this receiver proposes (PS3.8 D.1.1): a sender cuts each data
#: set into P-DATA-TF PDUs of at most this. pynetdicom's default of 16 KiB turns a 512x512 CT
#: slice into 33 PDUs, each decoded and dispatched in Python; 256 KiB makes it 3, for one PDU
#: held per association.
RECEIVE_PDU_BYTES = 256 * 1024


class _BoundedSocket(AssociationSocket):
    """An association's socket that refuses to read a PDU over `MAX_PDU_BYTES`: pynetdicom takes
    it as the transport connection closing (the state machine of PS3.8 9.2) and ends the
    association, before a byte of the PDU's value is held."""

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PDU_BYTES:
            raise OSError(f"a PDU of {nr_bytes} bytes is over the {MAX_PDU_BYTES} read here")
        return super().recv(nr_bytes)


class _ReceivingAE(AE):
    """The receiver's Application Entity, which knows its `StorageSCP` so that the spool file
    of a data set arriving on one of its associations is made by that receiver."""

    def __init__(self, ae_title: str, receiver: StorageSCP) -> None:
        super().__init__(ae_title=ae_title)
        self.receiver = receiver


def _spool_file(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the `NamedTemporaryFile` pynetdicom's chunked receive makes a data set's
    file with (pynetdicom.dimse_messages.DIMSEMessage.decode_msg, which runs in the receiving
    association's DUL thread): on an association of an alliance receiver, a `ReceivedDataSet`
    of that receiver; elsewhere, what pynetdicom would have made."""
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        ae = thread.assoc.ae
        if isinstance(ae, _ReceivingAE):
            return ae.receiver.spool_for(thread.assoc)
    return tempfile.NamedTemporaryFile(*args, **kwargs)


def _receive_to_disk() -> None:
    """Turn on pynetdicom's chunked receive (STORE_RECV_CHUNKED_DATASET, pynetdicom >= 2.0),
    with its data set files made by `_spool_file`. Process-wide: this process's only SCP is
    this receiver, and an SCP of anyone else gets pynetdicom's own behaviour from it."""
    if not hasattr(dimse_messages, "NamedTemporaryFile"):
        raise RuntimeError("this pynetdicom does not make C-STORE files where expected")
    dimse_messages.NamedTemporaryFile = _spool_file
    _config.STORE_RECV_CHUNKED_DATASET = True


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
        _receive_to_disk()
        self.ae = _ReceivingAE(ae_title, self)
        self.ae.require_calling_aet = list(self.calling_aes)
        for context in StoragePresentationContexts:
            assert context.abstract_syntax is not None
            self.ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(VERIFICATION)
        self.ae.maximum_associations = 16
        self.ae.maximum_pdu_size = RECEIVE_PDU_BYTES
        self._server: ThreadedAssociationServer | None = None
        # Studies touched per association, to refresh when it ends; lives only as long as the
        # association, which belongs to this process anyway.
        self._touched: dict[int, set[str]] = {}
        # Data sets being received, by spool file name, with the association receiving each.
        self._receiving: dict[str, tuple[int, ReceivedDataSet]] = {}
        self._lock = threading.Lock()

    def start(self, host: str, port: int, *, block: bool = False) -> None:
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_connect),
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

    def spool_for(self, assoc: object) -> ReceivedDataSet:
        """Where a data set arriving on `assoc` is written (see `_spool_file`)."""
        writer = self.imaging.writer(
            spool_prefix=SPOOL_PREFIXES[1], max_bytes=self.max_instance_bytes
        )
        spool = ReceivedDataSet(writer, self._forget)
        with self._lock:
            self._receiving[spool.name] = (id(assoc), spool)
        return spool

    def _forget(self, spool: ReceivedDataSet) -> None:
        with self._lock:
            self._receiving.pop(spool.name, None)

    # ---- handlers ---------------------------------------------------------------------

    def _on_connect(self, event: Event) -> None:
        """Every connection reads its PDUs through a `_BoundedSocket` (set before the
        association's first read: pynetdicom signals the connection, then starts reading)."""
        sock = event.assoc.dul.socket
        if type(sock) is AssociationSocket:
            sock.__class__ = _BoundedSocket

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
        spool: ReceivedDataSet | None = None
        outcome: Outcome
        try:
            spool = self._received(event)
            outcome = self._ingest(spool.writer, hospital, actor, address, id(event.assoc))
        except Rejected as exc:
            outcome = Outcome.rejected(exc)
            self._audit_failure(actor, address, outcome)
        except Exception:
            log.exception("C-STORE from %s failed", actor.username)
            outcome = Outcome(dicom.PROCESSING_FAILURE, "internal error")
            self._audit_failure(actor, address, outcome)
        finally:
            if spool is not None:
                spool.discard()
        return outcome.status

    def _received(self, event: Event) -> ReceivedDataSet:
        """The request's data set, received as a PS3.10 file: preamble, file meta, then the
        bytes exactly as sent (they are what is stored and served); complete and closed."""
        try:
            name = str(event.dataset_path)
        except AttributeError:
            name = ""
        with self._lock:
            _assoc, spool = self._receiving.get(name, (0, None))
        if spool is None:
            raise Rejected(dicom.CANNOT_UNDERSTAND, "a C-STORE request without a data set")
        if spool.over_limit:
            spool.discard()
            raise Rejected(
                dicom.OUT_OF_RESOURCES,
                f"the instance is over the size limit of {self.max_instance_bytes} bytes",
            )
        spool.close()
        return spool

    def _ingest(
        self, written: BlobWriter, hospital: str, actor: AuditActor, address: str | None, assoc: int
    ) -> Outcome:
        imaging = self.imaging
        staged = imaging.stage_written(written)
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
        assoc = id(event.assoc)
        with self._lock:
            studies = self._touched.pop(assoc, set())
            # A data set cut off by an abort or a dropped connection is never handed to
            # `_on_store`; pynetdicom leaves its file behind.
            unfinished = [spool for a, spool in self._receiving.values() if a == assoc]
        for spool in unfinished:
            spool.discard()
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
