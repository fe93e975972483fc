"""Counters of what the service does (beside the request counts of server/metrics.py), for
`/metrics`. Module-level, so every face and domain counts into the same ones; with several
worker processes prometheus-client's multiprocess mode adds them up (`alliance serve`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

AUDIT_APPENDS = Counter(
    "alliance_audit_events_appended",
    "AuditEvents appended to the trail (committed)",
    registry=REGISTRY,
)
STOW_INSTANCES = Counter(
    "alliance_stow_instances",
    "DICOM instances received by STOW-RS, by outcome (stored, duplicate, failed)",
    ["outcome"],
    registry=REGISTRY,
)
STOW_BYTES = Counter(
    "alliance_stow_bytes",
    "Bytes of STOW-RS request bodies received",
    registry=REGISTRY,
)
STOW_FAILURES = Counter(
    "alliance_stow_failures",
    "STOW-RS requests that stored nothing (refused, or every instance failed)",
    registry=REGISTRY,
)
BOOKING_CONFLICTS = Counter(
    "alliance_booking_conflicts",
    "Teleconsult bookings refused because a person was already booked, by rule",
    ["rule"],
    registry=REGISTRY,
)
NOTIFY_ATTEMPTS = Counter(
    "alliance_notify_attempts",
    "Notification deliveries attempted (FHIR Subscriptions), by type and outcome (ok, failed)",
    ["type", "outcome"],
    registry=REGISTRY,
)
NOTICE_DELIVERIES = Counter(
    "alliance_notice_deliveries",
    "Notices to people sent beyond the portal (e-mail, webhook), by channel and outcome",
    ["channel", "outcome"],
    registry=REGISTRY,
)
NOTIFY_EVENTS = Counter(
    "alliance_notify_events_delivered",
    "Outbox events delivered to subscribers (acknowledged with a 2xx)",
    registry=REGISTRY,
)
NOTIFY_LATENCY = Histogram(
    "alliance_notify_latency_seconds",
    "From an event's commit to its delivery being acknowledged",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
