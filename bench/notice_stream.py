"""Live notices (issue 14.4): latency from an event's commit to its arrival in the portal's
Server-Sent Events stream (`/notices/stream`), with one open stream and with `--streams` open
streams of people of the same hospital, beside a baseline measured in the same run: an HTTP
round trip to the same server (`GET /healthz`).

Set-up: a fresh SQLite database in a temporary folder (or the empty database `--database-url`
names), migrated and seeded with the demo alliance; the app served by uvicorn in a thread of
this process (as the browser tests serve it; the delivery worker off, it plays no part here).
Each stream is a keep-alive httpx client signed in to the portal as `sp.subei`, reading the
stream in a thread and noting when each event arrives. A producer commits one event every
1/`--rate` s for `--seconds`: a unit of work that records a `message-posted` event for 苏北人民医院
in the outbox (alliance.notify.outbox.record), as a domain write does, without the domain
write's own cost. Latency = arrival minus the moment the producer's commit returned, per event
and stream. Each stream's look for news is what a browser's costs: the shared newest-number
poll (`ALLIANCE_NOTICE_POLL_SECONDS`, 0.5 s), then an unaudited probe and an audited read.

Run: `.venv/bin/python bench/notice_stream.py [--seconds 10] [--rate 5] [--streams 20]`;
figures go to stdout and `bench/results/notice_stream.json`. Nothing here asserts on speed.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse
import json
import platform
import re
import socket
import statistics
import tempfile
import threading
import time
import uuid

import httpx
import uvicorn

from alliance.config import Settings
from alliance.notify.outbox import Recipient, record
from server.app import Services, create_app
from server.demo import seed_demo
from server.migrate import upgrade


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def signed_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert csrf is not None
    form = {"username": "sp.subei", "password": "alliance-demo", "csrf": csrf.group(1)}
    assert client.post("/login", data=form).status_code == 303
    return client


def reader(
    client: httpx.Client, after: int, arrivals: dict[int, float], ready: threading.Event
) -> None:
    """Read one stream until it is closed, noting each event's arrival."""
    try:
        with client.stream("GET", "/notices/stream", params={"after": str(after)}) as r:
            ready.set()
            for line in r.iter_lines():
                if line.startswith("id: "):
                    arrivals[int(line[4:])] = time.monotonic()
    except httpx.HTTPError:
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    url: str, services: Services, streams: int, seconds: float, rate: float
) -> dict[str, float]:
    with services.db.transaction() as session:
        from alliance.notify.outbox import last_event_number

        start = last_event_number(session)
    clients = [signed_in(url) for _ in range(streams)]
    arrivals: list[dict[int, float]] = [{} for _ in clients]
    threads = []
    for client, seen in zip(clients, arrivals, strict=True):
        ready = threading.Event()
        t = threading.Thread(target=reader, args=(client, start, seen, ready), daemon=True)
        t.start()
        ready.wait(10)
        threads.append(t)
    time.sleep(1)  # every stream past its first look
    committed: dict[int, float] = {}
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        tick = time.monotonic()
        with services.db.transaction(write=True) as session:
            event = record(
                session,
                "message-posted",
                focus=("Communication", str(uuid.uuid4())),
                recipients=[Recipient("subei")],
            )
            assert event is not None
            number = event.id
        committed[number] = time.monotonic()
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - tick)))
    time.sleep(3)
    latencies = [seen[n] - at for seen in arrivals for n, at in committed.items() if n in seen]
    missing = sum(1 for seen in arrivals for n in committed if n not in seen)
    for client in clients:
        client.close()
    return {
        "streams": streams,
        "events": len(committed),
        "deliveries": len(latencies),
        "missing": missing,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def healthz(url: str, n: int = 200) -> float:
    with httpx.Client(base_url=url) as client:
        times = []
        for _ in range(n):
            t = time.monotonic()
            client.get("/healthz")
            times.append(time.monotonic() - t)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=5)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--database-url")
    parser.add_argument("--output", default=str(_HERE / "results" / "notice_stream.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url_db = args.database_url or f"sqlite:///{tmp}/bench.db"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = Settings(
            database_url=url_db,
            storage_url=Path(tmp, "blobs").as_uri(),
            base_url=url,
            demo=True,
            notify_worker=False,
            sweep_on_start=False,
        )
        upgrade(url_db)
        seed_demo(settings)
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        services: Services = app.state.services
        baseline = healthz(url)
        results = [
            measure(url, services, n, args.seconds, args.rate) for n in sorted({1, args.streams})
        ]
        server.should_exit = True
        thread.join(10)
    print(f"baseline GET /healthz p50: {baseline:.1f} ms")
    for r in results:
        print(
            f"{r['streams']:>3} streams, {r['events']} events at {args.rate}/s: "
            f"commit -> stream p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
            f"({r['p50_ms'] / baseline:.0f}x the baseline); missing {r['missing']}"
        )
    out = Path(args.output)
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "baseline_healthz_p50_ms": baseline,
                "poll_seconds": settings.notice_poll_seconds,
                "results": results,
                "machine": platform.platform(),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
