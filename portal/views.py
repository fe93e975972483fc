"""What the pages show of FHIR resources: small views read off them, and the form field an
error is about."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from alliance import clock
from alliance.codes import (
    PROFESSIONAL_TITLE,
    RESIDENT_ID,
)
from alliance.errors import AllianceError, Forbidden
from alliance.security.access import Principal
from alliance.security.tokens import TokenClaims
from teleconsult.presentation import LOCAL_TIME


@dataclass(frozen=True)
class UserView:
    claims: TokenClaims
    capabilities: frozenset[str]

    @property
    def username(self) -> str:
        return self.claims.username


class FormValues(dict[str, Any]):
    def getlist(self, key: str) -> list[str]:
        value = self.get(key) or []
        return value if isinstance(value, list) else [value]


def extension(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in resource.get("extension") or [] if e.get("url") == url), None)


def local_time(resource: dict[str, Any]) -> str | None:
    found = extension(resource, LOCAL_TIME)
    return str(found["valueString"]) if found and "valueString" in found else None


def auditors_only(principal: Principal) -> None:
    if "audit" not in principal.capabilities:
        raise Forbidden("the audit trail is for alliance auditors")


def patient_view(patient: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": patient["id"],
        "names": [n.get("text", "") for n in patient.get("name") or []],
        "identity": next(
            (
                i.get("value")
                for i in patient.get("identifier") or []
                if i.get("system") == RESIDENT_ID
            ),
            "",
        ),
        "gender": patient.get("gender"),
        "birth_date": patient.get("birthDate", ""),
    }


def doc_view(doc: dict[str, Any]) -> dict[str, str | None]:
    attachment = (doc.get("content") or [{}])[0].get("attachment", {})
    title = (
        attachment.get("title")
        or ((doc.get("type") or {}).get("coding") or [{}])[0].get("display")
        or doc["id"]
    )
    # A triage preview (before acceptance) carries no file: the title only, no link.
    return {"url": attachment.get("url"), "title": title}


def study_view(study: dict[str, Any]) -> dict[str, str | None]:
    uid = next(
        (i.get("value", "").removeprefix("urn:oid:") for i in study.get("identifier") or []), ""
    )
    modalities = ",".join(m.get("code", "") for m in study.get("modality") or [])
    text = f"{study.get('started', '')[:10]} {modalities} {study.get('description', '')}".strip()
    tags = [t.get("code") for t in (study.get("meta") or {}).get("tag") or []]
    # A triage preview (before acceptance) shows what the study is, not its images.
    link = None if "SUBSETTED" in tags else f"/viewer/{uid}"
    return {"id": study["id"], "text": text or uid, "link": link, "uid": uid}


def timeline_item(rtype: str, res: dict[str, Any], stamp: str) -> dict[str, Any]:
    if rtype == "ServiceRequest":
        code = ((res.get("category") or [{}])[0].get("coding") or [{}])[0].get("code", "")
        reasons = ", ".join(
            c.get("display", c.get("code", ""))
            for r in res.get("reasonCode") or []
            for c in r.get("coding") or []
        )
        return {
            "sort": stamp,
            "kind": code,
            "text": f"{reasons} · {res.get('status')}",
            "link": None,
        }
    if rtype == "Task":
        return {
            "sort": stamp,
            "kind": "Task",
            "text": f"{res.get('description', '')} · {res.get('status')}",
            "link": f"/referrals/{res['id']}",
        }
    if rtype == "ImagingStudy":
        view = study_view(res)
        return {"sort": stamp, "kind": "影像", "text": view["text"], "link": view["link"]}
    view = doc_view(res)
    return {"sort": stamp, "kind": "文档", "text": view["title"], "link": view["url"]}


def field_of(exc: AllianceError, default: str = "form") -> str:
    """The form field an error is about, from its FHIR element path."""
    paths = " ".join(p for i in exc.issues for p in i.expression)
    for marker, name in (
        ("identifier", "identity"),
        ("birthDate", "birth_date"),
        ("name", "name"),
        ("telecom", "phone"),
        ("gender", "gender"),
        ("performer", "target"),
        ("reasonCode", "diagnosis"),
        ("sourceAttachment", "consent_form"),
        ("Consent", "consent_form"),
    ):
        if marker in paths:
            return name
    if (exc.rule or "").startswith("file-") or "attach" in exc.message or exc.status in (413, 415):
        return "document"
    return default


def age_on(birth_date: str, today: date) -> int | None:
    """Whole years from a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD) to `today`."""
    parts = [int(p) for p in birth_date.split("-") if p.isdigit()]
    if not parts:
        return None
    year, month, day = [*parts, 1, 1][:3]
    return today.year - year - ((today.month, today.day) < (month, day))


def person_line(patient: dict[str, Any], t: Callable[[str], str]) -> str:
    """`姓名 · 女 · 45岁`: how a list names a patient."""
    names = [n.get("text", "") for n in patient.get("name") or [] if n.get("text")]
    parts = [names[0] if names else "—"]
    if patient.get("gender") in ("male", "female"):
        parts.append(t(str(patient["gender"])))
    age = age_on(str(patient.get("birthDate", "")), clock.today())
    if age is not None:
        parts.append(t("age_years").format(age=age))
    return " · ".join(parts)


def destination(request: dict[str, Any], related: dict[str, dict[str, Any]]) -> str:
    """`苏北人民医院 · 心血管内科`: the hospital and department a request asks."""
    for performer in request.get("performer") or []:
        org = related.get(str(performer.get("reference", "")))
        if org is None:
            continue
        parent = related.get(str((org.get("partOf") or {}).get("reference", "")))
        return " · ".join(str(o.get("name", "")) for o in (parent, org) if o)
    return ""


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_day(value: str | None, today: date) -> date:
    """A day asked for in a query (YYYY-MM-DD), never before today; today if none or bad."""
    try:
        asked = date.fromisoformat(value) if value else today
    except ValueError:
        return today
    return max(asked, today)


def day_label(day: date, t: Callable[[str], str]) -> str:
    """`12月03日 周四` (or `12-03 Thu`): a day as a heading."""
    return t("day_heading").format(month=day.month, day=day.day, weekday=t(WEEKDAYS[day.weekday()]))


def consultant_of(appointment: dict[str, Any]) -> str | None:
    """The PractitionerRole an Appointment books (the consultant)."""
    for p in appointment.get("participant") or []:
        ref = str((p.get("actor") or {}).get("reference", ""))
        if ref.startswith("PractitionerRole/"):
            return ref
    return None


def practitioner_line(practitioner: dict[str, Any]) -> str:
    """`陈志明 主任医师`: a practitioner's name and professional title (职称)."""
    names = [n.get("text", "") for n in practitioner.get("name") or [] if n.get("text")]
    titles = [
        c.get("display", "")
        for q in practitioner.get("qualification") or []
        for c in (q.get("code") or {}).get("coding") or []
        if c.get("system") == PROFESSIONAL_TITLE
    ]
    return " ".join(x for x in (names[:1] + titles[:1]) if x)


#: Day words a calendar line may use, to FHIR's days-of-week codes (FHIR R4 days-of-week).
DAY_WORDS = {
    **{code: code for code in WEEKDAYS},
    **{
        f"{prefix}{c}": code
        for prefix in ("周", "星期")
        for c, code in zip("一二三四五六日", WEEKDAYS, strict=True)
    },
    "周天": "sun",
    "星期天": "sun",
}
_RANGE = re.compile(r"^(\S+?)\s*(?:至|到|~|～|–|—|-)\s*(\S+)$")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})\s*(?:-|–|—|~|～|至|到)\s*(\d{1,2}):(\d{2})$")


class HoursLineError(ValueError):
    """A line of weekly hours not understood: `key` names its words in portal/i18n.py (both
    languages), `values` fill them; str() is the English, for logs and tests."""

    def __init__(self, key: str, english: str, **values: str) -> None:
        super().__init__(english)
        self.key = key
        self.values = values
        #: The line as typed (set by parse_hours).
        self.line = ""

    def said(self, t: Callable[[str], str]) -> str:
        """The line and what is wrong with it in the user's words, with how to write hours."""
        return f"{self.line}: {t(self.key).format(**self.values)} {t('hours_hint')}"


def parse_hours(text: str) -> list[dict[str, Any]]:
    """Weekly hours, one span per line as people write them (parse_hours_line), blank lines
    skipped. Raises HoursLineError naming the first line not understood."""
    spans = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            spans.append(parse_hours_line(line))
        except HoursLineError as exc:
            exc.line = line
            raise
    return spans


def parse_hours_line(line: str) -> dict[str, Any]:
    """One line of weekly hours as people write it, to a FHIR R4 HealthcareService
    availableTime: `周一至周五 08:00-12:00`, `周二、周四 14:00-17:00`, `mon tue 08:00-12:00`.
    Raises HoursLineError (a ValueError) naming what was not understood."""
    text = " ".join(line.replace("，", " ").replace("、", " ").replace(",", " ").split())
    found = re.search(r"(\d{1,2}:\d{2}\s*(?:-|–|—|~|～|至|到)\s*\d{1,2}:\d{2})$", text)
    if found is None:
        raise HoursLineError("hours_no_time", "no hours such as 08:00-12:00 at the end")
    hours = _HOURS.match(found.group(1))
    assert hours is not None
    h1, m1, h2, m2 = (int(x) for x in hours.groups())
    if not (0 <= h1 < 24 and 0 <= h2 <= 24 and m1 < 60 and m2 < 60):
        raise HoursLineError(
            "hours_bad_time", f"{found.group(1)} is not a time of day", text=found.group(1)
        )
    days: list[str] = []
    named = re.sub(r"\s*(至|到|~|～|–|—|-)\s*", r"\1", text[: found.start()])
    for word in named.split():
        spanned = _RANGE.match(word)
        if spanned and spanned.group(1) in DAY_WORDS and spanned.group(2) in DAY_WORDS:
            first = WEEKDAYS.index(DAY_WORDS[spanned.group(1)])
            last = WEEKDAYS.index(DAY_WORDS[spanned.group(2)])
            if last < first:
                raise HoursLineError(
                    "hours_backwards", f"{word}: the days run backwards", text=word
                )
            days += WEEKDAYS[first : last + 1]
        elif word.lower() in DAY_WORDS:
            days.append(DAY_WORDS[word.lower()])
        else:
            raise HoursLineError("hours_not_a_day", f"{word} is not a day of the week", text=word)
    if not days:
        raise HoursLineError("hours_no_days", "name the days, such as 周一至周五")
    return {
        "daysOfWeek": sorted(set(days), key=WEEKDAYS.index),
        "availableStartTime": f"{h1:02d}:{m1:02d}:00",
        "availableEndTime": f"{h2:02d}:{m2:02d}:00",
    }


def hours_line(span: dict[str, Any], t: Callable[[str], str]) -> str:
    """A HealthcareService availableTime as people write it: `周一至周五 08:00-12:00`
    (a run of three days or more as a range, others listed with 、)."""
    days = sorted(
        (WEEKDAYS.index(d) for d in span.get("daysOfWeek") or [] if d in WEEKDAYS),
    )
    runs: list[list[int]] = []
    for day in days:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    words = [
        f"{t(WEEKDAYS[run[0]])}{t('through')}{t(WEEKDAYS[run[-1]])}"
        if len(run) >= 3
        else t("list_and").join(t(WEEKDAYS[d]) for d in run)
        for run in runs
    ]
    start = str(span.get("availableStartTime", ""))[:5]
    end = str(span.get("availableEndTime", ""))[:5]
    return f"{t('list_and').join(words)} {start}-{end}"
