"""Counters of what the service does (beside the request counts of server/metrics.py), for
`/metrics`. Module-level, so every face and domain counts into the same ones; with several
worker processes prometheus-client's multiprocess mode adds them up (`alliance serve`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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
