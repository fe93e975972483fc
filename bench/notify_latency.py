"""Notifications (issue 14): latency from an event's commit to its delivery at a hospital
system's rest-hook (p50, p99) at a steady 50 events/s, and the delivery worker's throughput
draining a backlog, each beside a baseline measured in the same run.

Set-up: a fresh SQLite database in a temporary folder (or the empty database `--database-url`
names), migrated and seeded with the demo alliance; a partner system of 苏北人民医院 (subei,
client_credentials) subscribes (topic `all`, id-only payload, through the FHIR store with the
Subscription rules); its endpoint is a real HTTP server (http.server, threads) in this process
that notes when each notification arrives.

- Latency: a producer thread commits one event every 20 ms (50/s) for `--seconds`: a unit of
  work that records a `message-posted` event for subei in the outbox
  (alliance.notify.outbox.record), as a domain write does, without the domain write's own cost
  (the FHIR write is measured by fhir_load.py). The delivery worker runs as `alliance serve`
  runs it (one thread, its default poll interval of 200 ms). Latency = arrival at the receiver
  minus the moment the producer's commit returned, per event (matched by the event's focus).
  Baseline: a POST of a one-event notification Bundle straight to the receiver with httpx
  (what the network and receiver cost on their own).
- Throughput: `--backlog` events are committed with the worker stopped (a receiver back from
  downtime); then the worker is started and timed until the receiver has them all, with the
  default `max_count` (20 events per notification) and with 1 (one POST per event). Baseline:
  as many one-event POSTs straight to the receiver, one after another.

Run: `.venv/bin/python bench/notify_latency.py [--seconds 20] [--backlog 2000]`; figures go to
stdout and `bench/results/notify_latency.json`. Nothing here asserts on speed.
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
import statistics
import tempfile
import threading
import time
import uuid
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from alliance.config import Settings
from alliance.fhir.registry import OperationContext
from alliance.notify.outbox import Recipient, record
from alliance.notify.subscriptions import MAX_COUNT
from alliance.security.access import check_write, visibility
from alliance.security.models import Client
from alliance.security.service import principal_for, register_client, token_claims
from server.app import build_services
from server.demo import seed_demo
from server.migrate import upgrade
from server.notify import build_worker

RESULTS = _HERE / "results" / "notify_latency.json"
SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


class Receiver:
    """The hospital system: notes the arrival time of each event's focus id."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.posts = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.perf_counter()
                with owner.lock:
                    owner.posts += 1
                    for p in body["entry"][0]["resource"]["parameter"]:
                        if p["name"] == "notification-event":
                            focus = next(x for x in p["part"] if x["name"] == "focus")
                            ref = focus["valueReference"]["reference"]
                            owner.arrived.setdefault(ref.split("/")[1], now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, ids: list[str]) -> int:
        with self.lock:
            return sum(1 for i in ids if i in self.arrived)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def subscribe(services: Any, endpoint: str, max_count: int | None) -> str:
    with services.db.transaction(write=True) as session:
        client = session.get(Client, "subei-his")
        assert client is not None
        who = principal_for(session, token_claims(client, ""))
        acting = OperationContext(
            session,
            services.fhir,
            who,
            visibility(who, services.fhir.registry.get),
            partial(check_write, who),
        )
        channel: dict[str, Any] = {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [{"url": f"{SD}/backport-payload-content", "valueCode": "id-only"}]
            },
        }
        if max_count is not None:
            channel["extension"] = [{"url": MAX_COUNT, "valueUnsignedInt": max_count}]
        made = acting.create(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "bench",
                "criteria": "https://fhir.yzxy-alliance.cn/SubscriptionTopic/all",
                "channel": channel,
            }
        )
        return made.id


def commit_event(services: Any) -> tuple[str, float]:
    focus = str(uuid.uuid4())
    with services.db.transaction(write=True) as session:
        record(
            session,
            "message-posted",
            focus=("Communication", focus),
            recipients=[Recipient("subei")],
            patient_id="demo-aygul",
        )
    return focus, time.perf_counter()


def wait_for(receiver: Receiver, ids: list[str], limit: float = 600) -> None:
    deadline = time.perf_counter() + limit
    while receiver.count(ids) < len(ids):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {receiver.count(ids)} of {len(ids)} delivered")
        time.sleep(0.01)


def direct_posts(endpoint: str, n: int) -> list[float]:
    """Baseline: one-event notifications POSTed straight to the receiver, one at a time."""
    times = []
    with httpx.Client() as http:
        for _ in range(n):
            body = {
                "resourceType": "Bundle",
                "type": "history",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "Parameters",
                            "parameter": [
                                {
                                    "name": "notification-event",
                                    "part": [
                                        {"name": "event-number", "valueString": "1"},
                                        {
                                            "name": "focus",
                                            "valueReference": {
                                                "reference": f"Communication/{uuid.uuid4()}"
                                            },
                                        },
                                    ],
                                }
                            ],
                        }
                    }
                ],
            }
            started = time.perf_counter()
            http.post(
                endpoint,
                content=json.dumps(body),
                headers={"Content-Type": "application/fhir+json"},
            )
            times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--database-url", default=None, help="an EMPTY database to use")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        settings = Settings(
            database_url=url,
            storage_url=Path(tmp, "blobs").as_uri(),
            base_url="http://127.0.0.1:8000",
            demo=True,
            notify_worker=False,
        )
        upgrade(url)
        seed_demo(settings)
        services = build_services(settings)
        with services.db.transaction(write=True) as session:
            register_client(session=session, client_id="subei-his", name="HIS", hospital_id="subei")
        receiver = Receiver()

        # ---- latency at a steady rate -------------------------------------------------
        sub = subscribe(services, receiver.url, None)
        worker = build_worker(settings, services.db, services.fhir)
        worker.start()
        committed: dict[str, float] = {}
        period = 1 / args.rate
        t0 = time.perf_counter()
        n = int(args.seconds * args.rate)
        for i in range(n):
            target = t0 + i * period
            pause = target - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            focus, at = commit_event(services)
            committed[focus] = at
        achieved = n / (time.perf_counter() - t0)
        wait_for(receiver, list(committed))
        worker.stop()
        latencies = [receiver.arrived[f] - at for f, at in committed.items()]
        base = direct_posts(receiver.url, 300)
        figures["latency"] = {
            "events": n,
            "target_rate": args.rate,
            "achieved_rate": round(achieved, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1),
            "baseline_direct_post_p50_ms": round(statistics.median(base) * 1000, 2),
            "baseline_direct_post_p99_ms": round(percentile(base, 0.99) * 1000, 2),
        }
        figures["latency"]["p50_ratio_to_baseline"] = round(
            figures["latency"]["p50_ms"] / figures["latency"]["baseline_direct_post_p50_ms"], 1
        )
        print(
            f"latency at {achieved:.1f} events/s ({n} events): "
            f"p50 {figures['latency']['p50_ms']} ms, p99 {figures['latency']['p99_ms']} ms "
            f"(baseline direct POST p50 {figures['latency']['baseline_direct_post_p50_ms']} ms, "
            f"p99 {figures['latency']['baseline_direct_post_p99_ms']} ms)"
        )
        _turn_off(services, sub)

        # ---- throughput draining a backlog ---------------------------------------------
        figures["throughput"] = {}
        for label, max_count in (("max_count_20", None), ("max_count_1", 1)):
            sub = subscribe(services, receiver.url, max_count)
            worker = build_worker(settings, services.db, services.fhir)
            worker.run_once()  # the handshake
            backlog = [commit_event(services)[0] for _ in range(args.backlog)]
            started = time.perf_counter()
            worker.start()
            wait_for(receiver, backlog)
            spent = time.perf_counter() - started
            worker.stop()
            _turn_off(services, sub)
            figures["throughput"][label] = {
                "events": args.backlog,
                "seconds": round(spent, 2),
                "events_per_s": round(args.backlog / spent, 1),
            }
            print(f"throughput ({label}): {args.backlog / spent:.0f} events/s")
        direct = direct_posts(receiver.url, min(args.backlog, 1000))
        per_s = len(direct) / sum(direct)
        figures["throughput"]["baseline_direct_posts_per_s"] = round(per_s, 1)
        for label in ("max_count_20", "max_count_1"):
            t = figures["throughput"][label]
            t["ratio_to_baseline"] = round(t["events_per_s"] / per_s, 2)
        print(f"baseline: {per_s:.0f} one-event POSTs/s straight to the receiver")
        services.db.dispose()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


def _turn_off(services: Any, sub_id: str) -> None:
    """Stop a subscription between phases (as a subscriber would: status off)."""
    from alliance.notify.models import Subscription

    with services.db.transaction(write=True) as session:
        row = session.get(Subscription, sub_id)
        assert row is not None
        row.status = "off"


if __name__ == "__main__":
    raise SystemExit(main())
