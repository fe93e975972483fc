"""Teleconsult `$find` (IHE ITI-115) over 30 specialists and 4 weeks of calendars: median and
p95 latency over real HTTP, the same search in-process without HTTP, and a baseline measured in
the same run.

Set-up: a fresh SQLite database in a temporary folder (or the empty database `--database-url`
names), migrated and seeded with the demo alliance (six hospitals with their working calendars:
Yangzhou Asia/Shanghai 08:00-12:00 and 14:00-17:30, 新源县人民医院 Asia/Urumqi 08:00-17:00),
plus 29 cardiologists (PractitionerRole, specialty 03.04) spread over the three city hospitals,
so that with 陈志明 30 specialists match; each has a consult Schedule of weekday templates
(08:00-12:00 and 14:00-17:30, 30-minute slots), written through the FHIR store with its rules.
About a fifth of their slots over the 4 weeks are already taken: Booking rows inserted
straight into the table (status booked), which is all `$find` reads of a booking.

Measured, one request at a time after a warm-up:

- HTTP: `POST /fhir/Appointment/$find` with specialty 03.04, start today, end 28 days on,
  `_count=200`, as 新源县人民医院's county doctor with a bearer token, against the app served
  by uvicorn in a thread of this process: token check, scope, the audit event, the calendar
  arithmetic for both sites, the proposed Appointments as a Bundle.
- In-process: `teleconsult.slots.find_times` on the same schedules and window, in one read
  transaction (no HTTP, no guard, no audit, no Bundle). It merges the specialists' times
  lazily and stops at the page (200); `in_process_all` works out every free time of the 4
  weeks (no limit), which is what a page at the far end of the window costs.
- Baseline: the reads `$find` makes, nothing else: the 30 schedules with their templates
  (`load_schedules`), both hospitals' hours and closures (`load_calendars`) and the bookings
  in the window (`busy_times`), in one read transaction.

Ratios: HTTP / baseline and in-process / baseline medians (how much the calendar arithmetic and
the HTTP and guard layers add over the floor of the database reads).

Run: `.venv/bin/python bench/teleconsult_find.py [--requests 60] [--database-url URL]`; figures
go to stdout and `bench/results/teleconsult_find.json`. Nothing here asserts on speed.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/teleconsult_find.py`, the repository root must come first on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse
import json
import platform
import random
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn

from alliance.codes import DEPARTMENT, PRACTITIONER_HOSPITAL, PROFESSIONAL_TITLE
from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.store import FhirStore
from alliance.security.service import get_user, token_claims
from alliance.security.tokens import issue_token
from fhir_mappings import build_registry
from server.app import create_app
from server.demo import seed_demo
from server.migrate import upgrade
from teleconsult.calendars import TEMPLATE_EXTENSION
from teleconsult.models import Booking
from teleconsult.slots import (
    ScheduleFilter,
    busy_times,
    find_times,
    load_calendars,
    load_schedules,
    schedule_slots,
)

RESULTS = _HERE / "results" / "teleconsult_find.json"
SPECIALISTS = 30
DAYS = 28
CITY = ("subei", "yz-tcm", "yz-mch")
TITLES = ("chief-physician", "associate-chief-physician", "attending-physician")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def populate(settings: Settings, rng: random.Random) -> int:
    """29 more cardiologists with consult schedules, and a fifth of the slots booked."""
    db = Database(settings.database_url)
    store = FhirStore(
        build_registry(settings), base_url=settings.fhir_base, server_url=settings.base_url
    )
    sessions = [
        ("mon tue wed thu fri", "08:00:00", "12:00:00"),
        ("mon tue wed thu fri", "14:00:00", "17:30:00"),
    ]
    with db.transaction(write=True) as s:
        for n in range(SPECIALISTS - 1):
            hospital = CITY[n % len(CITY)]
            pid = f"bench-cardio-{n:02d}"
            store.create(
                "Practitioner",
                {
                    "resourceType": "Practitioner",
                    "extension": [
                        {
                            "url": PRACTITIONER_HOSPITAL,
                            "valueReference": {"reference": f"Organization/{hospital}"},
                        }
                    ],
                    "name": [{"text": f"心内科医师{n:02d}"}],
                    "qualification": [
                        {
                            "code": {
                                "coding": [
                                    {"system": PROFESSIONAL_TITLE, "code": TITLES[n % len(TITLES)]}
                                ]
                            }
                        }
                    ],
                },
                session=s,
                resource_id=pid,
            )
            store.create(
                "PractitionerRole",
                {
                    "resourceType": "PractitionerRole",
                    "active": True,
                    "practitioner": {"reference": f"Practitioner/{pid}"},
                    "organization": {"reference": f"Organization/{hospital}"},
                    "specialty": [
                        {"coding": [{"system": DEPARTMENT, "version": "1994", "code": "03.04"}]}
                    ],
                },
                session=s,
                resource_id=f"{pid}-role",
            )
            store.create(
                "Schedule",
                {
                    "resourceType": "Schedule",
                    "active": True,
                    "actor": [{"reference": f"PractitionerRole/{pid}-role"}],
                    "extension": [
                        {
                            "url": TEMPLATE_EXTENSION,
                            "extension": [
                                *({"url": "daysOfWeek", "valueCode": d} for d in days.split()),
                                {"url": "availableStartTime", "valueTime": start},
                                {"url": "availableEndTime", "valueTime": end},
                                {"url": "slotMinutes", "valuePositiveInt": 30},
                            ],
                        }
                        for days, start, end in sessions
                    ],
                },
                session=s,
                resource_id=f"{pid}-consult",
            )
    # A fifth of each specialist's slots taken (straight into the table: what $find reads).
    now = datetime.now(UTC)
    taken = 0
    with db.transaction(write=True) as s:
        schedules = load_schedules(s, ScheduleFilter(specialties=("03.04",)))
        calendars = load_calendars(s, {x.hospital_id for x in schedules})
        for sched in schedules:
            slots = schedule_slots(
                sched, calendars[sched.hospital_id], (now, now + timedelta(days=DAYS))
            )
            for (start, end), _ in rng.sample(slots, len(slots) // 5):
                s.add(
                    Booking(
                        appointment_id=str(uuid.uuid4()),
                        service_request_id="bench",
                        task_id="bench",
                        schedule_id=sched.schedule_id,
                        practitioner_role_id=sched.role_id,
                        practitioner_id=sched.practitioner_id,
                        specialist_hospital=sched.hospital_id,
                        requesting_hospital="xy-people",
                        patient_id=f"bench-patient-{taken}",
                        starts=start,
                        ends=end,
                        status="booked",
                        room_id=uuid.uuid4().hex,
                        specialist_response="accepted",
                        created_at=now,
                    )
                )
                taken += 1
    db.dispose()
    return taken


def measure(op: Callable[[], Any], n: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        op()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        op()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 2),
        "n": n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--database-url", default=None, help="an EMPTY database to use")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        port = _free_port()
        settings = Settings(
            database_url=url,
            storage_url=Path(tmp, "blobs").as_uri(),
            base_url=f"http://127.0.0.1:{port}",
            demo=True,
        )
        t0 = time.perf_counter()
        upgrade(url)
        seed_demo(settings)
        taken = populate(settings, random.Random(6))
        print(f"set-up: {time.perf_counter() - t0:.1f} s, {taken} slots booked beforehand")

        db = Database(url)
        with db.transaction() as s:
            claims = token_claims(get_user(session=s, username="dr.xinyuan.people"), "")
        token = issue_token(settings, claims)[0]
        start = datetime.now(UTC)
        end = start + timedelta(days=DAYS)
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "specialty", "valueString": "03.04"},
                {"name": "start", "valueDateTime": start.isoformat()},
                {"name": "end", "valueDateTime": end.isoformat()},
                {"name": "_count", "valueInteger": 200},
            ],
        }

        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        client = httpx.Client(
            base_url=settings.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        found: dict[str, Any] = {}

        def http_find() -> None:
            r = client.post("/fhir/Appointment/$find", json=body)
            if r.status_code != 200:
                raise SystemExit(f"$find answered {r.status_code}: {r.text[:300]}")
            found["bundle"] = r.json()

        def in_process() -> None:
            with db.transaction() as s:
                schedules = load_schedules(s, ScheduleFilter(specialties=("03.04",)))
                requesting = load_calendars(s, ["xy-people"])["xy-people"]
                found["proposals"] = find_times(
                    s,
                    schedules,
                    requesting,
                    (start, end),
                    minutes=30,
                    now=datetime.now(UTC),
                    limit=200,
                )
                found["schedules"] = len(schedules)

        def in_process_all() -> None:
            with db.transaction() as s:
                schedules = load_schedules(s, ScheduleFilter(specialties=("03.04",)))
                requesting = load_calendars(s, ["xy-people"])["xy-people"]
                found["all"] = find_times(
                    s,
                    schedules,
                    requesting,
                    (start, end),
                    minutes=30,
                    now=datetime.now(UTC),
                    limit=1_000_000,
                )

        def baseline() -> None:
            with db.transaction() as s:
                schedules = load_schedules(s, ScheduleFilter(specialties=("03.04",)))
                load_calendars(s, {x.hospital_id for x in schedules} | {"xy-people"})
                busy_times(
                    s,
                    practitioner_ids=[x.practitioner_id for x in schedules],
                    window=(start, end),
                    now=datetime.now(UTC),
                )

        results = {
            "http": measure(http_find, args.requests),
            "in_process": measure(in_process, args.requests),
            "in_process_all": measure(in_process_all, max(10, args.requests // 4)),
            "baseline": measure(baseline, args.requests),
        }
        server.should_exit = True
        thread.join(10)
        client.close()
        app.state.services.db.dispose()
        db.dispose()

    proposals = len(found["bundle"]["entry"])
    base = results["baseline"]["median_ms"]
    ratios = {
        "http/baseline": round(results["http"]["median_ms"] / base, 1),
        "in_process/baseline": round(results["in_process"]["median_ms"] / base, 1),
        "in_process_all/baseline": round(results["in_process_all"]["median_ms"] / base, 1),
    }
    print(
        f"$find over {found['schedules']} specialists x {DAYS} days "
        f"({proposals} proposals returned, _count=200), {args.requests} requests each:"
    )
    print(f"{'':14}{'median ms':>12}{'p95 ms':>10}")
    for name, r in results.items():
        print(f"{name:14}{r['median_ms']:>12}{r['p95_ms']:>10}")
    print(f"ratios (median): {ratios}")
    print(
        f"in_process_all: every free time of the {DAYS} days ({len(found['all'])} proposals), "
        "not only the first page"
    )
    note = (
        f"$find over {found['schedules']} specialists and {DAYS} days: median "
        f"{results['http']['median_ms']} ms over HTTP (p95 {results['http']['p95_ms']} ms), "
        f"{results['in_process']['median_ms']} ms in-process, baseline SQL "
        f"{base} ms (x{ratios['http/baseline']} over HTTP)."
    )
    print(note)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "database": "sqlite" if args.database_url is None else "given",
                "specialists": found["schedules"],
                "days": DAYS,
                "proposals": proposals,
                "results": results,
                "ratios": ratios,
                "note": note,
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
