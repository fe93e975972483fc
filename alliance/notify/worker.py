"""The delivery worker (issue 14.3): from the outbox to each subscriber's rest-hook.

- At least once, in order per subscription: a subscription's cursor (`matched_through`,
  `events_since_start`) moves only after the receiver acknowledged the notification with a 2xx;
  a crash (kill -9 of the worker or the API) before that sends the same events again, with the
  same event numbers, which the receiver de-duplicates by.
- One worker at a time per subscription: a worker claims due subscriptions with a lease
  (`leased_until`, the attempt's timeout and a margin), in a short transaction (PostgreSQL:
  `SELECT ... FOR UPDATE SKIP LOCKED`, so workers claim different rows without waiting; SQLite:
  its single writer), and talks to the receiver outside any transaction. A lease of a worker
  that died runs out and another worker takes the subscription over.
- Retries with exponential back-off (1 s doubling to at most `MAX_BACKOFF`), without end: a
  receiver down for an hour is retried at least every 5 minutes and then receives everything,
  in order, `max_count` events per notification.
- Handshake first (the subscription is `requested` until it is answered), heartbeats when the
  channel asks for them and nothing else was sent for that long.
- Every attempt is recorded (notify_attempt) and counted in `/metrics`.

The scheduled jobs that raise events on time (an urgent referral's deadline, consult reminders)
are handed in by the wiring (server), which knows the domains; the kernel does not.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from alliance import clock, metrics
from alliance.db import Database
from alliance.fhir.registry import Store
from alliance.notify.models import DeliveryAttempt, Event, Subscription
from alliance.notify.outbox import last_event_number
from alliance.notify.subscriptions import notification_bundle, pending, subscriber_active

log = logging.getLogger("alliance.notify")

LIVE = ("requested", "active", "error")
MAX_BACKOFF = timedelta(minutes=5)
LEASE_MARGIN = timedelta(seconds=5)
#: A scheduled job: raises the events now due in the session given; returns how many.
Job = Callable[[Session], int]
#: Another delivery from the outbox run in each pass after the subscriptions' (people's
#: channels, alliance.notify.people): one pass; returns how many deliveries it attempted.
Outlet = Callable[[], int]


def backoff(failures: int) -> timedelta:
    """1 s, 2 s, 4 s, ... at most MAX_BACKOFF, after the n-th failure in a row."""
    return min(timedelta(seconds=2 ** min(failures - 1, 20)), MAX_BACKOFF)


@dataclass
class Outcome:
    ok: bool
    http_status: int | None
    error: str | None
    milliseconds: int


class Worker:
    """Delivers notifications; `run_once` is one pass (tests call it with a moved clock),
    `start` runs passes in a thread until `stop`."""

    def __init__(
        self,
        db: Database,
        store: Store,
        fhir_base: str,
        *,
        jobs: Sequence[Job] = (),
        outlets: Sequence[Outlet] = (),
        schedule_every: timedelta = timedelta(seconds=30),
        poll_seconds: float = 0.2,
        batch: int = 20,
        name: str = "worker",
    ) -> None:
        self.db = db
        self.store = store
        self.fhir_base = fhir_base
        self.jobs = list(jobs)
        self.outlets = list(outlets)
        self.schedule_every = schedule_every
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.name = name
        self.http = httpx.Client(follow_redirects=False)
        self._next_schedule: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"notify-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("a delivery pass failed; trying again")
                busy = 0
            if not busy:
                self._stop.wait(self.poll_seconds)

    def run_once(self) -> int:
        """Run the scheduled jobs when due, then deliver to the subscriptions now due.
        Returns how many deliveries were attempted."""
        self.schedule()
        claimed = self.claim()
        for sub_id in claimed:
            self.deliver(sub_id)
        return len(claimed) + sum(outlet() for outlet in self.outlets)

    def schedule(self, *, force: bool = False) -> int:
        now = clock.now()
        if not self.jobs or (
            not force and self._next_schedule is not None and now < self._next_schedule
        ):
            return 0
        self._next_schedule = now + self.schedule_every
        raised = 0
        for job in self.jobs:
            with self.db.transaction(write=True) as session:
                raised += job(session)
        return raised

    # ---- claiming ----------------------------------------------------------------------

    def claim(self) -> list[str]:
        """Lease the subscriptions due now: a handshake to send, events they have not had
        (the outbox has moved past their cursor), or a heartbeat due."""
        now = clock.now()
        # A plain read first: an idle worker polls without taking SQLite's writer lock.
        with self.db.transaction() as session:
            if not session.scalar(self._due(now, last_event_number(session)).limit(1)):
                return []
        with self.db.transaction(write=True) as session:
            newest = last_event_number(session)
            due = self._due(now, newest).limit(self.batch)
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            rows = list(session.scalars(due))
            claimed = []
            for row in rows:
                if (
                    row.status != "requested"
                    and row.matched_through >= newest
                    and not self._heartbeat_due(row, now)
                ):
                    continue
                row.leased_until = now + timedelta(seconds=row.timeout_seconds) + LEASE_MARGIN
                claimed.append(row.id)
        return claimed

    @staticmethod
    def _due(now: datetime, newest: int) -> Select[Subscription]:
        """Rest-hook subscriptions due now and not leased: a handshake to send, events they have
        not had (the outbox has moved past their cursor), or a heartbeat maybe due."""
        return (
            select(Subscription)
            .where(
                Subscription.channel == "rest-hook",
                Subscription.status.in_(LIVE),
                Subscription.next_attempt <= now,
                or_(Subscription.leased_until.is_(None), Subscription.leased_until < now),
                or_(
                    Subscription.status == "requested",
                    Subscription.matched_through < newest,
                    Subscription.heartbeat_at <= now,
                ),
            )
            .order_by(Subscription.next_attempt)
        )

    @staticmethod
    def _heartbeat_due(row: Subscription, now: datetime) -> bool:
        if row.heartbeat_at is None or row.status == "requested":
            return False
        return row.heartbeat_at <= now

    # ---- one delivery ------------------------------------------------------------------

    def deliver(self, sub_id: str) -> None:
        """One notification to one leased subscription, and its outcome recorded."""
        with self.db.transaction() as session:
            row = session.get(Subscription, sub_id)
            if row is None or row.status not in LIVE:
                return
            active = subscriber_active(session, row)
            session.expunge(row)
        if not active:
            self._switch_off(sub_id, "the subscriber's account is locked")
            return
        with self.db.transaction() as session:
            through = last_event_number(session)
            events: list[Event] = []
            if row.status == "requested":
                kind = "handshake"
            else:
                events = pending(session, row, through)
                kind = "event-notification" if events else "heartbeat"
                for event in events:
                    session.expunge(event)
            if kind == "heartbeat" and not self._heartbeat_due(row, clock.now()):
                # Nothing of its own among the new events: move its cursor past them.
                kind = "skip"
            numbered = [(row.events_since_start + i + 1, e) for i, e in enumerate(events)]
            bundle = (
                notification_bundle(session, self.store, row, kind, self.fhir_base, numbered)
                if kind != "skip"
                else None
            )
        outcome = self._post(row, bundle) if bundle is not None else Outcome(True, None, None, 0)
        self._record(row, kind, numbered, through, outcome)

    def _post(self, row: Subscription, bundle: dict[str, object]) -> Outcome:
        headers = {"Content-Type": "application/fhir+json"}
        for line in json.loads(row.headers or "[]"):
            name, _, value = str(line).partition(":")
            headers[name.strip()] = value.strip()
        started = time.monotonic()
        try:
            response = self.http.post(
                row.endpoint,
                content=json.dumps(bundle, ensure_ascii=False).encode(),
                headers=headers,
                timeout=row.timeout_seconds,
            )
        except httpx.HTTPError as exc:
            spent = int((time.monotonic() - started) * 1000)
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500], spent)
        spent = int((time.monotonic() - started) * 1000)
        if 200 <= response.status_code < 300:
            return Outcome(True, response.status_code, None, spent)
        return Outcome(False, response.status_code, f"HTTP {response.status_code}", spent)

    def _record(
        self,
        sent: Subscription,
        kind: str,
        numbered: list[tuple[int, Event]],
        through: int,
        outcome: Outcome,
    ) -> None:
        now = clock.now()
        with self.db.transaction(write=True) as session:
            row = session.get(Subscription, sent.id)
            if row is None:
                return
            row.leased_until = None
            became: str | None = None
            if kind != "skip":
                session.add(
                    DeliveryAttempt(
                        subscription_id=row.id,
                        hospital_id=row.hospital_id,
                        at=now,
                        type=kind,
                        first_number=numbered[0][0] if numbered else None,
                        last_number=numbered[-1][0] if numbered else None,
                        ok=outcome.ok,
                        http_status=outcome.http_status,
                        error=outcome.error,
                        milliseconds=outcome.milliseconds,
                    )
                )
            if outcome.ok:
                if row.status in ("requested", "error"):
                    became = "active"
                if kind != "handshake":
                    if numbered:
                        # All the events of this batch were its own up to the last one sent;
                        # a full batch may have more after it.
                        row.matched_through = numbered[-1][1].id
                        row.events_since_start = numbered[-1][0]
                        if len(numbered) < row.max_count:
                            row.matched_through = through
                    else:
                        row.matched_through = max(row.matched_through, through)
                if kind != "skip":
                    row.sent(now)
                row.failures = 0
                row.error = None
                row.next_attempt = now
            else:
                row.failures += 1
                row.error = outcome.error
                row.next_attempt = now + backoff(row.failures)
                if row.status == "active":
                    became = "error"
            if became is not None and row.status != "off":
                row.status = became
                self._set_resource_status(session, row)
        if kind == "skip":
            return
        metrics.NOTIFY_ATTEMPTS.labels(kind, "ok" if outcome.ok else "failed").inc()
        if outcome.ok and numbered:
            metrics.NOTIFY_EVENTS.inc(len(numbered))
            for _number, event in numbered:
                metrics.NOTIFY_LATENCY.observe((now - event.at).total_seconds())

    def _switch_off(self, sub_id: str, why: str) -> None:
        """Stop a subscription whose subscriber may no longer act (off, with the reason)."""
        with self.db.transaction(write=True) as session:
            row = session.get(Subscription, sub_id)
            if row is None:
                return
            row.status, row.error, row.leased_until = "off", why, None
            self._set_resource_status(session, row)

    def _set_resource_status(self, session: Session, row: Subscription) -> None:
        """The Subscription resource shows the status (and the error) the worker found."""
        current = self.store.read("Subscription", row.id, session=session).resource()
        current["status"] = row.status
        if row.status in ("error", "off") and row.error:
            current["error"] = row.error
        else:
            current.pop("error", None)
        self.store.update("Subscription", row.id, current, session=session, actor=None)
