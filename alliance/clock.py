"""The service's one clock (ARCHITECTURE.md "Time"): instants in UTC, timezone-aware.

Everything that asks what time it is asks `now()`, so tests move the clock (`advance`,
`set_to`) instead of sleeping, and every deadline, hold, grant period and token lifetime is
computed against the same instant source. Production reads the system clock. The offset lives
in this process only: it moves what the code here sees, never another worker's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def now() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC) + _offset


def advance(delta: timedelta) -> None:
    """Move this process's clock forward (or back) by `delta` (tests)."""
    global _offset
    _offset += delta


def set_to(instant: datetime) -> None:
    """Make `now()` read `instant` (tests); it runs on from there."""
    global _offset
    _offset = instant - datetime.now(UTC)


def reset() -> None:
    """Back to the system clock."""
    global _offset
    _offset = timedelta(0)
