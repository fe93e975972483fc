"""Crashes leave nothing behind, or something sweeps it (issue 11, section 3): orphan blobs,
interrupted puts and spool files swept at start-up and by `alliance storage sweep`; WADO-RS
refuses before its 200 when a blob is missing; `/readyz` says when the store takes no write;
stale ImagingStudy counts re-derived. Both databases; both blob backends where cheap."""

from __future__ import annotations

import errno
import io
import os
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alliance import clock
from alliance.config import Settings, get_settings
from alliance.errors import Unavailable
from alliance.storage import BlobStore, FileBlobStore
from alliance.sweep import SPOOL_PREFIXES
from imaging.models import Instance
from imaging.service import Imaging
from server.app import create_app
from server.cli import main
from server.sweep import sweep
from tests.conftest import bearer
from tests.imaging_data import ct_series, multipart, stow_headers
from tests.s3server import S3Server

AGE = 3600
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _app(settings: Settings, backend: str, request: pytest.FixtureRequest) -> FastAPI:
    update: dict[str, object] = {"sweep_min_age_seconds": AGE}
    if backend == "s3":
        server: S3Server = request.getfixturevalue("s3")
        update["storage_url"] = server.url_for(f"sweep-{uuid.uuid4().hex[:16]}")
    return create_app(settings.model_copy(update=update))


def _stow(client: TestClient, parts: list[bytes]) -> None:
    r = client.post("/dicomweb/studies", content=multipart(parts), headers=stow_headers())
    assert r.status_code == 200, r.text


def _run(app: FastAPI, *, dry_run: bool) -> list[str]:
    services = app.state.services
    imaging: Imaging = app.state.imaging
    report = sweep(services.db, services.blobs, imaging, AGE, dry_run=dry_run)
    return report.blobs


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_sweep_removes_old_orphans_only(
    backend: str, settings: Settings, request: pytest.FixtureRequest
) -> None:
    app = _app(settings, backend, request)
    blobs: BlobStore = app.state.services.blobs
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            _stow(client, ct_series(2))
            used = sorted(blobs.list_keys("sha256/"))
            orphan = blobs.put(io.BytesIO(b"an upload whose row never committed")).key
            checkpoint = blobs.put(io.BytesIO(b"{}"), key="audit-checkpoints/000000000001.json")
            # Young: an upload may still be running, so nothing goes.
            assert _run(app, dry_run=False) == []
            assert blobs.exists(orphan)
            clock.advance(timedelta(seconds=AGE + 60))
            assert _run(app, dry_run=True) == [orphan]
            assert blobs.exists(orphan)
            assert _run(app, dry_run=False) == [orphan]
            assert not blobs.exists(orphan)
            assert blobs.exists(checkpoint.key)
            assert sorted(blobs.list_keys("sha256/")) == used
            # Putting old bytes again makes them young: the sweep leaves them to that upload.
            again = blobs.put(io.BytesIO(b"sent once more"))
            clock.reset()
            blobs.put(io.BytesIO(b"sent once more"))
            clock.advance(timedelta(seconds=AGE - 60))
            assert _run(app, dry_run=False) == []
            assert blobs.exists(again.key)
    finally:
        app.state.services.db.dispose()


def test_sweep_removes_old_spool_files_and_partial_puts(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"sweep_on_start": False}))
    store = app.state.services.blobs
    assert isinstance(store, FileBlobStore)
    old = time.time() - AGE - 60
    fd, spool = tempfile.mkstemp(prefix=SPOOL_PREFIXES[1], suffix=".dcm")
    os.close(fd)
    os.utime(spool, (old, old))
    fd, fresh = tempfile.mkstemp(prefix=SPOOL_PREFIXES[0], suffix=".dcm")
    os.close(fd)
    (store.root / "sha256").mkdir(exist_ok=True)
    partial = store.root / "sha256" / ".put-crashed.tmp"
    partial.write_bytes(b"half")
    os.utime(partial, (old, old))
    try:
        report = sweep(app.state.services.db, store, app.state.imaging, AGE, dry_run=True)
        assert spool in report.spool and fresh not in report.spool
        assert report.partials == ["sha256/.put-crashed.tmp"]
        assert Path(spool).exists() and partial.exists()
        report = sweep(app.state.services.db, store, app.state.imaging, AGE, dry_run=False)
        assert spool in report.spool
        assert not Path(spool).exists() and not partial.exists()
        assert Path(fresh).exists()
    finally:
        Path(fresh).unlink(missing_ok=True)
        app.state.services.db.dispose()


def test_start_up_sweeps(settings: Settings) -> None:
    settings = settings.model_copy(update={"sweep_min_age_seconds": AGE})
    first = create_app(settings.model_copy(update={"sweep_on_start": False}))
    orphan = first.state.services.blobs.put(io.BytesIO(b"left by a crash")).key
    first.state.services.db.dispose()
    clock.advance(timedelta(seconds=AGE + 60))
    app = create_app(settings)
    try:
        with TestClient(app):
            assert not app.state.services.blobs.exists(orphan)
    finally:
        app.state.services.db.dispose()


def test_cli_sweep_dry_run_prints_and_keeps(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_app(settings.model_copy(update={"sweep_on_start": False}))
    blobs = app.state.services.blobs
    orphan = blobs.put(io.BytesIO(b"orphan for the command line")).key
    app.state.services.db.dispose()
    monkeypatch.setenv("ALLIANCE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ALLIANCE_STORAGE_URL", settings.storage_url)
    monkeypatch.setenv("ALLIANCE_DEMO", "true")
    get_settings.cache_clear()  # the command reads these settings, not a previous test's
    assert main(["storage", "sweep", "--dry-run", "--min-age", "60"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("0 orphan blobs")
    clock.advance(timedelta(seconds=120))
    assert main(["storage", "sweep", "--dry-run", "--min-age", "60"]) == 0
    out = capsys.readouterr().out
    assert f"would remove orphan blob {orphan}" in out
    assert blobs.exists(orphan)
    assert main(["storage", "sweep", "--min-age", "60"]) == 0
    assert f"removed orphan blob {orphan}" in capsys.readouterr().out
    assert not blobs.exists(orphan)
    get_settings.cache_clear()


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_wado_missing_blob_is_404_before_200(
    backend: str, settings: Settings, request: pytest.FixtureRequest
) -> None:
    app = _app(settings, backend, request)
    blobs: BlobStore = app.state.services.blobs
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            parts = ct_series(3)
            _stow(client, parts)
            ds = pydicom.dcmread(io.BytesIO(parts[2]))
            with app.state.services.db.transaction() as session:
                key = session.get(Instance, ds.SOPInstanceUID).blob_key  # type: ignore[union-attr]
            blobs.delete(key)
            study = f"/dicomweb/studies/{ds.StudyInstanceUID}"
            instance = f"{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            for url, accept in (
                (study, ANY_SYNTAX),
                (instance, ANY_SYNTAX),
                (f"{instance}/frames/1", 'multipart/related; type="application/octet-stream"'),
                (f"{instance}/rendered", "image/jpeg"),
            ):
                r = client.get(url, headers={"Accept": accept})
                assert r.status_code == 404, (url, r.status_code)
                assert key not in r.text and "sha256" not in r.text
    finally:
        app.state.services.db.dispose()


def test_wado_store_down_is_503(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(settings)
    blobs = app.state.services.blobs
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            parts = ct_series(1)
            _stow(client, parts)
            ds = pydicom.dcmread(io.BytesIO(parts[0]))

            def unavailable(key: str) -> bool:
                raise Unavailable(f"S3 blob store http://10.0.0.9:9000/bucket: {key} failed")

            monkeypatch.setattr(blobs, "exists", unavailable)
            r = client.get(
                f"/dicomweb/studies/{ds.StudyInstanceUID}", headers={"Accept": ANY_SYNTAX}
            )
            assert r.status_code == 503
            assert "10.0.0.9" not in r.text and "sha256" not in r.text
    finally:
        app.state.services.db.dispose()


def test_readyz_503_when_the_store_takes_no_write(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == 200

            def full(*_args: object, **_kwargs: object) -> tuple[int, str]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr("alliance.storage.tempfile.mkstemp", full)
            r = client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["checks"]["database"] == "ok"
            assert "cannot take a write" in r.json()["checks"]["storage"]
    finally:
        app.state.services.db.dispose()


@pytest.mark.s3
def test_readyz_writes_to_s3(settings: Settings, request: pytest.FixtureRequest) -> None:
    app = _app(settings, "s3", request)
    try:
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == 200
            assert app.state.services.blobs.exists("health/ping")
    finally:
        app.state.services.db.dispose()


def test_stale_imaging_study_rederived(settings: Settings, tmp_path: Path) -> None:
    app = create_app(settings.model_copy(update={"sweep_on_start": False}))
    imaging: Imaging = app.state.imaging
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as client:
            parts = ct_series(4)
            _stow(client, parts[:1])
            uid = pydicom.dcmread(io.BytesIO(parts[0])).StudyInstanceUID
            # As a C-STORE association indexes: one instance per transaction, the
            # ImagingStudy refreshed at its end, which a killed process never reaches.
            for n, data in enumerate(parts[1:]):
                path = tmp_path / f"{n}.dcm"
                path.write_bytes(data)
                staged = imaging.stage(path)
                with imaging.db.transaction(write=True) as session:
                    assert imaging.index(session, [staged], hospital_id="xy-people")[0].ok
            fhir = f"/fhir/ImagingStudy/{uid}"
            assert client.get(fhir).json()["numberOfInstances"] == 1
            report = sweep(app.state.services.db, imaging.blobs, imaging, AGE, dry_run=True)
            assert report.studies == [uid]
            assert client.get(fhir).json()["numberOfInstances"] == 1
            report = sweep(app.state.services.db, imaging.blobs, imaging, AGE, dry_run=False)
            assert report.studies == [uid]
            assert client.get(fhir).json()["numberOfInstances"] == 4
            assert imaging.refresh_stale() == []
    finally:
        app.state.services.db.dispose()
