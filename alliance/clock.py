"""The service's one clock (ARCHITECTURE.md "Time"): instants in UTC, timezone-aware.

Everything that asks what time it is asks `now()`, so tests move the clock (`advance`,
`set_to`) instead of sleeping, and every deadline, hold, grant period and token lifetime is
computed against the same instant source. Production reads the system clock. The offset lives
in this process only: it moves what the code here sees, never another worker's clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

#: The alliance's civil time (DOMAIN.md "Time"): Beijing time, the official time in Xinjiang too.
#: Calendar days (today, a report's months, a patient's age) are Beijing-time days.
BEIJING = ZoneInfo("Asia/Shanghai")

_offset = timedelta(0)


def now() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC) + _offset


def today() -> date:
    """Today's date in Beijing time. Not `now().date()`: from 16:00 UTC that is still
    yesterday in Beijing, and a period ending "today" would leave the evening's records out."""
    return now().astimezone(BEIJING).date()


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
