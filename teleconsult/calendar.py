"""Calendar arithmetic, pure: weekly working hours and consult templates kept in a site's own
time zone, turned into UTC intervals; closures removed; two sites' hours intersected.

A 08:00-17:00 opening in Asia/Urumqi is 02:00-11:00 UTC, the same instants as 10:00-19:00
Beijing time; a Yangzhou site open 08:00-12:00 and 14:00-17:30 Beijing time overlaps it at
10:00-12:00 and 14:00-17:30 Beijing time. Local times are built as wall-clock times in the
zone and converted, so a zone with daylight saving would still be right.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

Interval = tuple[datetime, datetime]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Opening:
    """Open on an ISO weekday (1 Monday) from `starts` to `ends`, minutes after midnight."""

    weekday: int
    starts: int
    ends: int


@dataclass(frozen=True)
class Template:
    """A recurring consult session, cut into slots of `slot_minutes`."""

    weekday: int
    starts: int
    ends: int
    slot_minutes: int


def local_instant(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """The UTC instant of `minutes` after midnight of `day` on the wall clocks of `zone`."""
    extra_days, minute_of_day = divmod(minutes, 24 * 60)
    hour, minute = divmod(minute_of_day, 60)
    local = datetime.combine(day + timedelta(days=extra_days), time(hour, minute), tzinfo=zone)
    return local.astimezone(UTC)


def local_days(window: Interval, zone: ZoneInfo) -> Iterator[date]:
    """Every local date of `zone` that a part of `window` falls on."""
    day = window[0].astimezone(zone).date()
    last = window[1].astimezone(zone).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with touching or overlapping intervals joined."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def subtract(intervals: list[Interval], removed: Iterable[Interval]) -> list[Interval]:
    """`intervals` (merged) without any instant of `removed`."""
    result = list(intervals)
    for cut_start, cut_end in merge(removed):
        kept: list[Interval] = []
        for start, end in result:
            if end <= cut_start or start >= cut_end:
                kept.append((start, end))
                continue
            if start < cut_start:
                kept.append((start, cut_start))
            if end > cut_end:
                kept.append((cut_end, end))
        result = kept
    return result


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """The instants in both (each merged and sorted)."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(intervals: list[Interval], window: Interval) -> list[Interval]:
    return intersect(intervals, [window])


def contains(intervals: list[Interval], start: datetime, end: datetime) -> bool:
    """Whether one interval of `intervals` (merged, sorted) holds all of [start, end)."""
    i = bisect.bisect_right(intervals, start, key=_start) - 1
    return i >= 0 and intervals[i][1] >= end


def overlaps(intervals: list[Interval], start: datetime, end: datetime) -> bool:
    """Whether any of `intervals` (merged, sorted) shares an instant with [start, end): the
    last one starting before `end` is the only candidate, the others end before it starts."""
    i = bisect.bisect_left(intervals, end, key=_start)
    return i > 0 and intervals[i - 1][1] > start


def _start(interval: Interval) -> datetime:
    return interval[0]


def open_intervals(
    openings: Iterable[Opening], zone: ZoneInfo, closures: Iterable[Interval], window: Interval
) -> list[Interval]:
    """When a site is open within `window`: its weekly hours on each local day, in UTC, less
    its closures."""
    by_day: dict[int, list[Opening]] = {}
    for opening in openings:
        by_day.setdefault(opening.weekday, []).append(opening)
    found: list[Interval] = []
    for day in local_days(window, zone):
        for o in by_day.get(day.isoweekday(), []):
            found.append((local_instant(day, o.starts, zone), local_instant(day, o.ends, zone)))
    return subtract(clip(merge(found), window), closures)


@dataclass(frozen=True)
class Session:
    """One occurrence of a template: [starts, ends) cut into slots of `slot` from `starts`."""

    starts: datetime
    ends: datetime
    slot: timedelta

    def slot_starts(self) -> Iterator[datetime]:
        at = self.starts
        while at + self.slot <= self.ends:
            yield at
            at += self.slot


def sessions(templates: Iterable[Template], zone: ZoneInfo, window: Interval) -> list[Session]:
    """Every occurrence of the templates on the local days of `window`, by start."""
    by_day: dict[int, list[Template]] = {}
    for template in templates:
        by_day.setdefault(template.weekday, []).append(template)
    found: list[Session] = []
    for day in local_days(window, zone):
        for t in by_day.get(day.isoweekday(), []):
            start = local_instant(day, t.starts, zone)
            end = local_instant(day, t.ends, zone)
            if end > window[0] and start < window[1]:
                found.append(Session(start, end, timedelta(minutes=t.slot_minutes)))
    return sorted(found, key=lambda s: s.starts)
