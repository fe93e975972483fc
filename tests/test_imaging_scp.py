"""The C-STORE receiver with pynetdicom's storage SCU over real DICOM networking (PS3.4 Annex B,
PS3.8): known calling AE titles store for their hospital, unknown ones are refused at
association, and what is stored shows up in QIDO-RS and as an ImagingStudy."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from sqlalchemy import select

from alliance.config import Settings
from imaging.models import Instance
from imaging.scp import StorageSCP
from server.dicom import build_scp
from tests.conftest import free_port, peak_memory, serving
from tests.imaging_data import ct_series, large_ct_file, relabel

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
MiB = 1024 * 1024


def associate(scp: StorageSCP, calling: str, syntaxes: list[str] | None = None) -> object:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage, syntaxes or ["1.2.840.10008.1.2.1"])
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", scp.port, ae_title="ALLIANCE")


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_a_known_calling_ae_stores_a_study(
    scp: StorageSCP, as_user: Callable[[str], TestClient]
) -> None:
    slices = [read(b) for b in ct_series(3)]
    assoc = associate(scp, "XYPEOPLE_CT")
    assert assoc.is_established  # type: ignore[attr-defined]
    assert assoc.send_c_echo().Status == 0  # type: ignore[attr-defined]
    statuses = [assoc.send_c_store(ds).Status for ds in slices]  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert statuses == [0x0000] * 3
    doctor = as_user("dr.xinyuan.people")
    study = slices[0].StudyInstanceUID
    found = doctor.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
    assert len(found) == 1 and found[0]["00201208"]["Value"] == [3]
    # The ImagingStudy was made with the first instance and is completed when the association
    # ends, which the receiver learns just after the SCU does.
    deadline = time.monotonic() + 10
    while True:
        imaging_study = doctor.get(f"/fhir/ImagingStudy/{study}").json()
        assert imaging_study["subject"]["reference"] == "Patient/demo-aygul"
        if imaging_study["numberOfInstances"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert imaging_study["numberOfInstances"] == 3
    metadata = doctor.get(f"/dicomweb/studies/{study}/metadata").json()
    assert sorted(m["00200013"]["Value"][0] for m in metadata) == [1, 2, 3]
    # What was sent is what is served: the data set exactly, in its transfer syntax.
    wado = doctor.get(
        f"/dicomweb/studies/{study}/series/{slices[0].SeriesInstanceUID}"
        f"/instances/{slices[0].SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert wado.status_code == 200
    assert slices[0].PixelData in wado.content
    # The stores are audited for the hospital whose AE title it is.
    events = (
        as_user("auditor")
        .get("/fhir/AuditEvent", params={"entity": f"ImagingStudy/{study}", "subtype": "store"})
        .json()["entry"]
    )
    assert len(events) == 3
    who = events[0]["resource"]["agent"][0]
    assert who["who"]["identifier"]["value"] == "dicom:XYPEOPLE_CT"


def test_compressed_instances_are_stored_as_received(
    scp: StorageSCP, as_user: Callable[[str], TestClient]
) -> None:
    ds = read(relabel("MR_small_RLE.dcm"))
    assoc = associate(scp, "XYPEOPLE_CT", [RLE_LOSSLESS])
    assert assoc.send_c_store(ds).Status == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    doctor = as_user("dr.xinyuan.people")
    found = doctor.get(
        "/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID, "includefield": "all"}
    ).json()
    assert found[0]["00083002"]["Value"] == [RLE_LOSSLESS]


def test_an_unknown_calling_ae_is_refused_at_association(
    scp: StorageSCP, as_user: Callable[[str], TestClient]
) -> None:
    assoc = associate(scp, "STRANGER")
    assert not assoc.is_established  # type: ignore[attr-defined]
    assert assoc.is_rejected  # type: ignore[attr-defined]
    events = (
        as_user("auditor")
        .get("/fhir/AuditEvent", params={"subtype": "dicom-association-rejected"})
        .json()["entry"]
    )
    assert events[0]["resource"]["agent"][0]["who"]["identifier"]["value"] == "dicom:STRANGER"


def test_refused_instances_get_ps34_statuses_and_leave_nothing(
    scp: StorageSCP, as_user: Callable[[str], TestClient]
) -> None:
    first = read(ct_series(1)[0])
    assoc = associate(scp, "XYPEOPLE_CT")
    assert assoc.send_c_store(first).Status == 0  # type: ignore[attr-defined]
    blobs = sorted(scp.imaging.blobs.list_keys())
    changed = read(ct_series(1)[0])
    changed.SOPInstanceUID = first.SOPInstanceUID
    changed.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    assert assoc.send_c_store(changed).Status == 0x0111  # type: ignore[attr-defined]
    no_study = read(ct_series(1)[0])
    del no_study.StudyInstanceUID
    assert assoc.send_c_store(no_study).Status == 0xA900  # type: ignore[attr-defined]
    bad_pixels = read(ct_series(1)[0])
    bad_pixels.Rows = 1024
    assert assoc.send_c_store(bad_pixels).Status == 0xA900  # type: ignore[attr-defined]
    # The same instance again, the same bytes: a success that changes nothing.
    assert assoc.send_c_store(first).Status == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert sorted(scp.imaging.blobs.list_keys()) == blobs
    found = as_user("dr.xinyuan.people").get("/dicomweb/instances").json()
    assert [i["00080018"]["Value"][0] for i in found] == [first.SOPInstanceUID]


def test_the_dicom_scp_command_receives_for_its_hospitals(
    settings: Settings, as_user: Callable[[str], TestClient]
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ALLIANCE_DATABASE_URL": settings.database_url,
        "ALLIANCE_STORAGE_URL": settings.storage_url,
        "ALLIANCE_DEMO": "true",
        "ALLIANCE_DICOM_CALLING_AES": "XYPEOPLE_CT=xy-people",
    }
    command = [sys.executable, "-m", "server.cli", "dicom-scp", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ae = AE(ae_title="XYPEOPLE_CT")
        ae.add_requested_context(CTImageStorage)
        deadline = time.monotonic() + 30
        while True:
            assoc = ae.associate("127.0.0.1", port, ae_title="ALLIANCE")
            if assoc.is_established or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert assoc.is_established, proc.stdout.read() if proc.poll() is not None else ""
        ds = read(ct_series(1)[0])
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
    finally:
        proc.terminate()
        proc.wait(10)
    found = as_user("dr.xinyuan.people").get(
        "/dicomweb/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}
    )
    assert len(found.json()) == 1


def test_a_300_mb_instance_is_received_to_disk_not_into_memory(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    as_user: Callable[[str], TestClient],
) -> None:
    """Issue 11: a 300 MB instance raised the server's memory by 640 MB when the data set was
    received into memory. `alliance serve` with its receiver runs in a process of its own,
    whose peak resident set (VmHWM) is read before and after the instance is stored."""
    big = tmp_path / "big.dcm"
    header = large_ct_file(big, 600)  # 600 frames of 512 KiB: 300 MiB of pixel data
    assert big.stat().st_size > 300 * MiB
    # The SCU sends the file as it is on disk, in chunks, rather than decoding it first.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    port = free_port()
    spool = tmp_path / "spool"  # the served process's temporary folder
    spool.mkdir()
    env = {
        "ALLIANCE_DICOM_PORT": str(port),
        "ALLIANCE_DICOM_CALLING_AES": "XYPEOPLE_CT=xy-people",
        "TMPDIR": str(spool),
    }
    with serving(settings, tmp_path / "serve.log", **env) as (_url, proc):
        ae = AE(ae_title="XYPEOPLE_CT")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="ALLIANCE")
        assert assoc.is_established
        warm_up = tmp_path / "small.dcm"
        warm_up.write_bytes(ct_series(1)[0])
        assert assoc.send_c_store(warm_up).Status == 0x0000
        before = peak_memory(proc.pid)
        assert assoc.send_c_store(big).Status == 0x0000
        after = peak_memory(proc.pid)
        assoc.release()
        assert list(spool.iterdir()) == []
    assert after - before < 64 * MiB, f"peak RSS grew by {(after - before) / MiB:.0f} MiB"
    found = as_user("dr.xinyuan.people").get(
        "/dicomweb/instances",
        params={"SOPInstanceUID": header.SOPInstanceUID, "includefield": "00280008"},
    )
    assert found.json()[0]["00280008"]["Value"] == [600]


def test_an_instance_over_the_limit_is_refused_while_it_arrives(
    settings: Settings, spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ALLIANCE_MAX_STOW_BYTES the receiver stops writing the data set and answers Out of
    Resources (PS3.4 B.2.3, 0xA700) once it has arrived; the association goes on."""
    limited = settings.model_copy(
        update={"dicom_calling_aes": "XYPEOPLE_CT=xy-people", "max_stow_bytes": 256 * 1024}
    )
    receiver = build_scp(limited)
    receiver.start("127.0.0.1", 0)
    try:
        big = tmp_path / "big.dcm"
        large_ct_file(big, 8, rows=256, columns=256)  # 1 MiB of pixel data
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
        assoc = associate(receiver, "XYPEOPLE_CT")
        assert assoc.send_c_store(big).Status == 0xA700  # type: ignore[attr-defined]
        assert list(spool.iterdir()) == []
        small = read(ct_series(1)[0])
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        assert assoc.send_c_store(small).Status == 0x0000  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
        with receiver.imaging.db.transaction() as session:
            stored = session.scalars(select(Instance.sop_instance_uid)).all()
        assert stored == [small.SOPInstanceUID]
        assert len(list(receiver.imaging.blobs.list_keys())) == 1
    finally:
        receiver.stop()
        receiver.imaging.db.dispose()


def test_a_data_set_cut_off_by_an_abort_leaves_no_spool_file(
    scp: StorageSCP, spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data set is written as it arrives: straight into a directory store's staging folder
    (`sha256/.put-*.tmp`), or to a temporary file for an S3 store. Cut off by an abort, it
    leaves neither behind, and no blob."""
    big = tmp_path / "big.dcm"
    large_ct_file(big, 256)  # 128 MiB: still arriving when the SCU aborts
    staging = tmp_path / "blobs" / "sha256"

    def being_written() -> list[Path]:
        return [*spool.iterdir(), *staging.glob(".put-*.tmp")]

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = associate(scp, "XYPEOPLE_CT")
    sender = threading.Thread(target=assoc.send_c_store, args=(big,))  # type: ignore[attr-defined]
    sender.start()
    # Abort once the receiver has written part of the data set.
    deadline = time.monotonic() + 30
    while not any(f.stat().st_size > 1024 * 1024 for f in being_written()):
        assert time.monotonic() < deadline, "the data set never started to arrive"
        time.sleep(0.01)
    assoc.abort()  # type: ignore[attr-defined]
    sender.join(30)
    # The receiver learns of the abort just after the SCU sends it.
    deadline = time.monotonic() + 10
    while being_written() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert being_written() == []
    assert list(scp.imaging.blobs.list_keys()) == []


def test_a_pdu_declaring_a_gigabyte_is_not_read_into_memory(
    settings: Settings, tmp_path: Path
) -> None:
    """pynetdicom reads a PDU whole, of the length its header declares: a peer declaring 1 GiB
    and sending 256 MiB of it made the receiver hold all it sent. The receiver now closes the
    connection at the header, and goes on serving others."""
    port = free_port()
    env = {"ALLIANCE_DICOM_PORT": str(port), "ALLIANCE_DICOM_CALLING_AES": "XYPEOPLE_CT=xy-people"}
    with serving(settings, tmp_path / "serve.log", **env) as (_url, proc):
        ae = AE(ae_title="XYPEOPLE_CT")
        ae.add_requested_context(CTImageStorage)
        warm_up = ae.associate("127.0.0.1", port, ae_title="ALLIANCE")
        assert warm_up.is_established
        warm_up.release()
        before = peak_memory(proc.pid)
        sent = 0
        with socket.create_connection(("127.0.0.1", port)) as peer:
            # An A-ASSOCIATE-RQ PDU header (PS3.8 9.3.2) declaring 1 GiB.
            peer.sendall(struct.pack(">BBI", 0x01, 0x00, 1024**3))
            junk = bytes(1024 * 1024)
            with contextlib.suppress(OSError):  # the receiver closes the connection
                for _ in range(256):
                    peer.sendall(junk)
                    sent += len(junk)
        after = peak_memory(proc.pid)
        again = ae.associate("127.0.0.1", port, ae_title="ALLIANCE")
        assert again.is_established
        again.release()
    assert sent < 256 * MiB, "the receiver read the whole PDU"
    assert after - before < 16 * MiB, f"peak RSS grew by {(after - before) / MiB:.0f} MiB"
