"""WADO-RS frames read from the byte ranges recorded at ingest (PS3.18 10.4.1.1.3): each frame
is exactly what pydicom cuts out of the whole file, native and encapsulated (one fragment per
frame, several fragments per frame through the Basic Offset Table, one frame of several
fragments), on a directory and on S3 (a real SeaweedFS); the blob store is asked for the
frame's ranges and the instance is never read whole. Instances indexed before the ranges were
recorded are still served, from the whole file. A frame rendered again is not decoded again."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.encaps import encapsulate, generate_fragmented_frames, get_frame
from pydicom.pixels import pixel_array
from sqlalchemy import update

from alliance.config import Settings
from alliance.storage import BlobStore
from imaging import pixels, wado
from imaging.models import Instance
from server.app import create_app
from tests.conftest import bearer
from tests.imaging_data import encode, multipart, relabel, split_multipart, stow_headers

ANY_FRAME = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def refragmented(name: str, per_frame: int) -> bytes:
    """An encapsulated test file with each frame split into `per_frame` fragments, with a
    Basic Offset Table (PS3.5 A.4)."""
    ds = pydicom.dcmread(io.BytesIO(relabel(name)))
    count = int(ds.get("NumberOfFrames") or 1)
    frames = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=count)]
    ds.PixelData = encapsulate(frames, fragments_per_frame=per_frame, has_bot=True)
    return encode(ds)


def expected_frames(data: bytes) -> list[bytes]:
    """Each frame as pydicom extracts it from the whole file."""
    ds = pydicom.dcmread(io.BytesIO(data))
    count = int(ds.get("NumberOfFrames") or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return [bytes(get_frame(ds.PixelData, k, number_of_frames=count)) for k in range(count)]
    return [pixel_array(io.BytesIO(data), index=k).tobytes() for k in range(count)]


class Spy:
    """Records what is asked of the real blob store, and passes every call through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, blobs: BlobStore) -> None:
        self.ranges: list[tuple[str, int, int]] = []
        self.opened: list[str] = []
        read_range, open_ = blobs.read_range, blobs.open

        def spy_range(key: str, offset: int, length: int) -> bytes:
            self.ranges.append((key, offset, length))
            return read_range(key, offset, length)

        def spy_open(key: str) -> Any:
            self.opened.append(key)
            return open_(key)

        monkeypatch.setattr(blobs, "read_range", spy_range)
        monkeypatch.setattr(blobs, "open", spy_open)

    def clear(self) -> None:
        self.ranges.clear()
        self.opened.clear()


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def app_settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        settings = settings.model_copy(
            update={"storage_url": server.url_for(f"frames-{uuid.uuid4().hex[:16]}")}
        )
    yield settings


def test_frames_are_read_as_byte_ranges(
    app_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = {
        "native, 10 frames": relabel("emri_small.dcm"),
        "native, implicit VR": relabel("MR_small_implicit.dcm"),
        "RLE, one fragment per frame": relabel("emri_small_RLE.dcm"),
        "RLE, 3 fragments per frame (offset table)": refragmented("emri_small_RLE.dcm", 3),
        "JPEG, one frame of 4 fragments": refragmented("SC_rgb_jpeg_dcmtk.dcm", 4),
    }
    app = create_app(app_settings)
    blobs = app.state.services.blobs
    spy = Spy(monkeypatch, blobs)
    try:
        with TestClient(app, headers=bearer(app_settings, "dr.xinyuan.people")) as client:
            r = client.post(
                "/dicomweb/studies", content=multipart(sent.values()), headers=stow_headers()
            )
            assert r.status_code == 200, r.text
            for what, data in sent.items():
                ds = pydicom.dcmread(io.BytesIO(data))
                url = (
                    f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}"
                )
                expected = expected_frames(data)
                for number, frame in enumerate(expected, start=1):
                    spy.clear()
                    got = client.get(f"{url}/frames/{number}", headers={"Accept": ANY_FRAME})
                    assert got.status_code == 200, (what, got.text)
                    ((_, body),) = split_multipart(got.headers["content-type"], got.content)
                    assert body == frame, (what, number)
                    assert spy.opened == [], what  # never the whole instance
                    assert spy.ranges, what
                    assert sum(length for _, _, length in spy.ranges) == len(frame), what
                # Several frames in one request, in the order asked.
                if len(expected) > 2:
                    got = client.get(f"{url}/frames/3,1", headers={"Accept": ANY_FRAME})
                    parts = split_multipart(got.headers["content-type"], got.content)
                    assert [b for _, b in parts] == [expected[2], expected[0]]
                missing = client.get(
                    f"{url}/frames/{len(expected) + 1}", headers={"Accept": ANY_FRAME}
                )
                assert missing.status_code == 404
    finally:
        app.state.services.db.dispose()


def test_instances_without_ranges_are_served_from_the_whole_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance indexed before 0009 keeps no ranges (NULL): same frames, from the file."""
    data = refragmented("emri_small_RLE.dcm", 2)
    app = create_app(settings)
    services = app.state.services
    spy = Spy(monkeypatch, services.blobs)
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            r = client.post("/dicomweb/studies", content=multipart([data]), headers=stow_headers())
            assert r.status_code == 200, r.text
            ds = pydicom.dcmread(io.BytesIO(data))
            with services.db.transaction(write=True) as session:
                session.execute(
                    update(Instance)
                    .where(Instance.sop_instance_uid == ds.SOPInstanceUID)
                    .values(frame_ranges=None)
                )
            url = (
                f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}/frames/2"
            )
            spy.clear()
            got = client.get(url, headers={"Accept": ANY_FRAME})
            assert got.status_code == 200, got.text
            ((_, body),) = split_multipart(got.headers["content-type"], got.content)
            assert body == expected_frames(data)[1]
            assert spy.ranges == []
            assert len(spy.opened) == 1
    finally:
        services.db.dispose()


def test_rendering_again_reuses_the_decoded_frame(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame is decoded once for display: rendering it again, with another window or as
    PNG, reads nothing from the blob store and gives what a fresh decode gives."""
    data = relabel("emri_small.dcm")
    app = create_app(settings)
    services = app.state.services
    monkeypatch.setattr(wado, "DECODED", wado.DecodedFrames(1024 * 1024))
    spy = Spy(monkeypatch, services.blobs)
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            r = client.post("/dicomweb/studies", content=multipart([data]), headers=stow_headers())
            assert r.status_code == 200, r.text
            ds = pydicom.dcmread(io.BytesIO(data))
            url = (
                f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}/frames/2/rendered"
            )
            asks = [
                ({"Accept": "image/png"}, ""),
                ({"Accept": "image/png"}, "?window=100,50"),
                ({"Accept": "image/jpeg"}, "?viewport=32,32"),
            ]
            first = [client.get(url + q, headers=h).content for h, q in asks]
            opened = len(spy.opened)
            assert opened == 1  # decoded once, for all three
            again = [client.get(url + q, headers=h).content for h, q in asks]
            assert len(spy.opened) == opened and again == first
            monkeypatch.setattr(wado, "DECODED", wado.DecodedFrames(1024 * 1024))
            fresh = [client.get(url + q, headers=h).content for h, q in asks]
            assert fresh == first and len(spy.opened) == opened + 1
    finally:
        services.db.dispose()


def test_decoded_frames_stay_within_their_bytes() -> None:
    cache = wado.DecodedFrames(3 * 8 * 100)
    frame = [pixels.Decoded(None, np.zeros(100), None, False) for _ in range(4)]
    for k, f in enumerate(frame):
        cache.put((f"k{k}", 1), f)
    assert cache.get(("k0", 1)) is None
    assert [cache.get((f"k{k}", 1)) is frame[k] for k in (1, 2, 3)] == [True, True, True]
    cache.get(("k1", 1))  # most recent now: k2 goes first
    cache.put(("k4", 1), pixels.Decoded(None, np.zeros(100), None, False))
    assert cache.get(("k2", 1)) is None and cache.get(("k1", 1)) is frame[1]
