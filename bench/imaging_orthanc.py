"""Imaging side by side with Orthanc: STOW-RS, frames, rendered, C-STORE and server memory.

Both servers run on this machine in the same minutes, each on a free port with its own
storage, and are measured by the same client code (`bench/dicomweb_harness.py`, the alliance's
shared DICOMweb harness) in interleaved rounds:

- **alliance**: `alliance serve` (one uvicorn worker, the C-STORE receiver in the same
  process) on a fresh SQLite database and directory blob store, demo alliance seeded, as
  `dr.xinyuan.people` with a bearer token; C-STORE as the calling AE title `XYPEOPLE`.
- **orthanc**: Debian's `Orthanc` with the `orthanc-dicomweb` plugin, started here with a
  config of its own (no authentication, its own storage folder, default storage settings:
  fsync on, no compression). When it is not installed, the run is skipped with the reason
  (`apt-get install orthanc orthanc-dicomweb`; the system service need not run).

Per round and server: the harness (STOW-RS of 300 512x512 CT slices with 1 client and with 4,
QIDO, series metadata, one frame with two Accept headers, rendered PNG and JPEG), then a
C-STORE of 300 such files over one association (wall time and server CPU per file), and once
per server at the end a 600-instance STOW-RS with 4 clients for the server's peak RSS growth.
Server CPU is read from /proc (utime + stime) before and after each phase.

The table gives each figure's median over the rounds for both servers and the ratio
alliance/orthanc (for throughput, higher is better; for time, lower is better), with the
1-minute load average: the machine may be shared, so read the ratios, which come from the
same minutes. `--server-path DIR` serves the code of another checkout (e.g. the commit before
a change) to measure "before". Figures go to `bench/results/imaging_orthanc.json`; nothing
asserts on speed.

Run: `.venv/bin/python bench/imaging_orthanc.py [--rounds 3] [--instances 300]`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.filebase import DicomBytesIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomweb_harness as harness

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "imaging_orthanc.json"
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CALLING_AE = "XYPEOPLE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's worker processes with `--workers N`)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found += process_tree(int(child))
    return found


def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not answer {url} within 90 s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def orthanc(tmp: Path) -> Iterator[dict[str, Any]]:
    http_port, dicom_port = free_port(), free_port()
    storage = tmp / "orthanc-db"
    config = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(config))
    log = tmp / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([ORTHANC, str(path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/system", proc, "Orthanc", log)
        version = httpx.get(f"http://127.0.0.1:{http_port}/system").json().get("Version")
        yield {
            "name": "orthanc",
            "label": f"Orthanc {version}",
            "base": f"http://127.0.0.1:{http_port}/dicom-web",
            "pids": [proc.pid],
            "token": None,
            "dicom": ("127.0.0.1", dicom_port, "ORTHANC"),
        }
    finally:
        stop(proc)


@contextlib.contextmanager
def alliance(tmp: Path, server_path: Path, workers: int) -> Iterator[dict[str, Any]]:
    http_port, dicom_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{http_port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(server_path),
        "ALLIANCE_DEMO": "true",
        "ALLIANCE_DATABASE_URL": f"sqlite:///{tmp / 'alliance.db'}",
        "ALLIANCE_STORAGE_URL": (tmp / "alliance-blobs").as_uri(),
        "ALLIANCE_BASE_URL": base_url,
        "ALLIANCE_DICOM_PORT": str(dicom_port),
        "ALLIANCE_LOG_LEVEL": "WARNING",
    }
    cli = [sys.executable, "-c", "import sys; from server.cli import main; sys.exit(main())"]
    for step in (["db", "upgrade"], ["seed-demo"]):
        subprocess.run([*cli, *step], env=env, cwd=tmp, check=True, capture_output=True)
    log = tmp / "alliance.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cli, "serve", "--port", str(http_port), "--workers", str(workers)],
            env=env,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"{base_url}/healthz", proc, "the alliance server", log)
        yield {
            "name": "alliance",
            "label": f"alliance ({server_path}, {workers} worker(s))",
            "base": f"{base_url}/dicomweb",
            "pids": alliance_pids(proc.pid, workers),
            "token": bearer_token(env),
            "dicom": ("127.0.0.1", dicom_port, "ALLIANCE"),
        }
    finally:
        stop(proc)


def alliance_pids(pid: int, workers: int) -> list[int]:
    """The server's processes: with several workers, the supervisor (which also runs the
    C-STORE receiver) and every worker, once they are all up."""
    deadline = time.monotonic() + 60
    while True:
        found = process_tree(pid)
        # The supervisor, its workers, and multiprocessing's resource tracker.
        if workers == 1 or len(found) >= workers + 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def bearer_token(env: dict[str, str]) -> str:
    """A token for dr.xinyuan.people, issued with the demo settings the server runs with."""
    from alliance.config import Settings
    from alliance.db import Database
    from alliance.security.service import get_user, token_claims
    from alliance.security.tokens import issue_token

    settings = Settings(
        database_url=env["ALLIANCE_DATABASE_URL"],
        storage_url=env["ALLIANCE_STORAGE_URL"],
        base_url=env["ALLIANCE_BASE_URL"],
        demo=True,
    )
    db = Database(settings.database_url)
    with db.transaction() as session:
        claims = token_claims(get_user(session=session, username="dr.xinyuan.people"), "")
    db.dispose()
    return issue_token(settings, claims)[0]


def run_harness(server: dict[str, Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    argv = [
        "--base",
        server["base"],
        "--instances",
        str(args.instances),
        "--out",
        str(out),
        "--pid",
        ",".join(str(p) for p in server["pids"]),
        "--label",
        server["label"],
        "--repeat",
        str(args.repeat),
        "--skip-disk",
    ]
    if server["token"]:
        argv += ["--token", server["token"]]
    code = harness.main(argv)
    found: dict[str, Any] = json.loads(out.read_text())
    if code != 0:
        raise SystemExit(f"the harness failed against {server['name']}: {found.get('errors')}")
    return found


def settle(pid: list[int]) -> float:
    """The server's CPU seconds once it has stopped working (work after a response, such as
    the alliance's refresh at the end of an association, counts)."""
    last = cpu_seconds(pid)
    while True:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now - last < 0.01:
            return now
        last = now


def c_store(server: dict[str, Any], blobs: list[bytes]) -> dict[str, Any]:
    """Every file over one association: wall time from A-ASSOCIATE to A-RELEASE."""
    from pynetdicom import AE, StoragePresentationContexts

    datasets = [pydicom.dcmread(DicomBytesIO(b)) for b in blobs]
    host, port, called = server["dicom"]
    ae = AE(ae_title=CALLING_AE)
    ae.requested_contexts = [
        c for c in StoragePresentationContexts if c.abstract_syntax == harness.CTImageStorage
    ]
    ae.maximum_pdu_size = 0
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300
    cpu0 = settle(server["pids"])
    start = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise SystemExit(f"C-STORE: {server['name']} refused the association")
    failed, dropped = 0, 0
    for ds in datasets:
        if not assoc.is_established:
            # The peer ended the association (seen from Orthanc on a loaded machine): the
            # figure is then not one association's; the count says so.
            dropped += 1
            assoc = ae.associate(host, port, ae_title=called)
        status = assoc.send_c_store(ds)
        if not status or status.Status != 0:
            failed += 1
    assoc.release()
    wall = time.perf_counter() - start
    cpu = settle(server["pids"]) - cpu0
    if failed:
        print(f"C-STORE: {failed} of {len(datasets)} failed on {server['name']}", file=sys.stderr)
    return {
        "files": len(datasets),
        "wall_s": wall,
        "files_per_s": len(datasets) / wall,
        "server_cpu_s": cpu,
        "server_cpu_ms_per_file": cpu * 1000 / len(datasets),
        "associations_dropped": dropped,
        "failed": failed,
    }


def rss_stow(
    server: dict[str, Any], blobs: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """A big STOW-RS with 4 clients: the server's resident memory before and at its peak."""
    study = {"n": len(blobs), "blobs": blobs}
    ns = argparse.Namespace(
        batch=50,
        token=server["token"],
        accept_encoding="gzip, deflate",
        timeout=600.0,
        sync=True,
    )
    watch = harness.ProcWatch(server["pids"])
    found = harness.stow(ns, server["base"], study, args.concurrency, watch)
    cpu = found["server_cpu_s"]
    return {
        "instances": len(blobs),
        "instances_per_s": found["instances_per_s"],
        "rss_before_MB": found["server_rss_before_MB"],
        "rss_peak_MB": found["server_peak_rss_MB"],
        "rss_growth_MB": found["server_peak_rss_MB"] - found["server_rss_before_MB"],
        "server_cpu_ms_per_instance": cpu * 1000 / len(blobs),
    }


#: (label, where in a round's figures, higher is better)
ROWS = [
    ("STOW 1 client inst/s", ("summary", "stow_1c_instances_per_s"), True),
    ("STOW 4 clients inst/s", ("summary", "stow_Nc_instances_per_s"), True),
    ("STOW 4 clients server CPU ms/inst", ("stow_Nc_cpu_ms",), False),
    ("STOW 1 client server CPU ms/inst", ("summary", "stow_1c_server_cpu_ms_per_instance"), False),
    ("QIDO median ms", ("summary", "qido_median_ms"), False),
    ("series metadata cold ms", ("summary", "metadata_cold_ms"), False),
    ("series metadata warm ms", ("summary", "metadata_warm_median_ms"), False),
    ("frame (explicit LE) median ms", ("summary", "frame_median_ms"), False),
    ("frame (transfer-syntax=*) median ms", ("summary", "frame_any_median_ms"), False),
    ("rendered PNG median ms", ("summary", "rendered_png_median_ms"), False),
    ("rendered JPEG median ms", ("summary", "rendered_jpeg_median_ms"), False),
    ("C-STORE wall s", ("cstore", "wall_s"), False),
    ("C-STORE server CPU ms/file", ("cstore", "server_cpu_ms_per_file"), False),
]


def dig(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def median(values: list[Any]) -> float | None:
    got = [v for v in values if isinstance(v, int | float)]
    return statistics.median(got) if got else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rss-instances", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=20, help="requests per latency figure")
    parser.add_argument("--server-path", type=Path, default=ROOT, help="checkout to serve")
    parser.add_argument("--workers", type=int, default=1, help="alliance serve --workers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if not (Path(ORTHANC).exists() and DICOMWEB_PLUGIN.exists()):
        print(
            "imaging vs Orthanc: SKIPPED: Orthanc or its DICOMweb plugin is not installed "
            f"({ORTHANC}, {DICOMWEB_PLUGIN}); apt-get install orthanc orthanc-dicomweb"
        )
        return 0
    started = time.perf_counter()
    results: dict[str, Any] = {"rounds": {"alliance": [], "orthanc": []}, "load": []}
    with tempfile.TemporaryDirectory(prefix="imaging-orthanc-") as name:
        tmp = Path(name)
        (tmp / "a").mkdir()
        (tmp / "o").mkdir()
        with (
            alliance(tmp / "a", args.server_path.resolve(), args.workers) as ours,
            orthanc(tmp / "o") as theirs,
        ):
            print(
                f"servers: {ours['label']} pids {ours['pids']}, "
                f"{theirs['label']} pids {theirs['pids']}"
            )
            cstore_blobs = harness.encode_study(
                harness.synth_pixels(args.instances, 7), "CSTOREBENCH", "C-STORE", 3
            )["blobs"]
            for r in range(args.rounds):
                for server in (ours, theirs) if r % 2 == 0 else (theirs, ours):
                    print(f"\n--- round {r + 1}: {server['name']} ---")
                    found = run_harness(server, args, tmp / f"{server['name']}-{r}.json")
                    cpu = dig(found, ("results", "stow_Nc", "server_cpu_s"))
                    found["stow_Nc_cpu_ms"] = cpu * 1000 / args.instances if cpu else None
                    # Fresh UIDs for each C-STORE: nothing is "already stored".
                    blobs = [_fresh_uids(b, r) for b in cstore_blobs]
                    found["cstore"] = c_store(server, blobs)
                    print(f"C-STORE {server['name']}: {found['cstore']}")
                    results["rounds"][server["name"]].append(found)
                    args.output.parent.mkdir(parents=True, exist_ok=True)
                    args.output.write_text(json.dumps(results, indent=2))
                results["load"].append(os.getloadavg()[0])
            big = harness.encode_study(
                harness.synth_pixels(args.rss_instances, 11), "RSSBENCH", "RSS", 4
            )["blobs"]
            for server in (ours, theirs):
                results[f"rss_{server['name']}"] = rss_stow(server, big, args)
    print()
    print(
        f"== imaging vs Orthanc, {args.instances} CT slices 512x512, medians of {args.rounds} "
        f"rounds; 1-min load average after each round: "
        + ", ".join(f"{x:.2f}" for x in results["load"])
    )
    print(f"{'figure':40s} {'alliance':>10s} {'orthanc':>10s} {'ratio':>7s}")
    summary: dict[str, Any] = {}
    for label, keys, higher in ROWS:
        a = median([dig(x, keys) for x in results["rounds"]["alliance"]])
        o = median([dig(x, keys) for x in results["rounds"]["orthanc"]])
        ratio = (a / o) if a and o else None
        summary[label] = {"alliance": a, "orthanc": o, "ratio": ratio, "higher_is_better": higher}
        print(f"{label:40s} {harness.fmt(a):>10s} {harness.fmt(o):>10s} {harness.fmt(ratio):>7s}")
    for name in ("alliance", "orthanc"):
        rss = results[f"rss_{name}"]
        print(
            f"{name}: STOW of {rss['instances']} instances, 4 clients: RSS "
            f"{rss['rss_before_MB']:.0f} -> peak {rss['rss_peak_MB']:.0f} MB "
            f"(growth {rss['rss_growth_MB']:.1f} MB), {rss['instances_per_s']:.0f} inst/s"
        )
    s = summary
    note = [
        f"STOW-RS 4 clients: {s['STOW 4 clients inst/s']['ratio']:.2f}x Orthanc's instances/s "
        f"(aim >= 1.2); server CPU per instance "
        f"{s['STOW 4 clients server CPU ms/inst']['ratio']:.2f}x Orthanc's (aim <= 1).",
        f"One frame, transfer-syntax=*: {s['frame (transfer-syntax=*) median ms']['ratio']:.2f}x "
        "Orthanc's latency (aim <= 1).",
        f"C-STORE of {args.instances} files, one association: "
        f"{s['C-STORE wall s']['ratio']:.2f}x Orthanc's wall time (aim <= 0.5), "
        f"CPU per file {s['C-STORE server CPU ms/file']['ratio']:.2f}x (aim <= 1.5).",
        f"Server RSS growth for a {args.rss_instances}-instance STOW-RS: "
        f"{results['rss_alliance']['rss_growth_MB']:.1f} MB (aim < 64 MB; Orthanc "
        f"{results['rss_orthanc']['rss_growth_MB']:.1f} MB).",
    ]
    results["summary"] = summary
    results["closing_note"] = note
    results["seconds"] = time.perf_counter() - started
    print()
    for line in note:
        print(line)
    print(f"(whole run {results['seconds']:.0f} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0


def _fresh_uids(blob: bytes, round_number: int) -> bytes:
    """The file with new Study, Series and SOP Instance UIDs (one study per round)."""
    ds = pydicom.dcmread(DicomBytesIO(blob))
    suffix = f".{round_number + 1}"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(getattr(ds, keyword))
        setattr(ds, keyword, (value[: 64 - len(suffix)] + suffix))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = DicomBytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return bytes(out.getvalue())


if __name__ == "__main__":
    sys.exit(main())
