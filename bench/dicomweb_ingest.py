"""Imaging: STOW-RS throughput and server memory, series metadata latency, QIDO-RS latency, each
against a baseline measured in the same run.

- STOW-RS: a synthetic CT study of `--instances` (default 300) slices of 512x512 16-bit pixels
  (about 157 MB), streamed from disk as one multipart/related request (chunked) to the app
  served by uvicorn in a separate process, as a county doctor with a bearer token. Figures:
  instances/s and MB/s, and the server process's peak resident memory above its level before
  the upload, sampled every 10 ms from /proc. The same is done first with a study a third of
  the size: the peak must not grow with the study (parts are spooled to disk one at a time).
  Baseline: the same files put straight into a blob store of the same kind (`BlobStore.put`
  in this process, fresh root so nothing is deduplicated). Ratio = STOW MB/s / baseline MB/s.
- WADO-RS metadata of a 600-instance series (small slices: metadata does not depend on pixel
  size): the first request after ingest ("cold": the gzip built at ingest is read from the
  database), then warm requests (median and p95), and one request after the stored gzip is
  dropped ("rebuild": rebuilt from the 600 instances' stored JSON). Baseline: reading the
  series row's gzip and decompressing it in this process (the client decompresses too).
- QIDO-RS with 10,000 studies indexed (inserted straight into the index tables; half held for
  reconciliation, half with an ImagingStudy row, so the access rule's join is exercised):
  `limit=100`, a PatientName prefix, and a StudyDate range with ModalitiesInStudy, median and
  p95. Baseline: the same SQL (visibility rule + matching conditions) in this process.

Run: `.venv/bin/python bench/dicomweb_ingest.py [--instances 300] [--database-url URL]`; well under
three minutes on 2 cores. Figures go to stdout and `bench/results/imaging.json`. Nothing here
asserts on speed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import uvicorn
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import insert, select, update

from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.models import ResourceRow
from alliance.security.access import Principal, visibility
from alliance.security.scopes import parse_scopes
from alliance.security.service import get_user, token_claims
from alliance.security.tokens import issue_token
from alliance.storage import open_blob_store
from fhir_mappings import build_registry
from imaging import qido
from imaging.access import reachable_studies
from imaging.models import Series, Study
from server.demo import identity_number, seed_demo
from server.migrate import upgrade

RESULTS = Path(__file__).resolve().parent / "results" / "imaging.json"
AYGUL = identity_number("654025", "19780921", "024")
BOUNDARY = "bench-imaging-boundary"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


# ---- data --------------------------------------------------------------------------------------


def ct_slice(study: str, series: str, number: int, size: int, rng: np.random.Generator) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "Nurlan^Aygul=阿依古丽·努尔兰", AYGUL
    ds.StudyDate, ds.StudyTime, ds.Modality = "20261101", "101500", "CT"
    ds.AccessionNumber = "BENCH" + study[-6:]
    ds.StudyDescription, ds.SeriesDescription = "CT chest", "Axial 1.25mm"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.ImagePositionPatient = [0.0, 0.0, number * 1.25]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.25
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_study(folder: Path, count: int, size: int, seed: int) -> tuple[str, str, list[Path]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(1, count + 1):
        path = folder / f"{n:04d}.dcm"
        path.write_bytes(ct_slice(study, series, n, size, rng))
        paths.append(path)
    return study, series, paths


def multipart_stream(paths: list[Path]) -> Iterator[bytes]:
    """The STOW body read from disk as it is sent: the client never holds the study either."""
    for path in paths:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                yield chunk
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


# ---- the server --------------------------------------------------------------------------------


def _serve(database_url: str, storage_url: str, port: int) -> None:
    from server.app import create_app

    settings = Settings(
        database_url=database_url,
        storage_url=storage_url,
        base_url=f"http://127.0.0.1:{port}",
        demo=True,
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def served(database_url: str, storage_url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, storage_url, port), daemon=True
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if not proc.is_alive():
                raise SystemExit(f"the server exited with code {proc.exitcode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer /healthz within 60 s")
            time.sleep(0.05)
        assert proc.pid is not None
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.join(10)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakMemory:
    """Samples a process's resident memory every 10 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.before


# ---- measurements ------------------------------------------------------------------------------


def stow(url: str, token: str, paths: list[Path], pid: int) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in paths)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
    }
    with PeakMemory(pid) as memory:
        start = time.perf_counter()
        r = httpx.post(
            f"{url}/dicomweb/studies",
            content=multipart_stream(paths),
            headers=headers,
            timeout=600,
        )
        elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"STOW failed: {r.status_code} {r.text[:500]}")
    return {
        "instances": len(paths),
        "bytes": size,
        "seconds": elapsed,
        "instances_per_s": len(paths) / elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "rss_before_mb": memory.before / 1e6,
        "rss_peak_mb": memory.peak / 1e6,
        "rss_growth_mb": memory.growth / 1e6,
    }


def baseline_put(storage_root: Path, paths: list[Path]) -> dict[str, Any]:
    store = open_blob_store(storage_root.as_uri())
    size = sum(p.stat().st_size for p in paths)
    start = time.perf_counter()
    for path in paths:
        with path.open("rb") as handle:
            store.put(handle, content_type="application/dicom")
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "instances_per_s": len(paths) / elapsed,
    }


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000,
        "n": len(ordered),
    }


def timed_get(client: httpx.Client, url: str, **kwargs: Any) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    r = client.get(url, **kwargs)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"GET {url} failed: {r.status_code} {r.text[:300]}")
    return elapsed, r


def metadata_bench(
    url: str, token: str, db: Database, study: str, series: str, warm: int
) -> dict[str, Any]:
    path = f"{url}/dicomweb/studies/{study}/series/{series}/metadata"
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        cold, r = timed_get(client, path)
        count = len(r.json())
        samples = [timed_get(client, path)[0] for _ in range(warm)]
        with db.transaction(write=True) as session:
            session.execute(
                update(Series).where(Series.series_uid == series).values(metadata_gz=None)
            )
        rebuild, _ = timed_get(client, path)
        again, _ = timed_get(client, path)
    base_samples = []
    for _ in range(warm):
        start = time.perf_counter()
        with db.transaction() as session:
            packed = session.scalar(select(Series.metadata_gz).where(Series.series_uid == series))
        gzip.decompress(packed or b"")
        base_samples.append(time.perf_counter() - start)
    return {
        "instances": count,
        "cold_ms": cold * 1000,
        "warm": summary(samples),
        "rebuild_ms": rebuild * 1000,
        "after_rebuild_ms": again * 1000,
        "baseline": summary(base_samples),
        "compressed_bytes": len(gzip.compress(r.content)),
    }


def insert_studies(db: Database, count: int, rng: random.Random) -> None:
    """`count` studies straight into the index (and an ImagingStudy row for half of them)."""
    now = datetime.now(UTC)
    families = ["wang", "li", "zhang", "liu", "chen", "nurlan", "memet", "ma", "aygul", "erlan"]
    modalities = ["CT", "MR", "US", "DX", "CR"]
    studies, series, rows = [], [], []
    for i in range(count):
        uid = f"2.25.{uuid.uuid4().int}"[:64]
        family = rng.choice(families)
        linked = i % 2 == 0
        name = f"{family.capitalize()}^{rng.choice(['Jianguo', 'Xiulan', 'Aygul', 'Erlan'])}{i}"
        studies.append(
            {
                "study_uid": uid,
                "hospital_id": "xy-people",
                "patient_id": "demo-aygul" if linked else None,
                "fhir_stale": False,
                "patient_name": name,
                "name_alphabetic": name.lower(),
                "dicom_patient_id": f"P{i:06d}",
                "study_date": f"2025{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                "study_time": "101500",
                "modalities": rng.choice(modalities),
                "number_of_series": 1,
                "number_of_instances": 1,
                "size_bytes": 1,
                "created": now,
                "updated": now,
            }
        )
        series.append(
            {
                "series_uid": f"2.25.{uuid.uuid4().int}"[:64],
                "study_uid": uid,
                "modality": studies[-1]["modalities"],
                "number_of_instances": 1,
                "size_bytes": 1,
                "created": now,
            }
        )
        if linked:
            rows.append(
                {
                    "resource_type": "ImagingStudy",
                    "id": uid,
                    "version": 1,
                    "last_updated": now,
                    "deleted": False,
                    "patient_id": "demo-aygul",
                    "organization_id": "xy-people",
                }
            )
    with db.transaction(write=True) as session:
        session.execute(insert(Study), studies)
        session.execute(insert(Series), series)
        session.execute(insert(ResourceRow), rows)
    if not db.is_sqlite:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


QIDO_CASES = {
    "latest 100": [("limit", "100")],
    "PatientName=chen*": [("PatientName", "chen*"), ("limit", "100")],
    "StudyDate range + CT": [
        ("StudyDate", "20250301-20250331"),
        ("ModalitiesInStudy", "CT"),
        ("limit", "100"),
    ],
}


def qido_bench(
    url: str, token: str, db: Database, settings: Settings, repeat: int
) -> dict[str, Any]:
    registry = build_registry(settings)
    with db.transaction() as session:
        user = get_user(session=session, username="dr.xinyuan.people")
        claims = token_claims(user, "")
    principal = Principal(
        subject=claims.subject,
        username=claims.username,
        kind=claims.kind,
        hospital_id=claims.hospital_id,
        role=claims.role,
        capabilities=frozenset({"clinical"}),
        scopes=tuple(parse_scopes(claims.scope)),
    )
    visible = visibility(principal, registry.get)
    out: dict[str, Any] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for name, params in QIDO_CASES.items():
            timed_get(client, f"{url}/dicomweb/studies", params=params)  # warm-up
            samples, found = [], 0
            for _ in range(repeat):
                elapsed, r = timed_get(client, f"{url}/dicomweb/studies", params=params)
                samples.append(elapsed)
                found = len(r.json())
            query = qido.parse_query(params, "study")
            base = []
            for _ in range(repeat):
                start = time.perf_counter()
                with db.transaction() as session:
                    statement = qido.ordered_studies(
                        reachable_studies("xy-people", principal.capabilities, visible).where(
                            *query.conditions
                        )
                    ).limit(query.limit)
                    matched = list(session.scalars(statement))
                    [qido.study_json(s, query, settings.dicomweb_base) for s in matched]
                base.append(time.perf_counter() - start)
            out[name] = {"results": found, "http": summary(samples), "baseline": summary(base)}
    return out


# ---- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=300, help="slices of the big study")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of a slice")
    parser.add_argument("--series", type=int, default=600, help="instances of the metadata series")
    parser.add_argument("--studies", type=int, default=10_000, help="studies indexed for QIDO")
    parser.add_argument("--repeat", type=int, default=30, help="timed requests per latency case")
    parser.add_argument("--database-url", help="an empty database (default: a fresh SQLite file)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
        }
    }
    with tempfile.TemporaryDirectory(prefix="imaging-bench-") as tmp_name:
        tmp = Path(tmp_name)
        url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
        storage = tmp / "blobs"
        settings = Settings(database_url=url, storage_url=storage.as_uri(), demo=True)
        upgrade(url)
        seed_demo(settings)
        db = Database(url)
        results["machine"]["database"] = db.engine.dialect.name
        print(
            f"machine: nproc={os.cpu_count()}, Python {platform.python_version()}, "
            f"database {db.engine.dialect.name}, blob store: directory"
        )
        small = max(1, args.instances // 3)
        t0 = time.perf_counter()
        _, _, small_paths = write_study(tmp / "small", small, args.size, 1)
        _, _, big_paths = write_study(tmp / "big", args.instances, args.size, 2)
        meta_study, meta_series, meta_paths = write_study(tmp / "meta", args.series, 64, 3)
        big_mb = sum(p.stat().st_size for p in big_paths) / 1e6
        print(
            f"data: studies of {small} and {args.instances} slices {args.size}x{args.size} "
            f"16-bit ({big_mb:.0f} MB), a {args.series}-instance series, written to disk in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        with served(url, storage.as_uri()) as (base_url, pid):
            server_settings = settings.model_copy(update={"base_url": base_url})
            with db.transaction() as session:
                claims = token_claims(get_user(session=session, username="dr.xinyuan.people"), "")
            token = issue_token(server_settings, claims)[0]

            stow_small = stow(base_url, token, small_paths, pid)
            stow_big = stow(base_url, token, big_paths, pid)
            base = baseline_put(tmp / "baseline-blobs", big_paths)
            results["stow"] = {"small": stow_small, "big": stow_big, "baseline_put": base}
            print()
            print("STOW-RS (one request, chunked)    inst/s     MB/s   peak RSS growth")
            for row in (stow_small, stow_big):
                print(
                    f"  {row['instances']:4d} instances ({row['bytes'] / 1e6:6.1f} MB) "
                    f"{row['instances_per_s']:9.1f} {row['mb_per_s']:8.1f}   "
                    f"{row['rss_growth_mb']:6.1f} MB (peak {row['rss_peak_mb']:.0f} MB)"
                )
            print(
                f"  baseline BlobStore.put          {base['instances_per_s']:9.1f} "
                f"{base['mb_per_s']:8.1f}"
            )
            ratio = stow_big["mb_per_s"] / base["mb_per_s"]
            growth_ratio = stow_big["rss_growth_mb"] / max(stow_small["rss_growth_mb"], 1.0)
            print(f"  ratio STOW / baseline MB/s: {ratio:.2f}")

            stow(base_url, token, meta_paths, pid)
            meta = metadata_bench(base_url, token, db, meta_study, meta_series, args.repeat)
            results["metadata"] = meta
            print()
            print(f"WADO-RS series metadata, {meta['instances']} instances")
            print(
                f"  cold (first request) {meta['cold_ms']:7.1f} ms; warm median "
                f"{meta['warm']['median_ms']:.1f} ms, p95 {meta['warm']['p95_ms']:.1f} ms; "
                f"rebuild after the stored gzip is dropped {meta['rebuild_ms']:.1f} ms"
            )
            print(
                f"  baseline (row read + gunzip in-process) median "
                f"{meta['baseline']['median_ms']:.1f} ms; ratio warm / baseline "
                f"{meta['warm']['median_ms'] / meta['baseline']['median_ms']:.2f}"
            )

            t1 = time.perf_counter()
            insert_studies(db, args.studies, random.Random(7))
            print()
            print(
                f"QIDO-RS with {args.studies} more studies indexed "
                f"(inserted in {time.perf_counter() - t1:.1f} s)      median    p95   baseline"
            )
            found = qido_bench(base_url, token, db, server_settings, args.repeat)
            results["qido"] = found
            for name, row in found.items():
                print(
                    f"  {name:28s} ({row['results']:3d} results) {row['http']['median_ms']:7.1f} "
                    f"{row['http']['p95_ms']:6.1f} {row['baseline']['median_ms']:8.1f} ms  "
                    f"ratio {row['http']['median_ms'] / row['baseline']['median_ms']:.2f}"
                )
        db.dispose()
    note = [
        f"STOW-RS of {args.instances} 512x512 16-bit CT slices ({big_mb:.0f} MB): "
        f"{stow_big['instances_per_s']:.0f} instances/s, {stow_big['mb_per_s']:.0f} MB/s, "
        f"{ratio:.2f} of putting the same bytes straight into the blob store "
        f"({base['mb_per_s']:.0f} MB/s).",
        f"Server peak memory growth: {stow_small['rss_growth_mb']:.1f} MB for {small} instances, "
        f"{stow_big['rss_growth_mb']:.1f} MB for {args.instances} (x{growth_ratio:.2f} for "
        f"x{args.instances / small:.0f} the data).",
        f"Series metadata, {meta['instances']} instances: cold {meta['cold_ms']:.0f} ms, warm "
        f"{meta['warm']['median_ms']:.0f} ms median.",
        "QIDO-RS with "
        + f"{args.studies} studies: "
        + ", ".join(f"{k} {v['http']['median_ms']:.0f} ms" for k, v in found.items())
        + ".",
    ]
    results["closing_note"] = note
    results["seconds"] = time.perf_counter() - started
    print()
    for line in note:
        print(line)
    print(f"(whole run {results['seconds']:.0f} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
