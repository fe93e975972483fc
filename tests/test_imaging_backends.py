"""Ingest and retrieval on both blob backends: a directory, and S3 on a real SeaweedFS (the
same code production runs against MinIO). Refused input leaves the bucket as it was."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.pixels import pixel_array

from alliance.config import Settings
from server.app import create_app
from tests.conftest import bearer
from tests.imaging_data import ct_series, multipart, relabel, split_multipart, stow_headers
from tests.s3server import S3Server

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = 'multipart/related; type="application/octet-stream"'


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_ingest_and_retrieve(
    backend: str, settings: Settings, request: pytest.FixtureRequest
) -> None:
    if backend == "s3":
        server: S3Server = request.getfixturevalue("s3")
        settings = settings.model_copy(
            update={"storage_url": server.url_for(f"img-{uuid.uuid4().hex[:16]}")}
        )
    app = create_app(settings)
    blobs = app.state.services.blobs
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            sent = [relabel("emri_small_RLE.dcm"), relabel("SC_rgb_jpeg_dcmtk.dcm"), *ct_series(2)]
            r = client.post("/dicomweb/studies", content=multipart(sent), headers=stow_headers())
            assert r.status_code == 200, r.text
            assert len(list(blobs.list_keys())) == len(sent)
            for data in sent:
                ds = pydicom.dcmread(io.BytesIO(data))
                url = (
                    f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}"
                )
                got = client.get(url, headers={"Accept": ANY_SYNTAX})
                ((_, body),) = split_multipart(got.headers["content-type"], got.content)
                assert body == data
                frames = client.get(f"{url}/frames/1", headers={"Accept": OCTETS})
                ((_, frame),) = split_multipart(frames.headers["content-type"], frames.content)
                expected = pixel_array(io.BytesIO(data), index=0)
                assert np.array_equal(
                    np.frombuffer(frame, expected.dtype).reshape(expected.shape), expected
                )
                meta = client.get(f"{url}/metadata").json()
                assert meta[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
            # Other bytes under a stored SOP Instance UID: refused, and its blob swept.
            before = sorted(blobs.list_keys())
            ds = pydicom.dcmread(io.BytesIO(sent[-1]))
            ds.SeriesDescription = "tampered"
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            r = client.post(
                "/dicomweb/studies", content=multipart([out.getvalue()]), headers=stow_headers()
            )
            assert r.status_code == 409
            assert sorted(blobs.list_keys()) == before
    finally:
        app.state.services.db.dispose()
