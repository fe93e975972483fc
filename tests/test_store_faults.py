"""The blob store failing in the middle of an upload (issue 11, section 3): the instances it took
before are kept and indexed, each one after fails on its own (0xA700 Out of Resources, PS3.4
B.2.3; in the STOW-RS FailedSOPSequence, PS3.18 10.5.3), the association or request goes on,
and no answer names the store's endpoint, folders or keys.

The faults are real: a SeaweedFS of the test's own is stopped between two parts of one request
(or two C-STOREs of one association) and started again on the same data; the file store sits on
a small tmpfs that is filled up or remounted read-only (permission bits would not stop root).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from alliance.config import Settings
from alliance.db import Database
from alliance.storage import CONTENT_PREFIX, BlobStore, content_key
from imaging import dicom
from imaging.models import Instance
from imaging.service import STORE_REFUSED
from server.app import create_app
from server.dicom import build_scp
from server.sweep import sweep
from tests.conftest import LiveServer, bearer, skip_or_fail
from tests.imaging_data import (
    ct_series,
    encode,
    multipart,
    part_start,
    split_multipart,
    stow_headers,
)
from tests.s3server import S3Server, WeedNotFound, find_weed, seaweedfs_s3

BOUNDARY = "alliance-test-boundary"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STORED, FAILED = "00081199", "00081198"
SOP_INSTANCE, FAILURE_REASON = "00081155", "00081197"


@pytest.fixture
def weed() -> Iterator[S3Server]:
    """A SeaweedFS of this test's own: stopping it breaks no other test."""
    try:
        find_weed()
    except WeedNotFound as exc:
        skip_or_fail(f"S3 faults not tested: {exc}")
    with seaweedfs_s3() as server:
        yield server


def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tampered(data: bytes) -> bytes:
    """The same SOP Instance with other bytes: stored, then refused when indexed (0x0111)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SeriesDescription = "sent again, changed"
    return encode(ds)


def _stow_with_fault(
    url: str, token: dict[str, str], parts: list[bytes], before: int, fault: Callable[[], None]
) -> httpx.Response:
    """One STOW-RS request over real HTTP whose body stops after `before` complete parts,
    runs `fault`, then sends the rest."""
    body = multipart(parts, BOUNDARY)
    cut = part_start(body, before, BOUNDARY)

    def chunks() -> Iterator[bytes]:
        yield body[:cut]
        fault()
        yield body[cut:]

    return httpx.post(
        f"{url}/dicomweb/studies",
        content=chunks(),
        headers={**token, **stow_headers(BOUNDARY)},
        timeout=120,
    )


def _wait_for_blobs(blobs: BlobStore, count: int) -> None:
    """Until the store holds `count` content blobs: the server has taken the parts sent."""
    deadline = time.monotonic() + 60
    while len(list(blobs.list_keys(f"{CONTENT_PREFIX}/"))) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not store {count} blobs")
        time.sleep(0.05)


def _outcomes(r: httpx.Response) -> tuple[list[str], list[tuple[str, int]]]:
    body = r.json()
    stored = [i[SOP_INSTANCE]["Value"][0] for i in body.get(STORED, {}).get("Value", [])]
    failed = [
        (i[SOP_INSTANCE]["Value"][0], i[FAILURE_REASON]["Value"][0])
        for i in body.get(FAILED, {}).get("Value", [])
    ]
    return stored, failed


def _indexed(settings: Settings) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of every indexed instance."""
    db = Database(settings.database_url)
    try:
        with db.transaction() as session:
            return {i.sop_instance_uid: i.sha256 for i in session.query(Instance)}
    finally:
        db.dispose()


@pytest.mark.s3
def test_s3_down_in_the_middle_of_stow(database_url: str, weed: S3Server) -> None:
    storage = weed.url_for(f"fault-{uuid.uuid4().hex[:12]}")
    series = ct_series(9)
    first, later, after = series[0], series[1:5], series[5:]
    with LiveServer(database_url, storage) as live:
        token = bearer(live.settings, "dr.xinyuan.people")
        blobs: BlobStore = live.app.state.services.blobs
        r = httpx.post(
            f"{live.url}/dicomweb/studies",
            content=multipart([first], BOUNDARY),
            headers={**token, **stow_headers(BOUNDARY)},
        )
        assert r.status_code == 200, r.text
        changed = _tampered(first)

        def outage() -> None:
            _wait_for_blobs(blobs, 2 + len(later))
            weed.stop()

        r = _stow_with_fault(live.url, token, [changed, *later, *after], 1 + len(later), outage)
        assert r.status_code == 202, r.text
        stored, failed = _outcomes(r)
        assert stored == [_uid(p) for p in later]
        assert sorted(failed) == sorted(
            [(_uid(first), dicom.DUPLICATE_INSTANCE)]
            + [(_uid(p), dicom.OUT_OF_RESOURCES) for p in after]
        )
        assert weed.endpoint not in r.text and CONTENT_PREFIX not in r.text

        # Still down: a request none of whose instances the store takes is Busy, not Conflict.
        more = ct_series(2)
        r = httpx.post(
            f"{live.url}/dicomweb/studies",
            content=multipart(more, BOUNDARY),
            headers={**token, **stow_headers(BOUNDARY)},
            timeout=60,
        )
        assert r.status_code == 503, r.text
        assert _outcomes(r) == ([], [(_uid(p), dicom.OUT_OF_RESOURCES) for p in more])
        assert weed.endpoint not in r.text and CONTENT_PREFIX not in r.text

        indexed = {_uid(p): _sha(p) for p in [first, *later]}
        assert _indexed(live.settings) == indexed
        weed.restart()
        # What was taken before the outage is served byte for byte.
        ds = pydicom.dcmread(io.BytesIO(first))
        study = f"{live.url}/dicomweb/studies/{ds.StudyInstanceUID}"
        got = httpx.get(study, headers={**token, "Accept": ANY_SYNTAX}, timeout=60)
        assert got.status_code == 200
        served = split_multipart(got.headers["content-type"], got.content)
        assert sorted(_sha(payload) for _, payload in served) == sorted(indexed.values())
        fhir = httpx.get(f"{live.url}/fhir/ImagingStudy/{ds.StudyInstanceUID}", headers=token)
        assert fhir.json()["numberOfInstances"] == len(indexed)
        # The changed copy's clean-up could not reach the store: the sweep takes it later.
        keys = set(blobs.list_keys(f"{CONTENT_PREFIX}/"))
        orphan = content_key(_sha(changed))
        assert keys == {content_key(h) for h in indexed.values()} | {orphan}
        services = live.app.state.services
        report = sweep(services.db, blobs, live.app.state.imaging, 0, dry_run=False)
        assert report.blobs == [orphan]
        assert set(blobs.list_keys(f"{CONTENT_PREFIX}/")) == keys - {orphan}


def _associate(port: int) -> object:
    ae = AE(ae_title="XYPEOPLE_CT")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="ALLIANCE")


@pytest.mark.s3
def test_s3_down_in_the_middle_of_a_cstore_association(settings: Settings, weed: S3Server) -> None:
    settings = settings.model_copy(
        update={
            "storage_url": weed.url_for(f"fault-{uuid.uuid4().hex[:12]}"),
            "dicom_calling_aes": "XYPEOPLE_CT=xy-people",
        }
    )
    receiver = build_scp(settings)
    receiver.start("127.0.0.1", 0)
    try:
        slices = [pydicom.dcmread(io.BytesIO(p)) for p in ct_series(8)]
        assoc = _associate(receiver.port)
        assert assoc.is_established  # type: ignore[attr-defined]
        before = [assoc.send_c_store(ds).Status for ds in slices[:5]]  # type: ignore[attr-defined]
        weed.stop()
        during = [assoc.send_c_store(ds).Status for ds in slices[5:]]  # type: ignore[attr-defined]
        # The association survives the outage: it still answers.
        assert assoc.is_established  # type: ignore[attr-defined]
        assert assoc.send_c_echo().Status == 0  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
        assert before == [0x0000] * 5
        assert during == [dicom.OUT_OF_RESOURCES] * 3
        weed.restart()
    finally:
        receiver.stop()
        receiver.imaging.db.dispose()
    assert _indexed(settings).keys() == {ds.SOPInstanceUID for ds in slices[:5]}
    app = create_app(settings)
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            study = slices[0].StudyInstanceUID
            got = client.get(f"/dicomweb/studies/{study}", headers={"Accept": ANY_SYNTAX})
            assert got.status_code == 200
            served = split_multipart(got.headers["content-type"], got.content)
            assert len(served) == 5
        with TestClient(app, headers=bearer(settings, "auditor")) as auditor:
            events = auditor.get(
                "/fhir/AuditEvent", params={"subtype": "store", "outcome": "4"}
            ).json()["entry"]
        descriptions = [e["resource"]["outcomeDesc"] for e in events]
        assert descriptions == [f"status 0xA700: {STORE_REFUSED}"] * 3
        assert weed.endpoint not in STORE_REFUSED and CONTENT_PREFIX not in STORE_REFUSED
    finally:
        app.state.services.db.dispose()


@contextmanager
def _small_disk(path: Path) -> Iterator[None]:
    """A 4 MiB tmpfs at `path`: a disk that can really fill up or turn read-only."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a small disk for the blob store: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _fill(root: Path) -> Path:
    filler = root / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_file_store_full_or_read_only_in_the_middle_of_stow(
    fault: str, database_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "blobs"
    series = ct_series(7)
    taken, refused = series[:4], series[4:]
    with _small_disk(root), LiveServer(database_url, root.as_uri()) as live:
        token = bearer(live.settings, "dr.xinyuan.people")
        blobs: BlobStore = live.app.state.services.blobs
        filler: list[Path] = []

        def outage() -> None:
            _wait_for_blobs(blobs, len(taken))
            if fault == "full":
                filler.append(_fill(root))
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)

        r = _stow_with_fault(live.url, token, series, len(taken), outage)
        if fault == "full":
            filler[0].unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
        assert r.status_code == 202, r.text
        stored, failed = _outcomes(r)
        assert stored == [_uid(p) for p in taken]
        assert failed == [(_uid(p), dicom.OUT_OF_RESOURCES) for p in refused]
        assert str(root) not in r.text and CONTENT_PREFIX not in r.text
        assert _indexed(live.settings) == {_uid(p): _sha(p) for p in taken}
        # Nothing half-written is left: every file under the root is an indexed blob.
        files = {
            (Path(d) / f).relative_to(root).as_posix()
            for d, _, names in os.walk(root)
            for f in names
        }
        assert files == {content_key(_sha(p)) for p in taken}
