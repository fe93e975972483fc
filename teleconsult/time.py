"""Time shown to people (DOMAIN.md "Time").

The API speaks UTC instants with offsets; people read Beijing time (北京时间, Asia/Shanghai),
and where they are in Xinjiang also Xinjiang time (新疆时间, Asia/Urumqi, UTC+6) beside it,
because many people in Xinyuan live by it even though it is not the official time. This is the
one function that renders a time for a person; everything that shows a time to a user calls it.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from alliance.clock import BEIJING

XINJIANG = ZoneInfo("Asia/Urumqi")
#: The province (Organization.address.state) whose people are shown Xinjiang time too.
XINJIANG_REGION = "新疆维吾尔自治区"


def format_for_site(moment: datetime, *, xinjiang: bool) -> str:
    """`2026-12-01 10:00 北京时间 (新疆时间 08:00)` for a user at a Xinjiang site,
    `2026-12-01 10:00 北京时间` for anyone else. When Xinjiang time falls on another day, its
    date is shown too: `2026-12-01 01:00 北京时间 (新疆时间 11-30 23:00)`."""
    if moment.tzinfo is None:
        raise ValueError("a time shown to people must be an instant (timezone-aware)")
    beijing = moment.astimezone(BEIJING)
    text = f"{beijing:%Y-%m-%d %H:%M} 北京时间"
    if not xinjiang:
        return text
    local = moment.astimezone(XINJIANG)
    shown = f"{local:%H:%M}" if local.date() == beijing.date() else f"{local:%m-%d %H:%M}"
    return f"{text} (新疆时间 {shown})"


def shows_xinjiang_time(organization: dict[str, object] | None, time_zone: str | None) -> bool:
    """Whether a hospital's users are shown Xinjiang time: it is in Xinjiang (its address), or
    it keeps Asia/Urumqi working hours."""
    if time_zone == "Asia/Urumqi":
        return True
    addresses = (organization or {}).get("address")
    if not isinstance(addresses, list):
        return False
    return any(isinstance(a, dict) and a.get("state") == XINJIANG_REGION for a in addresses)
