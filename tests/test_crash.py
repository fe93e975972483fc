"""kill -9 in the middle of uploads, then a restart (issue 11, section 3, acceptance).

`alliance serve` runs in a process of its own (tests/conftest.py `serving`) with the start-up
sweep on and no age threshold, and a temporary folder of its own for spool files. Several
STOW-RS clients send many instances at once, one of them stopping in the middle of a part, or a
pynetdicom SCU sends 60 instances on one association; the server is killed with SIGKILL while
they do, and started again. Then, on SQLite and PostgreSQL, on the file store and on S3
(SeaweedFS):

- nothing acknowledged was lost: every instance a response or C-STORE status said was stored
  is indexed;
- every indexed instance's blob is there and its SHA-256 is the one indexed;
- no orphan is left: every blob is referenced by an index row or an attachment (or is an audit
  checkpoint), and nothing half-written remains;
- each study's ImagingStudy counts its instances and series as the index does;
- no spool file remains;
- `alliance audit verify` passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from alliance.config import Settings, get_settings
from alliance.db import Database
from alliance.storage import (
    CONTENT_PREFIX,
    BlobStore,
    FileBlobStore,
    content_key,
    open_blob_store,
)
from alliance.sweep import SPOOL_PREFIXES
from imaging.models import Instance, Series, Study
from imaging.service import BLOB_REFERENCES
from server.cli import main
from server.sweep import KEPT_PREFIXES
from tests.conftest import bearer, free_port, serving
from tests.imaging_data import ct_slice, encode, multipart, part_start, stow_headers
from tests.s3server import S3Server

BOUNDARY = "alliance-test-boundary"
STORED, SOP_INSTANCE = "00081199", "00081155"
#: STOW-RS clients sending whole bodies, requests each, instances a request.
CLIENTS, REQUESTS, PER_REQUEST = 3, 6, 12
#: The client that stops in the middle of a part: complete parts before it stops.
PAUSED_PARTS = 6
CSTORE_INSTANCES = 60
#: The SCU's C-STOREs acknowledged before the kill.
CSTORE_BEFORE_KILL = 20
WAIT_S = 60.0


def _storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "s3":
        server: S3Server = request.getfixturevalue("s3")
        return server.url_for(f"crash-{uuid.uuid4().hex[:12]}")
    return (tmp_path / "blobs").as_uri()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _until(what: str, done: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    """Wait for a condition the server brings about (not a timed assertion: a stuck wait)."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the server exited before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT_S:.0f} s for {what}")
        time.sleep(0.02)


def _slices(count: int, study: str, side: int = 32) -> list[bytes]:
    series = generate_uid()
    return [
        encode(ct_slice(study_uid=study, series_uid=series, number=n + 1, rows=side, columns=side))
        for n in range(count)
    ]


@dataclass
class Acknowledged:
    """SOP Instance UIDs the server said it stored, gathered from every client."""

    uids: set[str] = field(default_factory=set)
    responses: int = 0
    #: Answers other than 200 (asserted empty by the test: a thread cannot fail it).
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, r: httpx.Response) -> None:
        with self.lock:
            if r.status_code != 200:
                self.unexpected.append(f"{r.status_code} {r.text[:300]}")
                return
            self.uids.update(i[SOP_INSTANCE]["Value"][0] for i in r.json()[STORED]["Value"])
            self.responses += 1


def _stow_client(url: str, token: dict[str, str], bodies: list[bytes], acked: Acknowledged) -> None:
    with httpx.Client(headers={**token, **stow_headers(BOUNDARY)}, timeout=WAIT_S) as client:
        for body in bodies:
            try:
                r = client.post(f"{url}/dicomweb/studies", content=body)
            except httpx.TransportError:
                return  # the server was killed
            acked.add(r)


@dataclass
class Paused:
    """A STOW-RS body that stops in the middle of a part until released."""

    parts: list[bytes]
    sent: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def chunks(self) -> Iterator[bytes]:
        body = multipart(self.parts, BOUNDARY)
        cut = part_start(body, PAUSED_PARTS, BOUNDARY) + len(self.parts[PAUSED_PARTS]) // 2
        yield body[:cut]
        self.sent.set()
        self.release.wait(WAIT_S)
        yield body[cut:]

    def spooled(self, spool: Path, store: Path) -> bool:
        """Whether the server holds the half-sent part in a file: a spool file in the
        temporary folder (S3), or the blob being written in the directory store's staging
        folder, `sha256/.put-*.tmp` (a part goes straight into a directory store). The file is
        written through a buffer (8 KiB), so the parts are 32 KiB and 4 KiB of the half is
        enough to tell it from the parts of other requests, which differ within their first
        bytes."""
        part = self.parts[PAUSED_PARTS]
        found = [*spool.glob(f"{SPOOL_PREFIXES[0]}*"), *store.glob(".put-*.tmp")]
        for path in found:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # another request's part, staged meanwhile
            if len(data) >= 4096 and part.startswith(data):
                return True
        return False

    def send(self, url: str, token: dict[str, str]) -> None:
        # The server is killed while this waits: the request never gets an answer.
        with contextlib.suppress(httpx.TransportError):
            httpx.post(
                f"{url}/dicomweb/studies",
                content=self.chunks(),
                headers={**token, **stow_headers(BOUNDARY)},
                timeout=WAIT_S,
            )


def _spool_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.name.startswith(SPOOL_PREFIXES))


def _stored_keys(blobs: BlobStore) -> set[str]:
    """Every object in the store; on the file store every file, hidden ones included."""
    if isinstance(blobs, FileBlobStore):
        root = blobs.root
        return {
            (Path(d) / name).relative_to(root).as_posix()
            for d, _, names in os.walk(root)
            for name in names
        }
    return set(blobs.list_keys())


def _referenced(db: Database) -> set[str]:
    with db.transaction() as session:
        return {k for column in BLOB_REFERENCES for k in session.scalars(select(column))}


def _serve(
    settings: Settings, tmp_path: Path, name: str, spool: Path, **env: str
) -> AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    return serving(
        settings,
        tmp_path / f"{name}.log",
        TMPDIR=str(spool),
        ALLIANCE_SWEEP_ON_START="true",
        ALLIANCE_SWEEP_MIN_AGE_SECONDS="0",
        **env,
    )


def _check_after_restart(
    settings: Settings,
    tmp_path: Path,
    spool: Path,
    acked: set[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Restart, let the start-up sweep run, and hold the store, index and trail to account."""
    db = Database(settings.database_url)
    blobs = open_blob_store(settings.storage_url)
    try:
        with _serve(settings, tmp_path, "restart", spool, **env) as (url, _proc):
            assert _spool_files(spool) == []
            with db.transaction() as session:
                rows = list(session.scalars(select(Instance)))
                studies = list(session.scalars(select(Study)))
                series = dict(
                    session.execute(
                        select(Series.study_uid, func.count()).group_by(Series.study_uid)
                    ).all()
                )
            assert acked <= {r.sop_instance_uid for r in rows}
            for row in rows:
                data = blobs.read(row.blob_key)
                assert row.blob_key == content_key(row.sha256)
                assert _sha(data) == row.sha256 and len(data) == row.size_bytes
            stored = _stored_keys(blobs)
            kept = {k for k in stored if k.startswith(KEPT_PREFIXES)}
            assert stored - kept == _referenced(db)
            token = bearer(settings, "dr.xinyuan.people")
            for study in studies:
                count = sum(1 for r in rows if r.study_uid == study.study_uid)
                assert (study.number_of_instances, study.number_of_series) == (
                    count,
                    series[study.study_uid],
                )
                r = httpx.get(f"{url}/fhir/ImagingStudy/{study.study_uid}", headers=token)
                assert r.status_code == 200, r.text
                resource = r.json()
                assert (resource["numberOfInstances"], resource["numberOfSeries"]) == (
                    count,
                    series[study.study_uid],
                )
                for entry in resource["series"]:
                    in_series = sum(1 for r in rows if r.series_uid == entry["uid"])
                    assert entry["numberOfInstances"] == in_series
    finally:
        db.dispose()
    # `alliance audit verify`, in this process (the command's code; no second interpreter).
    for name, value in (
        ("ALLIANCE_DATABASE_URL", settings.database_url),
        ("ALLIANCE_STORAGE_URL", settings.storage_url),
        ("ALLIANCE_DEMO", "true"),
    ):
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        code = main(["audit", "verify"])
    finally:
        get_settings.cache_clear()
    said = capsys.readouterr()
    assert code == 0, said.out + said.err
    assert "audit trail intact" in said.out


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_kill_9_in_the_middle_of_stow(
    backend: str,
    settings: Settings,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings.model_copy(update={"storage_url": _storage(backend, tmp_path, request)})
    spool = tmp_path / "spool"
    spool.mkdir()
    token = bearer(settings, "dr.xinyuan.people")
    bodies = []
    for _ in range(CLIENTS):
        study = generate_uid()
        bodies.append([multipart(_slices(PER_REQUEST, study), BOUNDARY) for _ in range(REQUESTS)])
    paused = Paused(_slices(PAUSED_PARTS + 4, generate_uid(), side=128))
    acked = Acknowledged()
    blobs = open_blob_store(settings.storage_url)
    db = Database(settings.database_url)
    try:
        with _serve(settings, tmp_path, "killed", spool) as (url, proc):
            threads = [
                threading.Thread(target=_stow_client, args=(url, token, b, acked)) for b in bodies
            ]
            threads.append(threading.Thread(target=paused.send, args=(url, token)))
            for t in threads:
                t.start()
            orphans = {content_key(_sha(p)) for p in paused.parts[:PAUSED_PARTS]}
            _until("the paused client's parts are sent", paused.sent.is_set, proc)
            _until(
                "the paused client's parts are stored",
                lambda: all(blobs.exists(k) for k in orphans),
                proc,
            )
            staging = tmp_path / "blobs" / CONTENT_PREFIX
            _until("the half-sent part is spooled", lambda: paused.spooled(spool, staging), proc)
            _until("two requests are answered", lambda: acked.responses >= 2, proc)
            proc.kill()
            proc.wait()
            paused.release.set()
            for t in threads:
                t.join(WAIT_S)
        # What the kill left: blobs no row references, and the paused part's spool file.
        assert acked.unexpected == []
        assert orphans <= _stored_keys(blobs) - _referenced(db)
        assert paused.spooled(spool, staging)
        assert acked.responses < CLIENTS * REQUESTS, "the kill came after every request"
    finally:
        db.dispose()
    _check_after_restart(settings, tmp_path, spool, acked.uids, {}, monkeypatch, capsys)


@dataclass
class Scu:
    """A modality sending one study on one association until the connection breaks."""

    port: int
    slices: list[Dataset]
    acked: list[str] = field(default_factory=list)
    #: Statuses other than success (asserted empty by the test: a thread cannot fail it).
    unexpected: list[str] = field(default_factory=list)

    def send(self) -> None:
        ae = AE(ae_title="XYPEOPLE")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT_S
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="ALLIANCE")
        if not assoc.is_established:
            self.unexpected.append("association not established")
            return
        for ds in self.slices:
            try:
                status = assoc.send_c_store(ds)
            except RuntimeError:
                return  # the server was killed: the association is gone
            if "Status" not in status:
                return  # no answer: the connection broke
            if status.Status != 0x0000:
                self.unexpected.append(f"0x{status.Status:04X}")
                return
            self.acked.append(ds.SOPInstanceUID)
        assoc.release()


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_kill_9_in_the_middle_of_a_cstore_association(
    backend: str,
    settings: Settings,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings.model_copy(update={"storage_url": _storage(backend, tmp_path, request)})
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {"ALLIANCE_DICOM_PORT": str(free_port())}
    study, series = generate_uid(), generate_uid()
    slices = [
        ct_slice(study_uid=study, series_uid=series, number=n + 1, rows=32, columns=32)
        for n in range(CSTORE_INSTANCES)
    ]
    scu = Scu(int(env["ALLIANCE_DICOM_PORT"]), slices)
    db = Database(settings.database_url)
    try:
        with _serve(settings, tmp_path, "killed", spool, **env) as (_url, proc):
            thread = threading.Thread(target=scu.send)
            thread.start()
            _until("C-STOREs are acknowledged", lambda: len(scu.acked) >= CSTORE_BEFORE_KILL, proc)
            proc.kill()
            proc.wait()
            thread.join(WAIT_S)
        assert scu.unexpected == []
        assert CSTORE_BEFORE_KILL <= len(scu.acked) < CSTORE_INSTANCES
        # The kill came before the association's end refreshed the study: it is stale.
        with db.transaction() as session:
            killed = session.get(Study, study)
            assert killed is not None and killed.fhir_stale
    finally:
        db.dispose()
    _check_after_restart(settings, tmp_path, spool, set(scu.acked), env, monkeypatch, capsys)
