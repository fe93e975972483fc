"""`/metrics`: the service's own counters, and the sum over every worker of `alliance serve
--workers N` (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from alliance import metrics
from tests.conftest import free_port
from tests.imaging_data import ct_series, multipart, stow_headers
from tests.teleconsults import beijing, book, open_consult, proposal_at, slot_id, weekday_ahead

ROOT = Path(__file__).resolve().parent.parent


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str, sample: str) -> float:
    """The value of one sample line (name with its labels, as written) of a scrape."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert found, f"{sample} not in the scrape"
    return float(found.group(1))


def test_stow_counts_instances_bytes_and_failures(as_user: Callable[[str], TestClient]) -> None:
    doctor = as_user("dr.xinyuan.people")
    before = {
        k: value("alliance_stow_instances_total", outcome=k)
        for k in ("stored", "duplicate", "failed")
    }
    bytes_before = value("alliance_stow_bytes_total")
    failures_before = value("alliance_stow_failures_total")
    body = multipart([*ct_series(2), b"not a DICOM file"])
    r = doctor.post("/dicomweb/studies", content=body, headers=stow_headers())
    assert r.status_code == 202, r.text
    assert doctor.post("/dicomweb/studies", content=body, headers=stow_headers()).status_code == 202
    assert {k: value("alliance_stow_instances_total", outcome=k) - before[k] for k in before} == {
        "stored": 2,
        "duplicate": 2,
        "failed": 2,
    }
    assert value("alliance_stow_bytes_total") - bytes_before == 2 * len(body)
    assert value("alliance_stow_failures_total") == failures_before
    junk = multipart([b"not a DICOM file"])
    assert doctor.post("/dicomweb/studies", content=junk, headers=stow_headers()).status_code == 409
    assert value("alliance_stow_failures_total") == failures_before + 1
    rendered = doctor.get("/metrics").text
    assert scraped(rendered, 'alliance_stow_instances_total{outcome="failed"}') == value(
        "alliance_stow_instances_total", outcome="failed"
    )


def test_audit_appends_are_counted_once_committed(as_user: Callable[[str], TestClient]) -> None:
    doctor = as_user("dr.xinyuan.people")
    before = value("alliance_audit_events_appended_total")
    assert doctor.get("/fhir/Patient/demo-aygul").status_code == 200
    assert doctor.get("/fhir/Patient/demo-ma-xiulan").status_code == 404
    assert value("alliance_audit_events_appended_total") == before + 2


def test_booking_conflicts_are_counted_by_rule(as_user: Callable[[str], TestClient]) -> None:
    doctor = as_user("dr.xinyuan.people")
    day = weekday_ahead(2)
    start = beijing(day, "14:00")
    slots = [slot_id("sp-subei-consult", start)]
    before = value("alliance_booking_conflicts_total", rule="specialist-double-booked")
    first, _ = open_consult(doctor)
    assert book(doctor, proposal_at(first, "sp-subei-role", start, slots)).status_code == 200
    second, _ = open_consult(doctor, "demo-wang-jianguo")
    r = book(doctor, proposal_at(second, "sp-subei-role", start, slots))
    assert r.status_code == 409 and "specialist-double-booked" in r.text
    assert value("alliance_booking_conflicts_total", rule="specialist-double-booked") == before + 1


def test_metrics_add_up_every_worker(database_url: str, tmp_path: Path) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the worker processes are the point here, not the database")
    port = free_port()
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"stale: a previous run's counts must not add up")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ALLIANCE_DATABASE_URL": database_url,
        "ALLIANCE_STORAGE_URL": (tmp_path / "blobs").as_uri(),
        "ALLIANCE_DEMO": "true",
        "ALLIANCE_BASE_URL": f"http://127.0.0.1:{port}",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    command = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        # Both workers must be up: each writes its own files, named by its process id.
        while len({p.stem.rsplit("_", 1)[-1] for p in folder.glob("*.db")}) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.2)
        for _ in range(30):
            with httpx.Client() as fresh:  # a new connection each time: any worker answers
                assert fresh.get(f"{base}/healthz").status_code == 200
        sample = 'alliance_http_requests_total{method="GET",route="/healthz",status="200"}'
        for _ in range(6):
            with httpx.Client() as fresh:
                assert scraped(fresh.get(f"{base}/metrics").text, sample) == 30
    finally:
        server.terminate()
        server.wait(30)
