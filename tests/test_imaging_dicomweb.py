"""DICOMweb with real clients over real HTTP: dicomweb-client against the app served by uvicorn.

One server per database backend stores a corpus once (the files that ship in pydicom and
pydicom-data, relabelled to a demo patient, and a GBK-named CT made here); the tests then find,
retrieve and render it as a viewer would, and check the FHIR ImagingStudy and the audit trail.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.pixels import pixel_array
from pydicom.uid import generate_uid

from alliance.config import Settings
from server.app import create_app
from server.demo import identity_number
from tests.conftest import BACKENDS, PG_URL, free_port, mint_token, skip_or_fail
from tests.imaging_data import AYGUL, ct_slice, encode, relabel, split_multipart

WANG = identity_number("654025", "19650312", "013")  # demo-wang-jianguo at xy-people
VIEWER = "https://viewer.example.org"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = 'multipart/related; type="application/octet-stream"'

#: name -> (file shipped with pydicom or pydicom-data, study date)
CORPUS = {
    "ct": ("CT_small.dcm", "20260105"),
    "mr": ("MR_small.dcm", "20260210"),
    "multiframe": ("emri_small.dcm", "20260301"),
    "rle": ("emri_small_RLE.dcm", "20260302"),
    "jpeg": ("SC_rgb_jpeg_dcmtk.dcm", "20260303"),
    "j2k": ("MR_small_jp2klossless.dcm", "20260304"),
    "j2k-color": ("US1_J2KR.dcm", "20260305"),
    "jpeg-12bit": ("JPEG-lossy.dcm", "20260306"),
}


@dataclass
class Stored:
    sent: bytes
    ds: pydicom.Dataset

    @property
    def uids(self) -> tuple[str, str, str]:
        return self.ds.StudyInstanceUID, self.ds.SeriesInstanceUID, self.ds.SOPInstanceUID


@dataclass
class Corpus:
    url: str
    settings: Settings
    token: str
    studies: dict[str, Stored] = field(default_factory=dict)
    stow: pydicom.Dataset | None = None

    def client(self, user: str | None = None) -> DICOMwebClient:
        token = self.token if user is None else mint_token(self.settings, user)
        return DICOMwebClient(
            url=f"{self.url}/dicomweb", headers={"Authorization": f"Bearer {token}"}
        )

    def http(self, user: str | None = None) -> httpx.Client:
        token = self.token if user is None else mint_token(self.settings, user)
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


@contextmanager
def serve(settings: Settings) -> Iterator[None]:
    """The app as `alliance serve` runs it: uvicorn on a port of 127.0.0.1, in a thread."""
    app = create_app(settings)
    port = int(settings.base_url.rsplit(":", 1)[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.services.db.dispose()


def gbk_ct() -> bytes:
    """A CT from a Chinese modality: Specific Character Set GBK, the name in GBK bytes."""
    ds = ct_slice(
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        number=1,
        patient_id=WANG,
        patient_name="Wang^Jianguo=王^建国",
        charset="GBK",
        study_date="20260401",
    )
    ds.StudyDescription = "胸部CT平扫"
    data = encode(ds)
    assert "王".encode("gbk") in data and "王".encode() not in data
    return data


@pytest.fixture(scope="module", params=BACKENDS)
def corpus(
    request: pytest.FixtureRequest, templates: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    if request.param == "postgresql":
        if not PG_URL:
            skip_or_fail("PostgreSQL: set ALLIANCE_TEST_DATABASE_URL to run (CI does)")
        url = templates.postgresql()  # type: ignore[attr-defined]
    else:
        url = templates.sqlite()  # type: ignore[attr-defined]
    port = free_port()
    settings = Settings(
        database_url=url,
        storage_url=(tmp_path_factory.mktemp("blobs") / "store").as_uri(),
        base_url=f"http://127.0.0.1:{port}",
        demo=True,
        viewer_origins=VIEWER,
    )
    try:
        with serve(settings):
            found = Corpus(settings.base_url, settings, mint_token(settings, "dr.xinyuan.people"))
            for name, (filename, date) in CORPUS.items():
                sent = relabel(
                    filename, patient_id=AYGUL, study_date=date, patient_name="Nurlan^Aygul"
                )
                found.studies[name] = Stored(sent, pydicom.dcmread(io.BytesIO(sent)))
            sent = gbk_ct()
            found.studies["gbk"] = Stored(sent, pydicom.dcmread(io.BytesIO(sent)))
            # dicomweb-client encodes what it is given with pydicom.dcmwrite; these bytes are
            # what the server receives, and what it must give back.
            found.stow = found.client().store_instances([s.ds for s in found.studies.values()])
            for stored in found.studies.values():
                out = io.BytesIO()
                pydicom.dcmwrite(out, stored.ds)
                stored.sent = out.getvalue()
            yield found
    finally:
        if request.param == "postgresql":
            templates.drop(url)  # type: ignore[attr-defined]


def test_stow_answers_every_instance_stored(corpus: Corpus) -> None:
    assert corpus.stow is not None
    referenced = {item.ReferencedSOPInstanceUID for item in corpus.stow.ReferencedSOPSequence}
    assert referenced == {s.ds.SOPInstanceUID for s in corpus.studies.values()}
    assert "FailedSOPSequence" not in corpus.stow
    for item in corpus.stow.ReferencedSOPSequence:
        assert item.RetrieveURL.startswith(f"{corpus.url}/dicomweb/studies/")


def test_qido_finds_by_patient_date_modality_and_name(corpus: Corpus) -> None:
    client = corpus.client()
    ours = {s.ds.StudyInstanceUID for n, s in corpus.studies.items() if n != "gbk"}
    by_patient = client.search_for_studies(search_filters={"PatientID": AYGUL})
    assert {r["0020000D"]["Value"][0] for r in by_patient} == ours
    by_range = client.search_for_studies(
        search_filters={"PatientID": AYGUL, "StudyDate": "20260301-20260303"}
    )
    assert {r["0020000D"]["Value"][0] for r in by_range} == {
        corpus.studies[n].ds.StudyInstanceUID for n in ("multiframe", "rle", "jpeg")
    }
    single = client.search_for_studies(search_filters={"StudyDate": "20260105"})
    assert [r["0020000D"]["Value"][0] for r in single] == [corpus.studies["ct"].ds.StudyInstanceUID]
    mr = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert {r["0020000D"]["Value"][0] for r in mr} == {
        corpus.studies[n].ds.StudyInstanceUID for n in ("mr", "multiframe", "rle", "j2k")
    }
    assert all(r["00080061"]["Value"] == ["MR"] for r in mr)
    # Wildcards, case-insensitive on the name; the original name is what is returned.
    for pattern in ("nurlan*", "NURLAN^AYG?L", "*aygul"):
        found = client.search_for_studies(search_filters={"PatientName": pattern})
        assert {r["0020000D"]["Value"][0] for r in found} == ours, pattern
    assert client.search_for_studies(search_filters={"PatientName": "aygul"}) == []
    fuzzy = client.search_for_studies(search_filters={"PatientName": "aygul"}, fuzzymatching=True)
    assert {r["0020000D"]["Value"][0] for r in fuzzy} == ours
    first = by_patient[0]
    assert first["00100010"]["Value"] == [
        {"Alphabetic": first["00100010"]["Value"][0]["Alphabetic"]}
    ]
    assert first["00201206"]["Value"] == [1] and first["00201208"]["Value"] == [1]


def test_gbk_names_are_decoded_and_found(corpus: Corpus) -> None:
    client = corpus.client()
    found = client.search_for_studies(search_filters={"PatientName": "王*"})
    assert [r["0020000D"]["Value"][0] for r in found] == [corpus.studies["gbk"].ds.StudyInstanceUID]
    assert found[0]["00100010"]["Value"] == [
        {"Alphabetic": "Wang^Jianguo", "Ideographic": "王^建国"}
    ]
    assert client.search_for_studies(search_filters={"StudyDescription": "胸部*"})
    uid = corpus.studies["gbk"].ds.StudyInstanceUID
    meta = client.retrieve_study_metadata(uid)
    assert meta[0]["00100010"]["Value"][0]["Ideographic"] == "王^建国"
    assert meta[0]["00080005"]["Value"] == ["ISO_IR 192"]  # the JSON itself is UTF-8


def test_limit_offset_and_includefield(corpus: Corpus) -> None:
    client = corpus.client()
    everything = client.search_for_studies(search_filters={"PatientID": AYGUL})
    page = client.search_for_studies(search_filters={"PatientID": AYGUL}, limit=3, offset=2)
    assert page == everything[2:5]
    assert client.search_for_studies(search_filters={"PatientID": AYGUL}, offset=100) == []
    some = client.search_for_studies(
        search_filters={"PatientID": AYGUL}, fields=["PatientBirthDate"], limit=1
    )
    assert "00100030" in some[0]
    series = client.search_for_series(corpus.studies["multiframe"].ds.StudyInstanceUID)
    assert series[0]["00201209"]["Value"] == [1]
    assert series[0]["00080060"]["Value"] == ["MR"]
    instances = client.search_for_instances(
        search_filters={"SOPInstanceUID": corpus.studies["jpeg"].ds.SOPInstanceUID}
    )
    assert len(instances) == 1 and instances[0]["00280008"]["Value"] == [1]
    everything_series = client.search_for_series(search_filters={"Modality": "US"})
    assert [s["0020000E"]["Value"][0] for s in everything_series] == [
        corpus.studies["j2k-color"].ds.SeriesInstanceUID
    ]


def test_instances_come_back_byte_identical(corpus: Corpus) -> None:
    with corpus.http() as http:
        for name, stored in corpus.studies.items():
            study, series, instance = stored.uids
            r = http.get(
                f"/dicomweb/studies/{study}/series/{series}/instances/{instance}",
                headers={"Accept": ANY_SYNTAX},
            )
            assert r.status_code == 200, (name, r.text)
            assert r.headers["content-type"].startswith(
                'multipart/related; type="application/dicom"'
            )
            parts = split_multipart(r.headers["content-type"], r.content)
            assert len(parts) == 1
            assert parts[0][1] == stored.sent, name
            assert parts[0][0]["content-type"].startswith("application/dicom")
    # dicomweb-client's own retrieval, whole study.
    got = corpus.client().retrieve_study(corpus.studies["rle"].ds.StudyInstanceUID)
    assert [d.SOPInstanceUID for d in got] == [corpus.studies["rle"].ds.SOPInstanceUID]


def test_uncompressed_retrieval_is_transcoded(corpus: Corpus) -> None:
    stored = corpus.studies["rle"]
    study, series, instance = stored.uids
    ds = corpus.client().retrieve_instance(
        study, series, instance, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),)
    )
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.SOPInstanceUID == instance
    assert np.array_equal(ds.pixel_array, stored.ds.pixel_array)


def test_series_metadata_and_bulkdata(corpus: Corpus) -> None:
    client = corpus.client()
    stored = corpus.studies["ct"]
    study, series, instance = stored.uids
    meta = client.retrieve_series_metadata(study, series)
    assert len(meta) == 1
    item = meta[0]
    assert item["00080018"]["Value"] == [instance]
    assert item["00100020"]["Value"] == [AYGUL]
    pixel_uri = item["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(f"{corpus.url}/dicomweb/studies/{study}/series/{series}/")
    bulk = client.retrieve_bulkdata(pixel_uri)
    assert bulk[0] == stored.ds.PixelData
    # Every value in the metadata matches the dataset that was stored.
    back = pydicom.Dataset.from_json(
        {k: v for k, v in item.items() if "BulkDataURI" not in v and k != "00080005"}
    )
    for elem in back:
        if elem.VR != "SQ":
            assert elem.value == stored.ds[elem.tag].value, elem.keyword


def test_metadata_etag_and_gzip(corpus: Corpus) -> None:
    study, series, _ = corpus.studies["multiframe"].uids
    url = f"/dicomweb/studies/{study}/series/{series}/metadata"
    with corpus.http() as http:
        first = http.get(url, headers={"Accept-Encoding": "gzip"})
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/dicom+json"
        assert first.headers["content-encoding"] == "gzip"
        etag = first.headers["etag"]
        again = http.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        plain = http.get(url, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.json() == first.json()
        study_level = http.get(f"/dicomweb/studies/{study}/metadata").json()
        assert study_level == first.json()
        assert http.get(url, headers={"Accept": "application/dicom+xml"}).status_code == 406


def test_frames_equal_pydicom_decoding(corpus: Corpus) -> None:
    client = corpus.client()
    for name in ("ct", "multiframe", "rle", "jpeg", "j2k", "j2k-color"):
        stored = corpus.studies[name]
        study, series, instance = stored.uids
        original = io.BytesIO(stored.sent)
        count = int(stored.ds.get("NumberOfFrames") or 1)
        numbers = [1, count] if count > 1 else [1]
        frames = client.retrieve_instance_frames(
            study,
            series,
            instance,
            frame_numbers=numbers,
            media_types=("application/octet-stream",),
        )
        assert len(frames) == len(numbers)
        for number, frame in zip(numbers, frames, strict=True):
            original.seek(0)
            expected = pixel_array(original, index=number - 1)
            got = np.frombuffer(frame, dtype=expected.dtype.newbyteorder("<")).reshape(
                expected.shape
            )
            assert np.array_equal(got, expected), (name, number)


def test_frames_as_stored_and_406(corpus: Corpus) -> None:
    stored = corpus.studies["jpeg-12bit"]
    study, series, instance = stored.uids
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/1"
    with corpus.http() as http:
        # No decoder here for 12-bit JPEG Extended: uncompressed is impossible.
        assert http.get(url, headers={"Accept": OCTETS}).status_code == 406
        r = http.get(url, headers={"Accept": 'multipart/related; type="image/jpeg"'})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
        ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
        assert headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.51"
        assert body.startswith(b"\xff\xd8")  # a JPEG bitstream, as stored
        assert http.get(url.replace("/frames/1", "/frames/2")).status_code == 404
        assert http.get(url.replace("/frames/1", "/frames/0")).status_code == 400
        native = corpus.studies["mr"].uids
        r = http.get(
            f"/dicomweb/studies/{native[0]}/series/{native[1]}/instances/{native[2]}/frames/1",
            headers={"Accept": 'multipart/related; type="image/jp2"'},
        )
        assert r.status_code == 406


def test_rendered_and_thumbnails(corpus: Corpus) -> None:
    client = corpus.client()
    study, series, instance = corpus.studies["ct"].uids
    png = client.retrieve_instance_rendered(
        study, series, instance, media_types=("image/png",), params={"window": "40,400,linear"}
    )
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (128, 128) and image.mode == "L"
    jpeg = client.retrieve_instance_frames_rendered(
        study, series, instance, frame_numbers=[1], params={"viewport": "64,64", "quality": "50"}
    )
    assert Image.open(io.BytesIO(jpeg)).size == (64, 64)
    # A narrow window saturates more pixels than a wide one.
    narrow = np.asarray(
        Image.open(
            io.BytesIO(
                client.retrieve_instance_rendered(
                    study, series, instance, media_types=("image/png",), params={"window": "0,10"}
                )
            )
        )
    )
    wide = np.asarray(image)
    assert (np.isin(narrow, (0, 255))).mean() > (np.isin(wide, (0, 255))).mean()
    with corpus.http() as http:
        multi = corpus.studies["multiframe"].uids
        thumb = http.get(f"/dicomweb/studies/{multi[0]}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
        color = corpus.studies["j2k-color"].uids
        r = http.get(
            f"/dicomweb/studies/{color[0]}/series/{color[1]}/instances/{color[2]}/rendered"
        )
        assert Image.open(io.BytesIO(r.content)).mode == "RGB"
        bad = http.get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered",
            params={"window": "40"},
        )
        assert bad.status_code == 400
        gif = http.get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered",
            headers={"Accept": "image/gif"},
        )
        assert gif.status_code == 406


def test_imaging_study_and_endpoint_in_fhir(corpus: Corpus) -> None:
    stored = corpus.studies["multiframe"]
    study, series, instance = stored.uids
    with corpus.http() as http:
        bundle = http.get(
            "/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study}"}
        ).json()
        assert len(bundle["entry"]) == 1
        resource = bundle["entry"][0]["resource"]
        assert resource["id"] == study
        assert resource["subject"] == {"reference": "Patient/demo-aygul"}
        assert resource["started"].startswith("2026-03-01")
        assert resource["modality"] == [
            {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}
        ]
        assert resource["numberOfSeries"] == 1 and resource["numberOfInstances"] == 1
        assert resource["series"][0]["uid"] == series
        assert resource["series"][0]["instance"][0]["uid"] == instance
        endpoint = http.get(f"/fhir/{resource['endpoint'][0]['reference']}").json()
        assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
        assert endpoint["address"] == f"{corpus.url}/dicomweb"
        found = http.get(
            "/fhir/ImagingStudy",
            params={"patient": "Patient/demo-aygul", "modality": "US", "started": "ge2026-03-05"},
        ).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [
            corpus.studies["j2k-color"].ds.StudyInstanceUID
        ]
        assert http.delete(f"/fhir/ImagingStudy/{study}").status_code == 405


def test_every_retrieval_is_audited_with_its_patient(corpus: Corpus) -> None:
    study, series, _instance = corpus.studies["j2k"].uids
    with corpus.http() as http, corpus.http("auditor") as auditor:
        before = auditor.get(
            "/fhir/AuditEvent", params={"entity": f"ImagingStudy/{study}", "_count": "200"}
        ).json()
        http.get(f"/dicomweb/studies/{study}/series/{series}/metadata")
        after = auditor.get(
            "/fhir/AuditEvent", params={"entity": f"ImagingStudy/{study}", "_count": "200"}
        ).json()
        new = [
            e["resource"]
            for e in after.get("entry", [])
            if e["resource"]["id"] not in {x["resource"]["id"] for x in before.get("entry", [])}
        ]
        assert len(new) == 1
        event = new[0]
        assert event["type"]["code"] == "110104" and event["action"] == "R"
        assert event["outcome"] == "0"
        refs = [e["what"].get("reference") for e in event["entity"]]
        assert "Patient/demo-aygul" in refs and f"ImagingStudy/{study}" in refs
        assert event["agent"][0]["who"]["identifier"]["value"] == "dr.xinyuan.people"


def test_cors_for_configured_viewers_only(corpus: Corpus) -> None:
    with httpx.Client(base_url=corpus.url) as http:
        preflight = http.options(
            "/dicomweb/studies",
            headers={"Origin": VIEWER, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == VIEWER
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        stranger = http.options(
            "/dicomweb/studies",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in stranger.headers
    with corpus.http() as http:
        r = http.get("/dicomweb/studies", headers={"Origin": VIEWER})
        assert r.headers["access-control-allow-origin"] == VIEWER
        assert "ETag" in r.headers["access-control-expose-headers"]
        assert (
            "access-control-allow-origin"
            not in http.get("/fhir/metadata", headers={"Origin": VIEWER}).headers
        )


def test_without_a_token_nothing_is_served(corpus: Corpus) -> None:
    study, _, _ = corpus.studies["ct"].uids
    with httpx.Client(base_url=corpus.url) as http:
        assert http.get("/dicomweb/studies").status_code == 401
        assert http.get(f"/dicomweb/studies/{study}/metadata").status_code == 401


def test_blob_store_holds_each_instance_once(corpus: Corpus) -> None:
    root = Path(corpus.settings.storage_url.removeprefix("file://"))
    blobs = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(blobs) == len(corpus.studies)
