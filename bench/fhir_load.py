"""The audited FHIR Patient read under load, served as operators serve it (`alliance serve
--workers 1` and `--workers 2`), on SQLite and on PostgreSQL, beside the same server's
unaudited floor measured through the same stack, in one run (issue 12, items 1 and 2).

For each database (a fresh SQLite file; a PostgreSQL database this run creates and drops) and
each worker count, the app as it ships is served as `alliance serve` serves it (with the
unaudited floor's route added, below), and Debian's
`wrk` (a C load generator: the client must not eat the cores the server needs) measures, after
an untimed warm-up, with keep-alive connections and a bearer token:

- **read**: `GET /fhir/Patient/{random id}` (FHIR R4 http.html#read) at 1, 8 and 32 clients:
  token verified, principal loaded, access rules in the query, one hash-chained AuditEvent
  committed before the response leaves (alliance.security.guard).
- **unaudited**: `GET /bench/unaudited/Patient/{random id}` at the same client counts, served
  by the same processes (bench/unaudited_floor.py adds the route to the shipped app): the same
  stack, unit of work, FhirStore read and response, without the token, principal, access rules
  and AuditEvent. `read/unaudited` is what security and audit leave of the read (issue 12 asks
  at least 0.67).
- **floor**: `GET /healthz` at the same client counts (uvicorn, middleware and routing alone),
  and `GET /fhir/metadata` (the CapabilityStatement) at 8 and 32 clients, for context.
- **search**: `GET /fhir/Patient?name=<family>&_count=20`, families chosen to have at least 20
  hits (20 AuditEvents per request: one per patient), at 8 clients.
- **create**: `POST /fhir/Patient` of a new valid Patient (GB 11643 identity number made by the
  wrk script) at 8 clients.

Each case runs `--repeat` times (interleaved, so a noisy moment hits every case alike) and the
median of the repeats is printed: requests/s, p50 and p99 latency (wrk's), and the load average
of the machine over the run. Any non-2xx answer or socket error fails the run. Nothing here
asserts on speed; the closing note compares the figures with what issue 12 asks for, and with
an earlier run's JSON (`--compare`) when given: run the code before a change with
`--server-path` pointing at its checkout to get "before" and "after" from the same machine.

Run: `.venv/bin/python bench/fhir_load.py [--seconds 5] [--repeat 3] [--pg-admin-url URL]
[--server-path DIR] [--compare OLD.json]`. Without `wrk` on PATH the load part is skipped
with the reason printed; without a reachable PostgreSQL, the PostgreSQL part.
"""

# ruff: noqa: E402 (the repository root goes on sys.path before the imports that need it)
from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/fhir_load.py`, the repository root must come first on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alliance.codes import HOSPITAL_MRN, RESIDENT_ID
from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.store import FhirStore
from bench.fhir_read import HOSPITAL, PASSWORD, USERNAME, free_port, make_account, populate
from bench.unaudited_floor import PATH as UNAUDITED_PATH
from fhir_mappings import build_registry
from server.migrate import upgrade

REPOSITORY = _HERE.parent
RESULTS = _HERE / "results" / "fhir_load.json"
CLIENTS = (1, 8, 32)
WORKERS = (1, 2)
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: What issue 12 asks of the audited read (items 1 and 2).
TARGET_READS = 500.0
TARGET_FLOOR_SHARE = 0.67
TARGET_SCALING = 1.6
TARGET_P99_MS = 250.0
TARGET_SEARCH_GAIN = 3.0
TARGET_CREATES_PG = 200.0


# ---- wrk ---------------------------------------------------------------------------------


def lua_list(values: list[str]) -> str:
    return "{" + ",".join(json.dumps(v) for v in values) + "}"


#: Appended to every script: the first answer that is not 2xx in each wrk thread is printed
#: (`FAILED: ...`), so a failing run says why.
CHECK_ANSWERS = """
threads = {}
failure = nil
setup = function(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end
response = function(status, headers, body)
  if (status < 200 or status >= 300) and failure == nil then failure = status .. " " .. body end
end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local seen = thread:get("failure")
    if seen then print("FAILED: " .. seen) end
  end
end
"""


def read_script(ids: list[str], path: str = "/fhir/Patient/") -> str:
    return (
        f"local ids = {lua_list(ids)}\n"
        "request = function()\n"
        f'  return wrk.format("GET", "{path}" .. ids[math.random(#ids)])\n'
        "end\n" + CHECK_ANSWERS
    )


def search_script(families: list[str]) -> str:
    """Searches by family name, percent-encoded (RFC 3986) as a client sends it."""
    encoded = [quote(f, safe="") for f in families]
    return (
        f"local names = {lua_list(encoded)}\n"
        "request = function()\n"
        '  return wrk.format("GET", "/fhir/Patient?_count=20&name=" .. '
        "names[math.random(#names)])\n"
        "end\n" + CHECK_ANSWERS
    )


def create_script(first: int) -> str:
    """Each request a new Patient with a valid identity number (GB 11643: address code, birth
    date, sequence, ISO 7064 MOD 11-2 check character), unique across the wrk threads (each
    counts in its own block of 100,000 from `first`) and across runs (each run gets its own
    `first`, 200,000 apart). The address code 654026 (昭苏县) is one the populated Patients
    never have, so none of theirs is met again."""
    return (
        f"""
local weights = {{7,9,10,5,8,4,2,1,6,3,7,9,10,5,8,4,2}}
local checks = "10X98765432"
local counter = 0
local base = {first}
-- thread_no is a global: thread:set and thread:get reach a thread's globals only.
thread_no = 0
init = function(args)
  counter = base + thread_no * 100000
end
local function identity(n)
  local seq = n % 1000
  local day = math.floor(n / 1000) % 28 + 1
  local month = math.floor(n / 28000) % 12 + 1
  local year = 1930 + math.floor(n / 336000)
  local first17 = string.format("654026%04d%02d%02d%03d", year, month, day, seq)
  local sum = 0
  for i = 1, 17 do sum = sum + tonumber(first17:sub(i, i)) * weights[i] end
  local r = sum % 11
  return first17 .. checks:sub(r + 1, r + 1), (seq % 2 == 1) and "male" or "female",
    string.format("%04d-%02d-%02d", year, month, day)
end
request = function()
  counter = counter + 1
  local number, gender, born = identity(counter)
  local body = '{{"resourceType":"Patient","active":true,"identifier":[' ..
    '{{"system":"{RESIDENT_ID}","value":"' .. number .. '"}},' ..
    '{{"system":"{HOSPITAL_MRN}/{HOSPITAL}","value":"BENCH' .. counter .. '"}}],' ..
    '"name":[{{"use":"official","text":"\u5f20\u660e","family":"\u5f20","given":["\u660e"]}}],' ..
    '"gender":"' .. gender .. '","birthDate":"' .. born .. '",' ..
    '"managingOrganization":{{"reference":"Organization/{HOSPITAL}"}}}}'
  -- Headers given to wrk.format replace wrk.headers (the token): add to those instead.
  wrk.headers["Content-Type"] = "application/fhir+json"
  return wrk.format("POST", "/fhir/Patient", nil, body)
end
"""
        + CHECK_ANSWERS
    )


@dataclass
class Figure:
    """One wrk run: requests/s and latency quantiles (ms)."""

    per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    load: float  # 1-minute load average when it ended

    def as_dict(self) -> dict[str, float]:
        return {
            "per_second": round(self.per_second, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "requests": self.requests,
            "load_average": round(self.load, 2),
        }


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> tuple[float, float, float, int, list[str]]:
    """Requests/s, p50 and p99 (ms), requests, and the problems wrk reported."""
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    problems = [
        line.strip()
        for line in output.splitlines()
        if "Non-2xx" in line or "Socket errors" in line or line.startswith("FAILED")
    ]
    return rate, p50, p99, total, problems


def wrk(
    url: str, clients: int, seconds: float, token: str, script: Path | None
) -> tuple[Figure, list[str]]:
    threads = min(clients, 2)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{clients}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "30s",
        "-H",
        f"Authorization: Bearer {token}",
        "-H",
        "Accept: application/fhir+json",
    ]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    rate, p50, p99, total, problems = parse_wrk(done.stdout)
    return Figure(rate, p50, p99, total, os.getloadavg()[0]), problems


# ---- the database and the server -----------------------------------------------------------


@contextmanager
def sqlite_database(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / 'load.db'}"


@contextmanager
def postgresql_database(admin_url: str) -> Iterator[str]:
    """A database made for this run on the server `admin_url` names, dropped afterwards."""
    name = f"alliance_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgresql_reachable(admin_url: str) -> str | None:
    """None when the server answers, else why not."""
    try:
        engine = create_engine(admin_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {admin_url} is not reachable: {str(exc).splitlines()[0]}"
    return None


@contextmanager
def serve(url: str, storage_url: str, workers: int, server_path: Path, log: Path) -> Iterator[str]:
    """`alliance serve --workers N` of the code at `server_path`, until it answers /healthz."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ,
        "PYTHONPATH": str(server_path),
        "ALLIANCE_DATABASE_URL": url,
        "ALLIANCE_STORAGE_URL": storage_url,
        "ALLIANCE_BASE_URL": base,
        "ALLIANCE_DEMO": "true",
    }
    # The shipped app plus the unaudited floor's route, served as `alliance serve` serves it
    # (bench/unaudited_floor.py; that module comes from this checkout, the app from
    # `server_path`).
    environment["PYTHONPATH"] = f"{server_path}{os.pathsep}{_HERE}"
    command = [sys.executable, "-m", "unaudited_floor", "--port", str(port)]
    with open(log, "ab") as errors:
        proc = subprocess.Popen(
            [*command, "--workers", str(workers)],
            env=environment,
            cwd=server_path,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            deadline = time.monotonic() + 240
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace").splitlines()[-20:]
                    raise SystemExit("the server did not start:\n" + "\n".join(tail))
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def token_for(base: str) -> str:
    form = {
        "grant_type": "password",
        "username": USERNAME,
        "password": PASSWORD,
        "scope": "user/Patient.cruds",
    }
    r = httpx.post(f"{base}/auth/token", data=form, timeout=60)
    if r.status_code != 200:
        raise SystemExit(f"POST /auth/token answered {r.status_code}: {r.text[:300]}")
    return str(r.json()["access_token"])


def families_with_a_full_page(base: str, token: str, prefixes: list[str]) -> list[str]:
    """Name prefixes whose search fills a page of 20 (checked once, untimed)."""
    headers = {"Authorization": f"Bearer {token}"}
    full = []
    with httpx.Client(headers=headers, timeout=60) as client:
        for prefix in prefixes:
            if len(prefix) != 1:  # the Han family names
                continue
            r = client.get(f"{base}/fhir/Patient", params={"name": prefix, "_count": "20"})
            if r.status_code == 200 and len(r.json().get("entry", [])) == 20:
                full.append(prefix)
    return full


# ---- one database ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str  # read, floor, metadata, search, create
    clients: int


def cases(wanted: set[str]) -> list[Case]:
    found = [Case(kind, n) for n in CLIENTS for kind in ("floor", "unaudited", "read")]
    found += [Case("metadata", 8), Case("metadata", 32), Case("search", 8), Case("create", 8)]
    return [c for c in found if c.name in wanted]


def measure_database(
    kind: str, url: str, tmp: Path, args: argparse.Namespace, creates: list[int]
) -> dict[str, Any]:
    """Every case on `url`, served with 1 and 2 workers; medians of the repeats."""
    upgrade(url)
    settings = Settings(database_url=url, demo=True)
    db = Database(url)
    store = FhirStore(
        build_registry(settings), base_url="http://127.0.0.1/fhir", server_url="http://127.0.0.1"
    )
    try:
        ids, prefixes = populate(db, store, args.patients, random.Random(42))
        make_account(db)
    finally:
        db.dispose()
    scripts = tmp / f"scripts-{kind}"
    scripts.mkdir()
    (scripts / "read.lua").write_text(read_script(ids), encoding="utf-8")
    unaudited = read_script(ids, UNAUDITED_PATH.removesuffix("{rid}"))
    (scripts / "unaudited.lua").write_text(unaudited, encoding="utf-8")
    results: dict[str, Any] = {}
    for workers in WORKERS:
        log = tmp / f"serve-{kind}-{workers}.log"
        storage = (tmp / "blobs").as_uri()
        with serve(url, storage, workers, args.server_path, log) as base:
            token = token_for(base)
            families = families_with_a_full_page(base, token, prefixes)
            if not families:
                raise SystemExit("no name has 20 hits: give more --patients")
            (scripts / "search.lua").write_text(search_script(families), encoding="utf-8")
            chosen = cases(set(args.cases.split(",")))
            runs: dict[Case, list[Figure]] = {c: [] for c in chosen}
            for _ in range(args.repeat):
                for case in chosen:
                    script: Path | None = None
                    path = "/healthz"
                    if case.name in ("read", "unaudited"):
                        script, path = scripts / f"{case.name}.lua", "/"
                    elif case.name == "metadata":
                        path = "/fhir/metadata"
                    elif case.name == "search":
                        script, path = scripts / "search.lua", "/"
                    elif case.name == "create":
                        creates[0] += 1
                        script, path = scripts / "create.lua", "/"
                        script.write_text(create_script(creates[0] * 200_000), encoding="utf-8")
                    target = base + path
                    wrk(target, case.clients, args.warmup, token, script)  # warm-up
                    if case.name == "create":
                        creates[0] += 1
                        script = scripts / "create.lua"
                        script.write_text(create_script(creates[0] * 200_000), encoding="utf-8")
                    figure, problems = wrk(target, case.clients, args.seconds, token, script)
                    if problems:
                        raise SystemExit(
                            f"{kind} w{workers} {case.name} x{case.clients}: {problems} "
                            f"(server log: {log})"
                        )
                    runs[case].append(figure)
            results[f"w{workers}"] = {
                f"{c.name}@{c.clients}": median_of(figures) for c, figures in runs.items()
            }
    return results


def median_of(figures: list[Figure]) -> dict[str, Any]:
    return {
        "per_second": round(statistics.median(f.per_second for f in figures), 1),
        "p50_ms": round(statistics.median(f.p50_ms for f in figures), 2),
        "p99_ms": round(statistics.median(f.p99_ms for f in figures), 2),
        "load_average": round(statistics.median(f.load for f in figures), 2),
        "runs": [f.as_dict() for f in figures],
    }


# ---- report ------------------------------------------------------------------------------


def print_table(database: str, results: dict[str, Any]) -> None:
    print(f"\n{database}: median of the repeats (requests/s, p50 ms, p99 ms, load average)")
    print(f"{'case':<14}" + "".join(f"{w:>36}" for w in results))
    keys = list(next(iter(results.values())))
    for key in keys:
        row = f"{key:<14}"
        for figures in results.values():
            f = figures[key]
            cell = (
                f"{f['per_second']:8.0f}/s {f['p50_ms']:7.1f} {f['p99_ms']:8.1f} "
                f"{f['load_average']:5.2f}"
            )
            row += f"{cell:>36}"
        print(row)


def closing_note(everything: dict[str, dict[str, Any]], before: dict[str, Any] | None) -> list[str]:
    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines: list[str] = []
    for database, results in everything.items():
        w1, w2 = results["w1"], results["w2"]
        lines.append(f"{database}:")
        for n in (8, 32):
            read = w2.get(f"read@{n}")
            if read is None:
                continue
            rate = read["per_second"]
            line = f"  read x{n} w2: {rate:.0f}/s ({mark(rate >= TARGET_READS)}: >= 500)"
            if f"unaudited@{n}" in w2:
                unaudited = w2[f"unaudited@{n}"]["per_second"]
                share = rate / unaudited
                line += (
                    f"; unaudited read {unaudited:.0f}/s, ratio {share:.2f} "
                    f"({mark(share >= TARGET_FLOOR_SHARE)}: >= {TARGET_FLOOR_SHARE})"
                )
            for floor, route in ((f"floor@{n}", "/healthz"), (f"metadata@{n}", "/fhir/metadata")):
                if floor in w2:
                    line += f"; {route} {w2[floor]['per_second']:.0f}/s"
            lines.append(line)
            scaling = rate / w1[f"read@{n}"]["per_second"]
            lines.append(
                f"  read x{n} w2/w1: {scaling:.2f} (aim >= {TARGET_SCALING} on PostgreSQL: "
                f"{mark(scaling >= TARGET_SCALING)})"
            )
        if "read@32" in w2:
            p99 = w2["read@32"]["p99_ms"]
            lines.append(f"  read x32 w2 p99: {p99:.0f} ms ({mark(p99 < TARGET_P99_MS)}: < 250)")
        if "search@8" in w2:
            lines.append(f"  search (20 hits) x8 w2: {w2['search@8']['per_second']:.0f}/s")
        if "create@8" in w2:
            creates = w2["create@8"]["per_second"]
            aim = (
                f" ({mark(creates >= TARGET_CREATES_PG)}: >= 200)"
                if database == "postgresql"
                else ""
            )
            lines.append(f"  create x8 w2: {creates:.0f}/s{aim}")
        old = (before or {}).get(database)
        if old:
            for workers in ("w1", "w2"):
                for key, figure in results[workers].items():
                    was = old.get(workers, {}).get(key)
                    if was and key.split("@")[0] in ("read", "search", "create"):
                        gain = figure["per_second"] / was["per_second"]
                        aim = ""
                        if key.startswith("search"):
                            aim = f" (aim >= {TARGET_SEARCH_GAIN}: {mark(gain >= 3)})"
                        lines.append(
                            f"  {key} {workers}: {was['per_second']:.0f}/s before, "
                            f"{figure['per_second']:.0f}/s now, x{gain:.2f}{aim}; p99 "
                            f"{was['p99_ms']:.0f} -> {figure['p99_ms']:.0f} ms"
                        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed window per case")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed warm-up per case")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="which of sqlite,postgresql"
    )
    parser.add_argument(
        "--server-path",
        type=Path,
        default=REPOSITORY,
        help="the checkout whose code `alliance serve` runs (default: this one)",
    )
    parser.add_argument(
        "--cases",
        default="floor,unaudited,read,metadata,search,create",
        help="which cases to run (the closing note needs them all)",
    )
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON: print the gains")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.server_path = args.server_path.resolve()

    if shutil.which("wrk") is None:
        print("SKIPPED: the load part needs `wrk` on PATH (Debian: apt-get install wrk)")
        return 0
    wanted = [d.strip() for d in args.databases.split(",") if d.strip()]
    print(
        f"machine: nproc={os.cpu_count()} ({platform.machine()}), Python "
        f"{platform.python_version()}, load average at start {os.getloadavg()[0]:.2f}; server "
        f"code from {args.server_path}; {args.warmup:g} s warm-up + {args.seconds:g} s per "
        f"case, {args.repeat} repeats"
    )
    started = time.perf_counter()
    everything: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    creates = [0]
    with tempfile.TemporaryDirectory(prefix="fhir-load-bench-") as folder:
        tmp = Path(folder)
        for database in wanted:
            if database == "postgresql":
                why = postgresql_reachable(args.pg_admin_url)
                if why:
                    print(f"SKIPPED PostgreSQL: {why}")
                    skipped[database] = why
                    continue
                made = postgresql_database(args.pg_admin_url)
            else:
                made = sqlite_database(tmp)
            with made as url:
                everything[database] = measure_database(database, url, tmp, args, creates)
            print_table(database, everything[database])
    before = json.loads(args.compare.read_text())["results"] if args.compare else None
    closing = closing_note(everything, before)
    print()
    print("\n".join(closing))
    total = time.perf_counter() - started
    print(f"\ntotal run time {total:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")
    report = {
        "benchmark": "fhir_load",
        "server_path": str(args.server_path),
        "parameters": {
            "patients": args.patients,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "nproc": os.cpu_count(),
        },
        "results": everything,
        "skipped": skipped,
        "closing_note": closing,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"figures written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
