"""The hostile-input corpus (tests/dicom_fuzz.py) replayed against STOW-RS through the app and
against the C-STORE receiver with a real pynetdicom SCU (issue 11 section 2): every case gets
its exact refusal, the association carries on, nothing is indexed, no blob and no spool file is
left, and a served process's peak memory stays flat while it takes the whole corpus."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, MRImageStorage
from sqlalchemy import func, select

from alliance.config import Settings
from imaging.models import Instance
from imaging.scp import StorageSCP
from server.app import create_app
from tests.conftest import bearer, free_port, peak_memory, serving
from tests.dicom_fuzz import (
    CSTORE_SYNTAXES,
    DEFLATED_EXPLICIT_VR_LE,
    FuzzFile,
    base,
    bodies,
    files,
    refused_parts,
)
from tests.imaging_data import multipart, stow_headers
from tests.test_imaging_ingest import failures, state

MiB = 1024 * 1024
DOCTOR = "dr.xinyuan.people"


@pytest.fixture(scope="module")
def corpus() -> list[FuzzFile]:
    return files()


def stow_answer(response: httpx.Response) -> tuple[int, list[int] | str]:
    """The status and, for a DICOM JSON answer, the FailureReasons; else the media type."""
    media = response.headers.get("content-type", "")
    if media == "application/dicom+json":
        return response.status_code, failures(response)
    return response.status_code, media


def test_stow_refuses_every_file_of_the_corpus(
    app: FastAPI, as_user: Callable[[str], TestClient], spool: Path, corpus: list[FuzzFile]
) -> None:
    doctor = as_user(DOCTOR)
    before = state(app)
    wrong: dict[str, Any] = {}
    for case in corpus:
        r = doctor.post("/dicomweb/studies", content=multipart([case.data]), headers=stow_headers())
        if stow_answer(r) != (409, [case.stow]):
            wrong[case.name] = (stow_answer(r), r.text[:300])
    assert wrong == {}
    assert state(app) == before
    assert list(spool.iterdir()) == []


def test_stow_refuses_every_broken_body(
    settings: Settings, spool: Path, as_user: Callable[[str], TestClient]
) -> None:
    limited = create_app(settings.model_copy(update={"max_stow_parts": 100}))
    wrong: dict[str, Any] = {}
    try:
        with TestClient(limited, headers=bearer(settings, DOCTOR)) as client:
            before = state(limited)
            for case in bodies(100):
                headers = {"Content-Type": case.content_type}
                r = client.post("/dicomweb/studies", content=case.body, headers=headers)
                # A refusal of the request as a whole is DICOMweb's JSON error body.
                if stow_answer(r) != (case.status, "application/json"):
                    wrong[case.name] = (stow_answer(r), r.text[:300])
            for name, header, data, reason in refused_parts():
                body = b"--b\r\n" + header + b"\r\n" + data + b"\r\n--b--\r\n"
                r = client.post("/dicomweb/studies", content=body, headers=stow_headers("b"))
                if stow_answer(r) != (409, [reason]):
                    wrong[name] = (stow_answer(r), r.text[:300])
            assert wrong == {}
            assert state(limited) == before
            assert list(spool.iterdir()) == []
    finally:
        limited.state.services.db.dispose()


def test_a_part_without_content_type_is_read_as_the_requests_type(
    app: FastAPI, as_user: Callable[[str], TestClient]
) -> None:
    """multipart/related's `type` parameter names the type of its parts (RFC 2387 3.1; PS3.18
    10.5.1 requires application/dicom): a part that names none is read as that type."""
    body = b"--b\r\n\r\n" + base() + b"\r\n--b--\r\n"
    r = as_user(DOCTOR).post("/dicomweb/studies", content=body, headers=stow_headers("b"))
    assert r.status_code == 200 and len(r.json()["00081199"]["Value"]) == 1


# ---- C-STORE -------------------------------------------------------------------------------


def fuzz_association(port: int) -> Association:
    """One presentation context per transfer syntax the corpus is sent in, so the SCU sends
    every file under the syntax its file meta names (pynetdicom's chunked send)."""
    ae = AE(ae_title="XYPEOPLE_CT")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for syntax in CSTORE_SYNTAXES:
        ae.add_requested_context(CTImageStorage, syntax)
        ae.add_requested_context(MRImageStorage, syntax)
    ae.add_requested_context(CTImageStorage, DEFLATED_EXPLICIT_VR_LE)
    return ae.associate("127.0.0.1", port, ae_title="ALLIANCE")


def send_corpus(assoc: Association, corpus: list[FuzzFile], folder: Path) -> dict[str, Any]:
    """C-STORE every case that can be sent; the cases whose status was not the expected one,
    or after which the association was gone."""
    wrong: dict[str, Any] = {}
    for i, case in enumerate(c for c in corpus if c.cstore is not None):
        path = folder / f"case-{i}.dcm"
        path.write_bytes(case.data)
        status = assoc.send_c_store(path).get("Status")
        path.unlink()
        if status != case.cstore or not assoc.is_established:
            wrong[case.name] = (status, assoc.is_established)
    return wrong


def test_cstore_refuses_every_data_set_of_the_corpus(
    scp: StorageSCP,
    spool: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    corpus: list[FuzzFile],
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = fuzz_association(scp.port)
    assert assoc.is_established
    # Deflate (PS3.5 A.5) is refused when the association is negotiated: a deflate bomb
    # cannot be sent at all (PS3.8 9.3.3.2, result 4: transfer syntaxes not supported).
    refused = [(c.abstract_syntax, c.result) for c in assoc.rejected_contexts]
    assert refused == [(CTImageStorage, 4)]
    assert send_corpus(assoc, corpus, tmp_path) == {}
    assoc.release()
    with scp.imaging.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert list(scp.imaging.blobs.list_keys()) == []
    assert list(spool.iterdir()) == []


# ---- memory ----------------------------------------------------------------------------------


def test_a_served_process_takes_the_corpus_in_flat_memory(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    corpus: list[FuzzFile],
) -> None:
    """`alliance serve` with its C-STORE receiver, in a process of its own, takes the corpus
    (every tenth truncation) twice over STOW-RS and C-STORE, after a good instance each way so
    that what a first request loads is counted before; its peak resident set (VmHWM) grows by
    less than 32 MiB. The deflate bomb alone inflates to 4 GiB, and the biggest body holds
    10,001 parts (ALLIANCE_MAX_STOW_PARTS + 1)."""
    truncated = [c for c in corpus if c.name.startswith("truncated")]
    sample = [c for c in corpus if not c.name.startswith("truncated")] + truncated[::10]
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    port = free_port()
    spool = tmp_path / "spool"  # the served process's temporary folder
    spool.mkdir()
    env = {
        "ALLIANCE_DICOM_PORT": str(port),
        "ALLIANCE_DICOM_CALLING_AES": "XYPEOPLE_CT=xy-people",
        "TMPDIR": str(spool),
    }
    headers = bearer(settings, DOCTOR)
    with (
        serving(settings, tmp_path / "serve.log", **env) as (url, proc),
        httpx.Client(base_url=url, headers=headers, timeout=120) as http,
    ):
        assoc = fuzz_association(port)
        good = tmp_path / "good.dcm"
        good.write_bytes(base())
        assert assoc.send_c_store(good).Status == 0x0000
        warm = http.post("/dicomweb/studies", content=multipart([base()]), headers=stow_headers())
        assert warm.status_code == 200
        before = peak_memory(proc.pid)
        for _ in range(2):
            for case in sample:
                r = http.post(
                    "/dicomweb/studies", content=multipart([case.data]), headers=stow_headers()
                )
                assert stow_answer(r) == (409, [case.stow]), case.name
            for body in bodies(Settings().max_stow_parts):
                r = http.post(
                    "/dicomweb/studies",
                    content=body.body,
                    headers={"Content-Type": body.content_type},
                )
                assert r.status_code == body.status, body.name
            assert send_corpus(assoc, sample, tmp_path) == {}
        after = peak_memory(proc.pid)
        assoc.release()
        assert list(spool.iterdir()) == []
    assert after - before < 32 * MiB, f"peak RSS grew by {(after - before) / MiB:.1f} MiB"
