"""The alliance's referral figures (DOMAIN.md "Figures the alliance reports"): referrals up
and down and teleconsult requests per hospital pair and month, decisions, decline reasons,
turnaround, overdue."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.codes import DECLINE_REASON_CODES
from alliance.security.access import Principal
from referral.models import Referral
from referral.workflow import AWAITING_DECISION

#: Months are Beijing-time months: a referral sent at 00:30 on the 1st (Beijing) counts there.
REPORT_TZ = clock.BEIJING
DIRECTIONS = {"up-referral": "up", "down-referral": "down", "teleconsult": "teleconsult"}


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    @classmethod
    def of_days(cls, first: date, last: date) -> Period:
        """From the start of `first` to the end of `last`, Beijing time."""
        start = datetime.combine(first, datetime.min.time(), REPORT_TZ)
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), REPORT_TZ)
        return cls(start.astimezone(UTC), end.astimezone(UTC))


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `fraction` of values at or
    below it (so p90 of ten values is the ninth)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _hours(pairs: list[tuple[datetime, datetime]]) -> dict[str, Any]:
    values = [(b - a).total_seconds() / 3600 for a, b in pairs]
    return {
        "count": len(values),
        "median_hours": round(statistics.median(values), 3) if values else None,
        "p90_hours": round(p, 3) if (p := percentile(values, 0.9)) is not None else None,
    }


def reason_reader(principal: Principal) -> str | None:
    """Whose referrals' decline texts a reader of the figures may see: an administrator, their
    hospital's; an alliance auditor, nobody's (the codes tell the alliance enough)."""
    return principal.hospital_id if "administer" in principal.capabilities else None


def referral_figures(
    session: Session,
    period: Period,
    *,
    reader_hospital: str | None = None,
    hospital: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The figures of referrals sent (requested) within `period`, by month of sending.

    Decline reasons are counted by code (DECLINE_REASON_CODES; a decline without one of them
    counts as `other`); their free text, which may name the patient or the diagnosis, is
    listed only for the referrals `reader_hospital` sent or was asked. With `hospital`, only
    the requests that hospital sent or was asked count."""
    now = now or clock.now()
    involving = (
        [(Referral.placer_org == hospital) | (Referral.owner_org == hospital)] if hospital else []
    )
    rows = session.scalars(
        select(Referral).where(
            Referral.category.in_(DIRECTIONS),
            Referral.requested_at >= period.start,
            Referral.requested_at < period.end,
            *involving,
        )
    ).all()
    pairs: dict[tuple[str, str, str, str], Counter[str]] = {}
    reasons: Counter[str] = Counter()
    texts: Counter[tuple[str, str, str, str]] = Counter()
    to_accept: list[tuple[datetime, datetime]] = []
    to_complete: list[tuple[datetime, datetime]] = []
    for r in rows:
        assert r.requested_at is not None
        month = r.requested_at.astimezone(REPORT_TZ).strftime("%Y-%m")
        key = (month, DIRECTIONS[r.category], r.placer_org, r.owner_org)
        counts = pairs.setdefault(key, Counter())
        counts["sent"] += 1
        if r.accepted_at is not None:
            counts["accepted"] += 1
            to_accept.append((r.requested_at, r.accepted_at))
        if r.rejected_at is not None:
            counts["rejected"] += 1
            code = r.status_reason_code if r.status_reason_code in DECLINE_REASON_CODES else None
            reasons[code or "other"] += 1
            if reader_hospital in (r.placer_org, r.owner_org):
                texts[(code or "other", r.status_reason or "", r.placer_org, r.owner_org)] += 1
        if r.completed_at is not None:
            counts["completed"] += 1
            to_complete.append((r.requested_at, r.completed_at))
        if r.status == "cancelled":
            counts["cancelled"] += 1
    overdue = session.scalar(
        select(func.count()).where(
            Referral.category.in_(DIRECTIONS),
            Referral.status.in_(AWAITING_DECISION),
            Referral.deadline < now,
            *involving,
        )
    )
    return {
        "from": period.start.isoformat(),
        "to": period.end.isoformat(),
        "granularity": "month",
        "hospital": hospital,
        "timezone": "Asia/Shanghai",
        "pairs": [
            {
                "month": month,
                "direction": direction,
                "from": placer,
                "to": owner,
                **{
                    k: counts.get(k, 0)
                    for k in ("sent", "accepted", "rejected", "completed", "cancelled")
                },
            }
            for (month, direction, placer, owner), counts in sorted(pairs.items())
        ],
        "rejection_reasons": [
            {"code": code, "display": DECLINE_REASON_CODES[code], "count": n}
            for code, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "own_rejection_reasons": [
            {"code": code, "reason": text, "from": placer, "to": owner, "count": n}
            for (code, text, placer, owner), n in sorted(
                texts.items(), key=lambda kv: (-kv[1], kv[0])
            )
        ],
        "turnaround": {
            "request_to_acceptance": _hours(to_accept),
            "request_to_completion": _hours(to_complete),
        },
        "overdue_now": overdue or 0,
    }
