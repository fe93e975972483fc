"""FHIR read and search over real HTTP, with and without the security guard, against the same
SQL issued directly: what do the web stack, and the authentication and audit on top of it, cost
per request?

Measured, for concurrency 1 and 16, each for a fixed time after a short warm-up, in one run:

- Audited HTTP: `GET /fhir/Patient/{id}` (read, FHIR R4 http.html#read) and
  `GET /fhir/Patient?name=<prefix>&_count=20` (search, FHIR R4 search.html) against the app as
  it ships, served by uvicorn (1 worker) in a separate process so the load generator does not
  share the server's GIL, as a county doctor with one bearer token: every request verifies the
  token, loads the principal, checks the scope, filters the queries by the access rules and
  appends a hash-chained AuditEvent in a write transaction of its own
  (`alliance.security.guard.Guard.run`).
- Unaudited HTTP: the same requests against a second server process running the same app with
  `UnauditedGuard`, defined in this file and patched over `server.app.Guard` in that process
  only: the foundation's unit of work from before security existed (one
  `Database.transaction`, no token check, no principal, no access filter, no audit). It
  exists only in this benchmark, as the "unaudited figure" to compare with; the app has no
  switch to turn auditing off, and must not have one.
- Baseline: the same SQL work issued through SQLAlchemy in this process, no HTTP, one unit of
  work (`Database.transaction`, the same engine set-up the app uses) per operation: for read,
  the current `ResourceRow` and its `ResourceVersion` by primary key, as `FhirStore.read` does;
  for search, `parse_search` + `page_query` joined to the current version, as
  `FhirStore.search` builds it.

Clients are threads, each with its own keep-alive `httpx.Client`. Every response must be 2xx;
any other answer aborts the run. Both servers serve the same database; for each case the
audited server, the unaudited server and the baseline are measured one after the other.

Why this baseline: the database work is the floor that no web stack can go under, and it is the
same on every machine that runs the same database; the ratio HTTP / baseline throughput is
therefore the share of the database's capacity that survives the HTTP, ASGI, routing, threadpool
and serialisation layers, and it is comparable across machines where raw requests/s are not.
The ratio audited / unaudited is what the guard (authentication, access rules, audit) leaves of
the unguarded throughput; issue 3 aims for at least two thirds on read.

Run: `.venv/bin/python bench/fhir_read.py [--patients 2000] [--seconds 5] [--database-url URL]`.
The figures go to stdout and to `bench/results/fhir_read.json`. Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy
import uvicorn
from sqlalchemy import and_, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from alliance.codes import HOSPITAL_MRN, LANGUAGE_EXTENSION, RESIDENT_ID
from alliance.config import Settings
from alliance.db import Database
from alliance.directory.identity import check_character
from alliance.fhir.models import ResourceRow, ResourceVersion
from alliance.fhir.search import page_query, parse_search
from alliance.fhir.store import FhirStore
from alliance.security.access import Principal
from alliance.security.guard import Context, Guard, Interaction, Touched
from fhir_mappings import build_registry
from server.migrate import upgrade

HOSPITAL = "xy-people"
PAGE = 20
RESULTS = Path(__file__).resolve().parent / "results" / "fhir_read.json"
CONCURRENCIES = (1, 16)
INTERACTIONS = ("read", "search")

#: An operation returns None when it succeeded, otherwise what went wrong.
Op = Callable[[], str | None]

# ---- test data -----------------------------------------------------------------------------

HAN_FAMILY = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余"
HAN_GIVEN = [
    "建国", "秀兰", "志明", "海燕", "丽华", "军", "敏", "伟", "芳", "娜", "静", "磊", "洋",
    "勇", "艳", "杰", "娟", "涛", "明", "超", "霞", "平", "刚", "桂英", "玉兰", "国平",
    "永康", "玉花", "文博", "子涵", "欣怡", "浩然", "雨轩", "梓萱", "俊杰", "思远",
]  # fmt: skip
#: Kazakh and Uyghur name parts as written in Chinese characters, with a Latin spelling.
MINORITY_PARTS = [
    ("努尔兰", "Nurlan"), ("买买提", "Memet"), ("艾力", "Eli"), ("阿依古丽", "Aygul"),
    ("叶尔兰", "Erlan"), ("帕提古丽", "Patigul"), ("古丽娜尔", "Gulnar"), ("吐尔逊", "Tursun"),
    ("热依拉", "Reyila"), ("阿不都", "Abdu"), ("艾合买提", "Ehmet"), ("别克", "Bek"),
    ("哈布都拉", "Qabdolla"), ("巴合提", "Baqyt"), ("加娜尔", "Janar"), ("托合提", "Toxti"),
    ("阿力木", "Alim"), ("迪丽娜尔", "Dilnar"), ("木拉提", "Murat"), ("库尔班", "Qurban"),
    ("玛依拉", "Mayra"), ("肉孜", "Rozi"), ("塔依尔", "Tahir"), ("阿斯哈尔", "Asqar"),
    ("叶尔江", "Erjan"), ("萨吾列", "Saule"), ("江布尔", "Jambyl"), ("古丽米拉", "Gulmira"),
]  # fmt: skip
ADDRESS_CODES = ["654025", "654021", "654028", "654002"]  # 新源县, 伊宁县, 尼勒克县, 伊宁市


def _name(text: str, lang: str, use: str = "official", **parts: Any) -> dict[str, Any]:
    name: dict[str, Any] = {
        "extension": [{"url": LANGUAGE_EXTENSION, "valueCode": lang}],
        "use": use,
        "text": text,
    }
    name.update({k: v for k, v in parts.items() if v})
    return name


def make_patients(n: int, rng: random.Random) -> tuple[list[dict[str, Any]], list[str]]:
    """`n` valid Patients of one hospital with unique identity numbers (GB 11643), and the
    name prefixes a search can use (each matches at least one of them)."""
    patients: list[dict[str, Any]] = []
    prefixes: set[str] = set()
    numbers: set[str] = set()
    for i in range(n):
        while True:
            born = date(1940, 1, 1) + timedelta(days=rng.randrange(65 * 365))
            seq = rng.randrange(1000)
            first17 = f"{rng.choice(ADDRESS_CODES)}{born:%Y%m%d}{seq:03d}"
            number = first17 + check_character(first17)
            if number not in numbers:
                numbers.add(number)
                break
        if rng.random() < 0.6:
            family, given = rng.choice(HAN_FAMILY), rng.choice(HAN_GIVEN)
            names = [_name(family + given, "zh-Hans", family=family, given=[given])]
            prefixes.update((family, family + given[0]))
        else:
            (zh1, lat1), (zh2, lat2) = rng.sample(MINORITY_PARTS, 2)
            lang = rng.choice(["kk-Latn", "ug-Latn"])
            names = [
                _name(f"{zh1}·{zh2}", "zh-Hans"),
                _name(f"{lat1} {lat2}", lang, use="usual"),
            ]
            # A part after the "·" is indexed on its own, so it is a prefix too.
            prefixes.update((zh1[:2], zh2[:2], lat1[:3].lower()))
        patients.append(
            {
                "resourceType": "Patient",
                "active": True,
                "identifier": [
                    {"system": RESIDENT_ID, "value": number},
                    {"system": f"{HOSPITAL_MRN}/{HOSPITAL}", "value": f"MRN{3000000 + i}"},
                ],
                "name": names,
                # GB 11643: an odd sequence number is a man's.
                "gender": "male" if seq % 2 else "female",
                "birthDate": born.isoformat(),
                "address": [{"city": "新源县", "state": "新疆维吾尔自治区"}],
                "managingOrganization": {"reference": f"Organization/{HOSPITAL}"},
            }
        )
    return patients, sorted(prefixes)


def populate(
    db: Database, store: FhirStore, n: int, rng: random.Random
) -> tuple[list[str], list[str]]:
    """The hospital and `n` Patients, in a few transactions; returns their ids and prefixes."""
    with db.transaction(write=True) as s:
        existing = s.scalar(select(func.count()).where(ResourceRow.resource_type == "Patient"))
        if existing:
            raise SystemExit(f"the database already holds {existing} Patients; give an empty one")
        if s.get(ResourceRow, ("Organization", HOSPITAL)) is None:
            hospital = {"resourceType": "Organization", "active": True, "name": "新源县人民医院"}
            store.create("Organization", hospital, session=s, resource_id=HOSPITAL)
    patients, prefixes = make_patients(n, rng)
    ids: list[str] = []
    batch = 500
    for start in range(0, n, batch):
        with db.transaction(write=True) as s:
            for body in patients[start : start + batch]:
                ids.append(store.create("Patient", body, session=s).version.id)
    if db.engine.dialect.name == "postgresql":
        # The planner's statistics as autovacuum would leave them a minute later: without them
        # a search right after a bulk load is planned as if every table had one row.
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return ids, prefixes


USERNAME = "bench.reader"
PASSWORD = "bench-reader-password"


def make_account(db: Database) -> bool:
    """A county doctor of the hospital to read as, when the app has accounts (security); False
    when it has none (then requests go without a token)."""
    try:
        from alliance.security.service import OPERATOR, create_user, ensure_roles
    except ImportError:
        return False
    with db.transaction(write=True) as s:
        ensure_roles(s)
        create_user(
            session=s,
            by=OPERATOR,
            username=USERNAME,
            hospital_id=HOSPITAL,
            role="county-doctor",
            password=PASSWORD,
        )
    return True


def access_token(base_url: str) -> str:
    """A bearer token from the OAuth2 token endpoint (password grant), fetched once, untimed."""
    form = {
        "grant_type": "password",
        "username": USERNAME,
        "password": PASSWORD,
        "scope": "user/Patient.rs",
    }
    r = httpx.post(f"{base_url}/auth/token", data=form, timeout=30)
    if r.status_code != 200:
        raise SystemExit(f"POST /auth/token answered {r.status_code}: {r.text[:300]}")
    token: str = r.json()["access_token"]
    return token


# ---- the server, in its own process ------------------------------------------------------

#: Who the unaudited server says is asking; nothing reads it on the Patient read and search path.
NOBODY = Principal(
    subject="bench",
    username="bench",
    kind="user",
    hospital_id=HOSPITAL,
    role="none",
    capabilities=frozenset(),
    scopes=(),
)


class UnauditedGuard(Guard):
    """The foundation's unit of work, before security existed: no token check, no principal,
    no scope check, no access filter, no audit. It exists only here, to measure what the
    guard costs; the app itself has no way to switch auditing off."""

    async def run(
        self,
        request: HTTPConnection,
        interaction: Interaction,
        work: Callable[[Session, Context], Any],
        touched: Callable[[Any], list[Touched]],
        *,
        check: Callable[[Principal], None] | None = None,
        claims: Any = None,
    ) -> Any:
        ctx = Context(NOBODY, lambda _t: sqlalchemy.true(), lambda *_: None)
        # The foundation read in a plain transaction and wrote in a write one.
        write = interaction.subtype in ("create", "update", "delete")

        def unit() -> Any:
            with self.db.transaction(write=write) as session:
                return work(session, ctx)

        return await run_in_threadpool(unit)


def _serve(database_url: str, storage_url: str, port: int, audited: bool) -> None:
    """Child process: the app as `alliance serve` runs it, one uvicorn worker; with the
    `UnauditedGuard` in place of the real one when `audited` is false (this process only)."""
    import server.app
    from server.app import create_app

    if not audited:
        server.app.Guard = UnauditedGuard  # type: ignore[attr-defined]

    settings = Settings(
        database_url=database_url,
        storage_url=storage_url,
        base_url=f"http://127.0.0.1:{port}",
        demo=True,
    )
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        workers=1,
        log_level="warning",
        access_log=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def served(database_url: str, storage_url: str, *, audited: bool) -> Iterator[tuple[str, int]]:
    """The app on a free 127.0.0.1 port in a spawned process; yields (base URL, pid)."""
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, storage_url, port, audited), daemon=True
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if not proc.is_alive():
                which = "audited" if audited else "unaudited"
                raise SystemExit(f"the {which} server process exited with code {proc.exitcode}")
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
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where that is unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- load --------------------------------------------------------------------------------


@dataclass
class Measurement:
    ops: int
    seconds: float
    latencies: list[float]
    errors: list[str] = field(default_factory=list)
    #: CPU used during the timed window, in % of one core: this process, the server process.
    own_cpu: float | None = None
    server_cpu: float | None = None

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds

    def quantile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 1),
            "mean_ms": round(1000 * statistics.fmean(self.latencies), 3),
            "median_ms": round(1000 * statistics.median(self.latencies), 3),
            "p95_ms": round(self.quantile_ms(0.95), 3),
            "p99_ms": round(self.quantile_ms(0.99), 3),
            "errors": len(self.errors),
            "own_cpu_percent": None if self.own_cpu is None else round(self.own_cpu, 1),
            "server_cpu_percent": None if self.server_cpu is None else round(self.server_cpu, 1),
        }


def run_load(
    make_op: Callable[[int], tuple[Op, Callable[[], None]]],
    concurrency: int,
    *,
    warmup: float,
    seconds: float,
    server_pid: int | None = None,
) -> Measurement:
    """`concurrency` threads, each calling its own op in a closed loop; latencies of the ops
    started within the timed window (after `warmup`) are kept, errors of every op."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[list[str]] = [[] for _ in range(concurrency)]
    ready = threading.Barrier(concurrency + 1)
    window: list[float] = []

    def worker(i: int) -> None:
        try:
            op, close = make_op(i)
        except BaseException:
            ready.abort()  # the main thread's wait fails instead of hanging
            raise
        mine, failed = latencies[i], errors[i]
        try:
            ready.wait()
            begin, end = window
            while True:
                start = time.perf_counter()
                if start >= end:
                    break
                error = op()
                took = time.perf_counter() - start
                if error is not None:
                    failed.append(error)
                if start >= begin:
                    mine.append(took)
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window.extend((now + warmup, now + warmup + seconds))
    ready.wait()
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    own0, srv0 = time.process_time(), cpu_seconds(server_pid) if server_pid else None
    time.sleep(max(0.0, window[1] - time.perf_counter()))
    own1, srv1 = time.process_time(), cpu_seconds(server_pid) if server_pid else None
    for t in threads:
        t.join()
    kept = [x for lat in latencies for x in lat]
    result = Measurement(len(kept), seconds, kept, [e for errs in errors for e in errs])
    result.own_cpu = 100 * (own1 - own0) / seconds
    if srv0 is not None and srv1 is not None:
        result.server_cpu = 100 * (srv1 - srv0) / seconds
    return result


def http_op(
    base_url: str, headers: dict[str, str], interaction: str, ids: list[str], prefixes: list[str]
) -> Callable[[int], tuple[Op, Callable[[], None]]]:
    def make(i: int) -> tuple[Op, Callable[[], None]]:
        rng = random.Random(1000 + i)
        client = httpx.Client(base_url=f"{base_url}/fhir", headers=headers, timeout=30)

        def check(response: httpx.Response) -> str | None:
            if response.is_success:
                return None
            return (
                f"{response.request.method} {response.url} -> {response.status_code}: "
                + (response.text[:300])
            )

        def read() -> str | None:
            try:
                return check(client.get(f"/Patient/{rng.choice(ids)}"))
            except httpx.HTTPError as exc:
                return f"read: {exc!r}"

        def search() -> str | None:
            params = {"name": rng.choice(prefixes), "_count": str(PAGE)}
            try:
                return check(client.get("/Patient", params=params))
            except httpx.HTTPError as exc:
                return f"search: {exc!r}"

        return (read if interaction == "read" else search), client.close

    return make


def sql_op(
    db: Database, store: FhirStore, interaction: str, ids: list[str], prefixes: list[str]
) -> Callable[[int], tuple[Op, Callable[[], None]]]:
    definition = store.registry.get("Patient")

    def make(i: int) -> tuple[Op, Callable[[], None]]:
        rng = random.Random(2000 + i)

        def read() -> str | None:
            rid = rng.choice(ids)
            with db.transaction() as s:
                row = s.scalars(
                    select(ResourceRow).where(
                        ResourceRow.resource_type == "Patient", ResourceRow.id == rid
                    )
                ).one()
                version = s.get(ResourceVersion, ("Patient", rid, row.version))
                content = version.content if version else None
            return None if content else f"Patient/{rid}: no content"

        def search() -> str | None:
            prefix = rng.choice(prefixes)
            spec = parse_search(
                definition,
                store.registry,
                [("name", prefix), ("_count", str(PAGE))],
                base_url=store.base_url,
                default_count=PAGE,
                max_count=200,
            )
            query = (
                page_query(spec, definition, None)
                .limit(spec.count + 1)
                .join(
                    ResourceVersion,
                    and_(
                        ResourceVersion.resource_type == ResourceRow.resource_type,
                        ResourceVersion.id == ResourceRow.id,
                        ResourceVersion.version == ResourceRow.version,
                    ),
                )
                .add_columns(ResourceVersion)
            )
            with db.transaction() as s:
                found = s.execute(query).all()
            return None if found else f"name={prefix}: nothing found"

        return (read if interaction == "read" else search), lambda: None

    return make


def preflight(base_url: str, headers: dict[str, str], ids: list[str], prefixes: list[str]) -> None:
    """One read and one search answered with the right content, before any timing."""
    with httpx.Client(base_url=f"{base_url}/fhir", headers=headers) as client:
        r = client.get(f"/Patient/{ids[0]}")
        if r.status_code != 200 or r.json().get("id") != ids[0]:
            raise SystemExit(f"read Patient/{ids[0]} answered {r.status_code}: {r.text[:300]}")
        r = client.get("/Patient", params={"name": prefixes[0], "_count": str(PAGE)})
        if r.status_code != 200 or not r.json().get("entry"):
            raise SystemExit(f"search name={prefixes[0]} answered {r.status_code}: {r.text[:300]}")


# ---- report ------------------------------------------------------------------------------


def machine_facts(db: Database) -> dict[str, Any]:
    with db.engine.connect() as conn:
        version = conn.dialect.server_version_info
    backend = db.engine.dialect.name
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "database": f"{backend} {'.'.join(map(str, version or ()))}",
        "sqlalchemy": sqlalchemy.__version__,
        "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__,
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
    }


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pair(a: float | None, b: float | None) -> str:
    return f"{_cpu(a)}/{_cpu(b)}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'interaction':<11} {'conc':>4} {'aud req/s':>9} {'aud p50':>7} {'aud p95':>7} "
        f"{'unaud req/s':>11} {'unaud p50':>9} {'base ops/s':>10} {'aud/unaud':>9} "
        f"{'aud/base':>8} {'unaud/base':>10} {'srv CPU%':>8} {'load CPU%':>9}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        a, u, b, r = row["audited"], row["unaudited"], row["baseline"], row["ratios"]
        print(
            f"{row['interaction']:<11} {row['concurrency']:>4} {a['per_second']:>9.0f} "
            f"{a['median_ms']:>7.2f} {a['p95_ms']:>7.2f} {u['per_second']:>11.0f} "
            f"{u['median_ms']:>9.2f} {b['per_second']:>10.0f} {r['audited/unaudited']:>9.3f} "
            f"{r['audited/baseline']:>8.3f} {r['unaudited/baseline']:>10.3f} "
            f"{_pair(a['server_cpu_percent'], u['server_cpu_percent']):>8} "
            f"{_pair(a['own_cpu_percent'], u['own_cpu_percent']):>9}"
        )
    print(
        "aud = HTTP to the app as it ships (token, principal, access filter, AuditEvent per\n"
        "request); unaud = HTTP to the same app with the benchmark's UnauditedGuard (the\n"
        "foundation's bare unit of work); base = the same SQL through SQLAlchemy in-process.\n"
        "Latencies in ms. srv CPU% / load CPU%: CPU of the server process / of this load-\n"
        "generating process during the HTTP window, audited/unaudited, in % of one core."
    )


def closing_note(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 3's figure: audited vs unaudited read throughput, measured in this run."""
    lines = []
    for row in rows:
        if row["interaction"] != "read":
            continue
        a, u = row["audited"]["per_second"], row["unaudited"]["per_second"]
        ratio = row["ratios"]["audited/unaudited"]
        verdict = "met" if ratio >= 2 / 3 else "NOT met"
        lines.append(
            f"read x{row['concurrency']}: audited {a:.0f} req/s, unaudited {u:.0f} req/s, "
            f"ratio {ratio:.3f}\n  (security and audit cost {100 * (1 - ratio):.0f}% of the "
            f"throughput; aim: less than a third, {verdict})"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=2000, help="Patients to create")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed window per case")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed warm-up per case")
    parser.add_argument(
        "--database-url",
        help="an empty database to use (migrated and filled here); default: a fresh SQLite file",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.patients < 1:
        parser.error("--patients must be at least 1")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fhir-read-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        storage_url = (Path(tmp) / "blobs").as_uri()
        upgrade(url)
        db = Database(url)
        store = FhirStore(
            build_registry(Settings(database_url=url, demo=True)),
            base_url="http://127.0.0.1/fhir",
            server_url="http://127.0.0.1",
        )
        try:
            facts = machine_facts(db)
            print(
                f"machine: nproc={facts['nproc']} ({facts['machine']}), Python {facts['python']}, "
                f"database {facts['database']} ({make_url(url).get_backend_name()}), "
                f"SQLAlchemy {facts['sqlalchemy']}, uvicorn {facts['uvicorn']} "
                f"(uvloop {'yes' if facts['uvloop'] else 'no'}, "
                f"httptools {'yes' if facts['httptools'] else 'no'}), httpx {facts['httpx']}"
            )
            t0 = time.perf_counter()
            ids, prefixes = populate(db, store, args.patients, random.Random(42))
            authenticated = make_account(db)
            setup = time.perf_counter() - t0
            who = f"as {USERNAME} (bearer token)" if authenticated else "without a token"
            print(
                f"data: {len(ids)} Patients ({len(prefixes)} name prefixes) "
                f"created in {setup:.1f} s; {args.warmup:g} s warm-up + {args.seconds:g} s per "
                f"case; HTTP {who}"
            )
            rows: list[dict[str, Any]] = []
            with ExitStack() as servers:
                # Both servers stay up; the idle one costs nothing. For every case the audited
                # server, the unaudited one and the baseline are measured one after the other.
                audited_url, audited_pid = servers.enter_context(
                    served(url, storage_url, audited=True)
                )
                unaudited_url, unaudited_pid = servers.enter_context(
                    served(url, storage_url, audited=False)
                )
                headers = {"Accept": "application/fhir+json"}
                if authenticated:
                    headers["Authorization"] = f"Bearer {access_token(audited_url)}"
                # The same request bytes to both; the unaudited server ignores the token.
                preflight(audited_url, headers, ids, prefixes)
                preflight(unaudited_url, headers, ids, prefixes)
                for interaction in INTERACTIONS:
                    for conc in CONCURRENCIES:
                        measured: dict[str, Measurement] = {}
                        for name, base_url, pid in (
                            ("audited", audited_url, audited_pid),
                            ("unaudited", unaudited_url, unaudited_pid),
                        ):
                            http = run_load(
                                http_op(base_url, headers, interaction, ids, prefixes),
                                conc,
                                warmup=args.warmup,
                                seconds=args.seconds,
                                server_pid=pid,
                            )
                            if http.errors:
                                sample = "\n  ".join(http.errors[:5])
                                print(
                                    f"FAILED: {len(http.errors)} non-2xx or failed requests in "
                                    f"{interaction} x{conc} ({name} server), e.g.:\n  {sample}",
                                    file=sys.stderr,
                                )
                                return 1
                            measured[name] = http
                        base = run_load(
                            sql_op(db, store, interaction, ids, prefixes),
                            conc,
                            warmup=args.warmup,
                            seconds=args.seconds,
                        )
                        if base.errors:
                            print(f"FAILED baseline: {base.errors[:5]}", file=sys.stderr)
                            return 1
                        aud, unaud = measured["audited"], measured["unaudited"]
                        rows.append(
                            {
                                "interaction": interaction,
                                "concurrency": conc,
                                "audited": aud.summary(),
                                "unaudited": unaud.summary(),
                                "baseline": base.summary(),
                                "ratios": {
                                    "audited/unaudited": round(
                                        aud.per_second / unaud.per_second, 4
                                    ),
                                    "audited/baseline": round(aud.per_second / base.per_second, 4),
                                    "unaudited/baseline": round(
                                        unaud.per_second / base.per_second, 4
                                    ),
                                },
                            }
                        )
        finally:
            db.dispose()

    print()
    print_table(rows)
    closing = closing_note(rows)
    print()
    print("\n".join(closing))
    total = time.perf_counter() - started
    print(f"\ntotal run time {total:.0f} s")
    report = {
        "benchmark": "fhir_read",
        "measured": (
            "HTTP GET /fhir/Patient/{id} and /fhir/Patient?name=<prefix>&_count=20 against "
            "uvicorn (1 worker, separate process) serving the app as it ships (audited: token, "
            "principal, access filter, AuditEvents) and the same app with the benchmark-only "
            "UnauditedGuard (unaudited: the foundation's bare unit of work), vs the same SQL "
            "through SQLAlchemy in-process (baseline)"
        ),
        "machine": facts,
        "parameters": {
            "patients": args.patients,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "page": PAGE,
            "database": "given URL" if args.database_url else "fresh SQLite file",
            "authenticated": authenticated,
            "setup_seconds": round(setup, 2),
            "total_seconds": round(total, 1),
        },
        "results": rows,
        "closing_note": closing,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"figures written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
