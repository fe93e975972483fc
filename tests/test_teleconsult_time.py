"""Time zones: two sites' working hours kept in their own zones overlap where they should, and
the one display function shows Beijing time, with Xinjiang time beside it for Xinyuan users."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient

from teleconsult.calendar import Opening, intersect, open_intervals
from teleconsult.time import BEIJING, format_for_site, shows_xinjiang_time
from tests.teleconsults import (
    calendar,
    find,
    open_consult,
    schedule,
    template,
    weekday_ahead,
    window,
)

Users = Callable[[str], TestClient]
URUMQI = ZoneInfo("Asia/Urumqi")


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _beijing_hours(intervals: list[tuple[datetime, datetime]]) -> list[tuple[str, str]]:
    return [
        (f"{s.astimezone(BEIJING):%H:%M}", f"{e.astimezone(BEIJING):%H:%M}") for s, e in intervals
    ]


def test_urumqi_and_beijing_hours_overlap_exactly() -> None:
    """Xinyuan keeping Asia/Urumqi 08:00-17:00 and Yangzhou keeping 08:00-12:00 and 14:00-17:30
    Beijing time overlap at 10:00-12:00 and 14:00-17:30 Beijing time, every weekday."""
    monday = date(2026, 11, 30)
    week = (
        datetime(2026, 11, 30, tzinfo=BEIJING).astimezone(UTC),
        datetime(2026, 12, 5, tzinfo=BEIJING).astimezone(UTC),
    )
    xinyuan = open_intervals(
        [Opening(d, _minutes("08:00"), _minutes("17:00")) for d in range(1, 6)], URUMQI, [], week
    )
    yangzhou = open_intervals(
        [
            Opening(d, _minutes(s), _minutes(e))
            for d in range(1, 6)
            for s, e in (("08:00", "12:00"), ("14:00", "17:30"))
        ],
        BEIJING,
        [],
        week,
    )
    both = intersect(xinyuan, yangzhou)
    assert _beijing_hours(both) == [("10:00", "12:00"), ("14:00", "17:30")] * 5
    assert [s.astimezone(BEIJING).date() for s, _ in both[::2]] == [
        monday + timedelta(days=i) for i in range(5)
    ]
    # The Xinyuan hours are 02:00-11:00 UTC, the same instants as 10:00-19:00 Beijing time.
    assert (xinyuan[0][0].hour, xinyuan[0][1].hour) == (2, 11)
    # A closure removes its day at that site only.
    closed = open_intervals(
        [Opening(d, _minutes("08:00"), _minutes("17:00")) for d in range(1, 6)],
        URUMQI,
        [(xinyuan[1][0], xinyuan[1][1])],
        week,
    )
    assert len(intersect(closed, yangzhou)) == 8


def test_find_offers_only_the_overlap(as_user: Users) -> None:
    """Through $find: a specialist consulting 08:00-17:30 Beijing time at 苏北人民医院 (open
    08:00-12:00, 14:00-17:30) is offered to 新源县人民医院 (Asia/Urumqi 08:00-17:00) exactly in
    10:00-12:00 and 14:00-17:30 Beijing time, and the times read in both zones for the county
    doctor."""
    subei, xinyuan = as_user("admin.subei"), as_user("admin.xinyuan.people")
    r = xinyuan.put(
        "/fhir/HealthcareService/xy-people-teleconsult",
        json=calendar("xy-people", "Asia/Urumqi", [("mon tue wed thu fri", "08:00", "17:00")]),
    )
    assert r.status_code == 200, r.text
    weekdays = "mon tue wed thu fri"
    r = subei.put(
        "/fhir/HealthcareService/subei-teleconsult",
        json=calendar(
            "subei", "Asia/Shanghai", [(weekdays, "08:00", "12:00"), (weekdays, "14:00", "17:30")]
        ),
    )
    assert r.status_code == 200, r.text
    r = subei.put(
        "/fhir/Schedule/sp-subei-consult",
        json=schedule(
            "sp-subei-consult", "sp-subei-role", [template(weekdays, "08:00", "17:30", 30)]
        ),
    )
    assert r.status_code == 200, r.text
    doctor = as_user("dr.xinyuan.people")
    sr, _task = open_consult(doctor)
    day = weekday_ahead(3)  # a Wednesday
    found = find(doctor, sr, _count=("valueInteger", 100), **window(day))
    starts = [datetime.fromisoformat(a["start"].replace("Z", "+00:00")) for a in found]
    shown = [f"{s.astimezone(BEIJING):%H:%M}" for s in starts]
    expected = [f"{h:02d}:{m:02d}" for h in range(10, 12) for m in (0, 30)]
    expected += [f"{h:02d}:{m:02d}" for h in range(14, 17) for m in (0, 30)] + ["17:00"]
    assert shown == expected
    assert all(
        a["participant"][0]["actor"]["reference"] == "PractitionerRole/sp-subei-role" for a in found
    )
    first = found[0]["extension"][0]["valueString"]
    assert first == f"{day.isoformat()} 10:00 北京时间 (新疆时间 08:00)"
    # An hour-long consult takes two slots of one session: none crosses the lunch break.
    hours = find(
        doctor,
        sr,
        minutes_duration=("valueInteger", 60),
        _count=("valueInteger", 100),
        **window(day),
    )
    assert [
        f"{datetime.fromisoformat(a['start'].replace('Z', '+00:00')).astimezone(BEIJING):%H:%M}"
        for a in hours
    ] == ["10:00", "10:30", "11:00", "14:00", "14:30", "15:00", "15:30", "16:00", "16:30"]
    assert all(len(a["slot"]) == 2 for a in hours)


def test_the_display_function() -> None:
    ten = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 Beijing time
    assert format_for_site(ten, xinjiang=True) == "2026-12-01 10:00 北京时间 (新疆时间 08:00)"
    assert format_for_site(ten, xinjiang=False) == "2026-12-01 10:00 北京时间"
    # An instant given in any offset shows the same.
    assert format_for_site(ten.astimezone(URUMQI), xinjiang=False) == "2026-12-01 10:00 北京时间"
    # Past midnight in Beijing, Xinjiang is still on the day before: its date is shown.
    late = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
    assert (
        format_for_site(late, xinjiang=True) == "2026-12-01 01:00 北京时间 (新疆时间 11-30 23:00)"
    )
    # Who is shown Xinjiang time: a hospital in Xinjiang, or one keeping Urumqi hours.
    xinyuan = {"address": [{"city": "新源县", "state": "新疆维吾尔自治区"}]}
    yangzhou = {"address": [{"city": "扬州市", "state": "江苏省"}]}
    assert shows_xinjiang_time(xinyuan, "Asia/Shanghai")
    assert shows_xinjiang_time(yangzhou, "Asia/Urumqi")
    assert not shows_xinjiang_time(yangzhou, "Asia/Shanghai")


def test_the_display_follows_the_reader(as_user: Users) -> None:
    """The same appointment reads in Beijing time for the specialist and with Xinjiang time
    for the county doctor (the local-time extension, filled per reader)."""
    doctor, specialist = as_user("dr.xinyuan.people"), as_user("sp.subei")
    sr, _task = open_consult(doctor)
    day = weekday_ahead(2)
    proposal = find(doctor, sr, **window(day))[0]
    from tests.teleconsults import book

    r = book(doctor, proposal)
    assert r.status_code == 200, r.text
    appt = r.json()
    start = datetime.fromisoformat(appt["start"].replace("Z", "+00:00"))
    local = "https://fhir.yzxy-alliance.cn/StructureDefinition/local-time"

    def shown(client: TestClient) -> str:
        body = client.get(f"/fhir/Appointment/{appt['id']}").json()
        return next(e["valueString"] for e in body["extension"] if e["url"] == local)

    assert shown(doctor) == format_for_site(start, xinjiang=True)
    assert shown(specialist) == format_for_site(start, xinjiang=False)
    assert "新疆时间" in shown(doctor) and "新疆时间" not in shown(specialist)
