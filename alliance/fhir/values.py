"""Turning FHIR element values into index values and search values into comparable ones.

Shared by indexing (what a resource holds) and search (what a client asks), so both sides of
every comparison are normalised the same way (FHIR R4 search.html, "Search parameter types").
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from pypinyin import lazy_pinyin

from alliance.clock import BEIJING as CIVIL_TZ  # dates written without a zone are Beijing time

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

#: Separators inside a name's full text: the middle dot that joins Uyghur and Kazakh name parts
#: in Chinese characters (U+00B7), its look-alikes, and white space.
_NAME_PARTS = re.compile(r"[\s\u00b7\u30fb\u2022\u2027\uff0e.]+")

STRING_INDEX_LEN = 255
#: How normalised strings write the separator between words and name parts.
NAME_SEPARATOR = "\u00b7"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def normalize(text: str) -> str:
    """Case- and accent-insensitive form (FHIR string search): NFKD, marks dropped, casefold;
    and every run of separators between words or name parts (white space, '.', '•', the
    middle dot '·' and its look-alikes) written as one '·', so 阿依古丽 努尔兰, 阿依古丽.努尔兰
    and 阿依古丽·努尔兰 are one name to search."""
    return _NAME_PARTS.sub(NAME_SEPARATOR, fold(text))


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, marks dropped, casefold (separators kept as
    written; DICOM person names, QIDO-RS, compare this way)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped).casefold()[:STRING_INDEX_LEN]


def pinyin_forms(text: str) -> list[str]:
    """How people type a name written in Chinese characters with a Latin keyboard (拼音,
    GB/T 28039): the syllables run together (wangjianguo), their initials (wjg), and the
    syllables apart (wang·jian·guo), each name part kept apart by '·'. None for a name
    without Chinese characters."""
    if not _HAN.search(text):
        return []
    parts = [p for p in _NAME_PARTS.split(text) if p]
    syllables = [[s for s in lazy_pinyin(part, errors="default") if s.strip()] for part in parts]
    forms = {
        NAME_SEPARATOR.join("".join(part) for part in syllables),
        NAME_SEPARATOR.join("".join(s[0] for s in part) for part in syllables),
        NAME_SEPARATOR.join(s for part in syllables for s in part),
    }
    return sorted(f for f in forms if f and f != text)


def date_range(value: str) -> tuple[datetime, datetime]:
    """The instants `[low, high)` a FHIR date, dateTime or instant covers (precision-aware).
    A value whose range leaves what Python's datetime holds in UTC (0001-01-01 in Beijing time
    is still year 0 in UTC; the day after 9999-12-31 is year 10000) is a ValueError like any
    other date that is not one, so every caller refuses it as bad input."""
    try:
        return _date_range(value)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the representable range of dates") from None


def _date_range(value: str) -> tuple[datetime, datetime]:
    m = _DATE_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a FHIR date or dateTime")
    y = int(m["y"])
    tz = _zone(m["tz"])
    if m["m"] is None:
        low = datetime(y, 1, 1, tzinfo=tz)
        return _utc(low), _utc(datetime(y + 1, 1, 1, tzinfo=tz))
    mo = int(m["m"])
    if m["d"] is None:
        low = datetime(y, mo, 1, tzinfo=tz)
        high = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=tz)
        return _utc(low), _utc(high)
    d = int(m["d"])
    if m["H"] is None:
        low = datetime(y, mo, d, tzinfo=tz)
        return _utc(low), _utc(low + timedelta(days=1))
    if m["S"] is None:
        low = datetime(y, mo, d, int(m["H"]), int(m["M"]), tzinfo=tz)
        return _utc(low), _utc(low + timedelta(minutes=1))
    micro = round(float(m["f"]) * 1_000_000) if m["f"] else 0
    low = datetime(y, mo, d, int(m["H"]), int(m["M"]), int(m["S"]), min(micro, 999_999), tz)
    step = timedelta(microseconds=1) if m["f"] else timedelta(seconds=1)
    return _utc(low), _utc(low + step)


def _zone(tz: str | None) -> tzinfo:
    if tz is None:
        return CIVIL_TZ
    if tz == "Z":
        return UTC
    sign = 1 if tz[0] == "+" else -1
    hours, minutes = int(tz[1:3]), int(tz[4:6])

    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def instant(value: datetime) -> str:
    """An instant as FHIR writes it: UTC with milliseconds, e.g. 2026-11-29T08:00:00.123Z."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- what an element holds, per search parameter type -------------------------------------


def strings_of(element: object) -> list[tuple[str, bool]]:
    """String-search values of an element (string, HumanName, Address, ...), each with whether
    it is a value of the element (True) or only a part derived from one (False)."""
    if isinstance(element, str):
        return [(element, True)]
    if not isinstance(element, dict):
        return []
    values: list[tuple[str, bool]] = []
    is_name = any(k in element for k in ("family", "given", "prefix", "suffix")) or (
        "text" in element and "line" not in element and "city" not in element
    )
    keys = (
        ("text", "family", "given", "prefix", "suffix")
        if is_name
        else ("text", "line", "city", "district", "state", "postalCode", "country", "value")
    )
    for key in keys:
        v = element.get(key)
        values.extend(
            (x, True) for x in ([v] if isinstance(v, str) else v or []) if isinstance(x, str)
        )
    text = element.get("text")
    if is_name and isinstance(text, str):
        # Each part of a name written only as text (阿依古丽·努尔兰), so a search for one part
        # finds it; parts are not values of the element, so :exact does not match them.
        parts = [p for p in _NAME_PARTS.split(text) if p]
        if len(parts) > 1:
            values.extend((p, False) for p in parts)
        # And as typed in pinyin, whole and by part (derived: never :exact).
        values.extend((form, False) for form in pinyin_forms(text))
        for part in parts if len(parts) > 1 else []:
            values.extend((form, False) for form in pinyin_forms(part))
    return values


def tokens_of(element: object) -> list[tuple[str | None, str]]:
    """(system, code) pairs of an element (code, Coding, CodeableConcept, Identifier, ...)."""
    if isinstance(element, bool):
        return [(None, "true" if element else "false")]
    if isinstance(element, str):
        return [(None, element)]
    if not isinstance(element, dict):
        return []
    if "coding" in element:
        return [t for c in element["coding"] or [] for t in tokens_of(c)]
    code = element.get("code", element.get("value"))
    if isinstance(code, str):
        system = element.get("system")
        return [(system if isinstance(system, str) else None, code)]
    return []


def reference_of(element: object, base_url: str) -> tuple[str, str] | None:
    """(type, id) of a Reference to a resource on this server, else None."""
    if not isinstance(element, dict):
        return None
    ref = element.get("reference")
    if not isinstance(ref, str):
        return None
    return parse_reference(ref, base_url)


def parse_reference(ref: str, base_url: str) -> tuple[str, str] | None:
    """`Type/id`, `Type/id/_history/n`, or an absolute URL under this server's FHIR base."""
    if ref.startswith(("http://", "https://")):
        prefix = base_url.rstrip("/") + "/"
        if not ref.startswith(prefix):
            return None
        ref = ref[len(prefix) :]
    parts = ref.split("/")
    if len(parts) >= 2 and parts[0][:1].isupper() and parts[1]:
        return parts[0], parts[1]
    return None


def elements_at(resource: object, path: str) -> list[object]:
    """Every value found at a dotted path, flattening lists on the way."""
    current = [resource]
    for step in path.split("."):
        nxt: list[object] = []
        for item in current:
            if isinstance(item, dict) and step in item:
                value = item[step]
                nxt.extend(value if isinstance(value, list) else [value])
        current = nxt
    return current
