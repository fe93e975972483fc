"""STOW-RS ingest: what is stored, and every bad input refused with the index and the blob store
exactly as they were before (PS3.18 10.5; the issue's "Bad input" list)."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from alliance.config import Settings
from alliance.fhir.models import ResourceRow, ResourceVersion
from imaging.models import Instance, Series, Study
from server.app import create_app
from tests.conftest import bearer
from tests.imaging_data import (
    AYGUL,
    ct_series,
    ct_slice,
    encode,
    multipart,
    relabel,
    stow_headers,
)

CANNOT_UNDERSTAND, DOES_NOT_MATCH, DUPLICATE, NOT_AUTHORISED = 0xC000, 0xA900, 0x0111, 0x0124


def state(app: FastAPI) -> dict[str, Any]:
    """Everything ingest may change: index rows, FHIR resources and versions, blobs."""
    services = app.state.services
    with services.db.transaction() as session:
        counts = {
            name: session.scalar(select(func.count()).select_from(table))
            for name, table in (
                ("study", Study),
                ("series", Series),
                ("instance", Instance),
                ("versions", ResourceVersion),
            )
        }
        counts["imaging_study"] = session.scalar(
            select(func.count())
            .select_from(ResourceRow)
            .where(ResourceRow.resource_type == "ImagingStudy")
        )
    return {**counts, "blobs": sorted(services.blobs.list_keys())}


def failures(response: Any) -> list[int]:
    body = response.json()
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


@pytest.fixture
def doctor(as_user: Callable[[str], TestClient]) -> TestClient:
    return as_user("dr.xinyuan.people")


def post(client: TestClient, parts: list[bytes], path: str = "/dicomweb/studies") -> Any:
    return client.post(path, content=multipart(parts), headers=stow_headers())


@pytest.fixture
def stored(app: FastAPI, doctor: TestClient) -> Iterator[bytes]:
    """One CT instance already stored, so refused input is checked against a non-empty store."""
    data = ct_series(1)[0]
    assert post(doctor, [data]).status_code == 200
    yield data


def test_a_study_is_stored_indexed_and_linked(app: FastAPI, doctor: TestClient) -> None:
    parts = ct_series(3)
    r = post(doctor, parts)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert len(body["00081199"]["Value"]) == 3 and "00081198" not in body
    ds = pydicom.dcmread(io.BytesIO(parts[0]))
    with app.state.services.db.transaction() as session:
        study = session.get(Study, ds.StudyInstanceUID)
        assert study is not None
        assert (study.hospital_id, study.patient_id) == ("xy-people", "demo-aygul")
        assert (study.number_of_series, study.number_of_instances) == (1, 3)
        assert study.size_bytes == sum(len(p) for p in parts)
        assert study.modalities == "CT"
        series = session.get(Series, ds.SeriesInstanceUID)
        assert series is not None and series.metadata_gz is None  # built at its first read
    metadata = doctor.get(
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    )
    assert metadata.status_code == 200 and len(metadata.json()) == 3
    with app.state.services.db.transaction() as session:
        series = session.get(Series, ds.SeriesInstanceUID)
        assert series is not None and series.metadata_gz is not None
    imaging_study = doctor.get(f"/fhir/ImagingStudy/{ds.StudyInstanceUID}").json()
    assert imaging_study["numberOfInstances"] == 3
    assert imaging_study["subject"]["reference"] == "Patient/demo-aygul"


def test_a_patient_is_linked_by_the_hospital_mrn(app: FastAPI, doctor: TestClient) -> None:
    # demo-aygul's MRN at xy-people (server.demo: MRN2026000 + her position in the list).
    mrn = doctor.get("/fhir/Patient/demo-aygul").json()["identifier"][1]["value"]
    part = encode(
        ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1, patient_id=mrn)
    )
    assert post(doctor, [part]).status_code == 200
    uid = pydicom.dcmread(io.BytesIO(part)).StudyInstanceUID
    assert doctor.get(f"/fhir/ImagingStudy/{uid}").json()["subject"]["reference"] == (
        "Patient/demo-aygul"
    )


def test_the_same_instance_again_is_a_no_op(
    app: FastAPI, doctor: TestClient, stored: bytes
) -> None:
    before = state(app)
    r = post(doctor, [stored])
    assert r.status_code == 200 and len(r.json()["00081199"]["Value"]) == 1
    assert state(app) == before


def test_the_same_instance_with_other_bytes_is_refused(
    app: FastAPI, doctor: TestClient, stored: bytes
) -> None:
    ds = pydicom.dcmread(io.BytesIO(stored))
    ds.SeriesDescription = "changed"
    before = state(app)
    r = post(doctor, [encode(ds)])
    assert r.status_code == 409
    assert failures(r) == [DUPLICATE]
    assert r.json()["00081198"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert state(app) == before  # the new bytes were put, then swept


def test_some_stored_some_failed_is_202(app: FastAPI, doctor: TestClient, stored: bytes) -> None:
    good = ct_series(1)[0]
    before = state(app)
    r = post(doctor, [good, b"not dicom at all" * 20])
    assert r.status_code == 202
    assert failures(r) == [CANNOT_UNDERSTAND]
    assert len(r.json()["00081199"]["Value"]) == 1
    after = state(app)
    assert after["instance"] == before["instance"] + 1
    assert len(after["blobs"]) == len(before["blobs"]) + 1


def _without(data: bytes, keyword: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    delattr(ds, keyword)
    return encode(ds)


def _with(data: bytes, **values: Any) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in values.items():
        setattr(ds, key, value)
    return encode(ds)


def _nested(depth: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(ct_series(1)[0]))
    inner = Dataset()
    inner.CodeValue = "x"
    for _ in range(depth):
        outer = Dataset()
        outer.ConceptNameCodeSequence = [inner]
        inner = outer
    ds.ContentSequence = [inner]
    return encode(ds)


def _huge_length(data: bytes) -> bytes:
    """The length field of StudyDescription (LO, 2-byte length in Explicit VR LE) set to the
    largest value: the element claims 65535 bytes that are not there."""
    out = bytearray(data)
    at = out.find(b"\x08\x00\x30\x10LO")
    assert at > 0
    struct.pack_into("<H", out, at + 6, 0xFFFF)
    return bytes(out)


def _huge_private(data: bytes) -> bytes:
    """A private OB element declaring 4 GiB - 2 bytes."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(0x00091010, "OB", b"\x00" * 8)
    out = bytearray(encode(ds))
    at = out.find(b"\x09\x00\x10\x10OB")
    struct.pack_into("<I", out, at + 8, 0xFFFFFFFE)
    return bytes(out)


BAD_PARTS: dict[str, tuple[Callable[[bytes], bytes], int]] = {
    "not DICOM": (lambda d: b"%PDF-1.7 " + b"x" * 400, CANNOT_UNDERSTAND),
    "truncated": (lambda d: d[: len(d) // 2], CANNOT_UNDERSTAND),
    "truncated in the header": (lambda d: d[:300], CANNOT_UNDERSTAND),
    "no SOP Instance UID": (lambda d: _without(d, "SOPInstanceUID"), DOES_NOT_MATCH),
    "no Study Instance UID": (lambda d: _without(d, "StudyInstanceUID"), DOES_NOT_MATCH),
    "malformed Series UID": (lambda d: _with(d, SeriesInstanceUID="1.2.03.4"), DOES_NOT_MATCH),
    "UID too long": (lambda d: _with(d, StudyInstanceUID="1." + "2" * 70), DOES_NOT_MATCH),
    "pixel data too short": (lambda d: _with(d, Rows=512), DOES_NOT_MATCH),
    "deeply nested sequences": (lambda d: _nested(200), CANNOT_UNDERSTAND),
    "huge declared length": (_huge_length, CANNOT_UNDERSTAND),
    "huge declared private value": (_huge_private, CANNOT_UNDERSTAND),
}


@pytest.mark.parametrize("case", sorted(BAD_PARTS))
def test_a_bad_part_is_refused_and_leaves_nothing(
    case: str, app: FastAPI, doctor: TestClient, stored: bytes
) -> None:
    make, status = BAD_PARTS[case]
    part = make(ct_series(1)[0])
    before = state(app)
    r = post(doctor, [part])
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    assert failures(r) == [status]
    assert state(app) == before


def test_a_study_uid_other_than_the_paths_is_refused(
    app: FastAPI, doctor: TestClient, stored: bytes
) -> None:
    before = state(app)
    r = post(doctor, [ct_series(1)[0]], f"/dicomweb/studies/{generate_uid()}")
    assert r.status_code == 409 and failures(r) == [DOES_NOT_MATCH]
    assert state(app) == before
    ds = pydicom.dcmread(io.BytesIO(stored))
    again = post(doctor, [stored], f"/dicomweb/studies/{ds.StudyInstanceUID}")
    assert again.status_code == 200


def test_a_study_kept_by_another_hospital_is_refused(
    app: FastAPI, as_user: Callable[[str], TestClient], stored: bytes
) -> None:
    ds = pydicom.dcmread(io.BytesIO(stored))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    before = state(app)
    r = post(as_user("dr.xinyuan.tcm"), [encode(ds)])
    assert r.status_code == 409 and failures(r) == [NOT_AUTHORISED]
    assert state(app) == before


def test_another_patient_in_a_study_is_refused(
    app: FastAPI, doctor: TestClient, stored: bytes
) -> None:
    ds = pydicom.dcmread(io.BytesIO(stored))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "SOMEONE-ELSE"
    before = state(app)
    r = post(doctor, [encode(ds)])
    assert r.status_code == 409 and failures(r) == [DOES_NOT_MATCH]
    assert state(app) == before


@pytest.mark.parametrize(
    "body",
    [
        "no closing boundary",
        "wrong boundary",
        "garbage after a good part",
    ],
)
def test_a_broken_multipart_body_is_400_and_leaves_nothing(
    body: str, app: FastAPI, doctor: TestClient, stored: bytes
) -> None:
    good = ct_series(1)[0]
    whole = multipart([good])
    content = {
        "no closing boundary": whole[: -len("--alliance-test-boundary--\r\n")],
        "wrong boundary": whole.replace(b"alliance-test-boundary", b"some-other-boundary"),
        "garbage after a good part": whole[: whole.rfind(b"\r\n--")] + b"\r\n--alliance-te",
    }[body]
    before = state(app)
    r = doctor.post("/dicomweb/studies", content=content, headers=stow_headers())
    assert r.status_code == 400, r.text
    assert state(app) == before


def test_a_body_over_the_limit_is_413(settings: Settings) -> None:
    limited = create_app(settings.model_copy(update={"max_stow_bytes": 50_000}))
    try:
        with TestClient(limited, headers=bearer(settings, "dr.xinyuan.people")) as client:
            before = state(limited)
            parts = ct_series(8)  # ~8 x 8 KiB of pixels: over 50 kB
            declared = client.post(
                "/dicomweb/studies", content=multipart(parts), headers=stow_headers()
            )
            assert declared.status_code == 413
            # Chunked, with no Content-Length: refused once the limit is crossed.
            body = multipart(parts)

            def chunks() -> Iterator[bytes]:
                for i in range(0, len(body), 4096):
                    yield body[i : i + 4096]

            streamed = client.post("/dicomweb/studies", content=chunks(), headers=stow_headers())
            assert streamed.status_code == 413
            assert state(limited) == before
    finally:
        limited.state.services.db.dispose()


def test_content_types_and_empty_bodies(doctor: TestClient) -> None:
    r = doctor.post(
        "/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 415
    r = doctor.post(
        "/dicomweb/studies",
        content=multipart([]),
        headers={"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=b'},
    )
    assert r.status_code == 415
    empty = doctor.post("/dicomweb/studies", content=multipart([]), headers=stow_headers())
    assert empty.status_code == 400
    no_boundary = doctor.post(
        "/dicomweb/studies",
        content=b"",
        headers={"Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert no_boundary.status_code == 400


def test_only_clinical_users_store(as_user: Callable[[str], TestClient]) -> None:
    r = post(as_user("auditor"), ct_series(1))
    assert r.status_code == 403
    anonymous = TestClient(as_user("auditor").app)
    assert post(anonymous, ct_series(1)).status_code == 401


def test_shipped_files_are_accepted(app: FastAPI, doctor: TestClient) -> None:
    names = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"]
    r = post(doctor, [relabel(n, patient_id=AYGUL) for n in names])
    assert r.status_code == 200, r.text
    assert len(r.json()["00081199"]["Value"]) == len(names)


def test_demo_imaging_is_seeded_once(settings: Settings, doctor: TestClient) -> None:
    from server.dicom import DEMO_STUDIES, seed_demo_imaging

    total = sum(study[7] for study in DEMO_STUDIES)
    assert seed_demo_imaging(settings) == total
    assert seed_demo_imaging(settings) == 0  # the same bytes again change nothing
    studies = doctor.get("/dicomweb/studies").json()
    assert sorted(s["00201208"]["Value"][0] for s in studies) == sorted(
        study[7] for study in DEMO_STUDIES
    )
    subjects = {
        e["resource"]["subject"]["reference"]
        for e in doctor.get("/fhir/ImagingStudy").json()["entry"]
    }
    assert subjects == {f"Patient/{study[1]}" for study in DEMO_STUDIES}
