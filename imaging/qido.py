"""QIDO-RS (PS3.18 10.6): matching keys to SQL over the index, and results as DICOM JSON.

Matching follows PS3.4 C.2.2.2: single value, `*`/`?` wildcards, UID lists (comma or
backslash separated), date and time ranges (`a-b`, `-b`, `a-`), empty value = universal match
(the attribute is returned). PatientName matches case- and accent-insensitively against each
component group (alphabetic, ideographic, phonetic); with `fuzzymatching=true` a value also
matches the start of any name component (so `努尔兰` finds `阿依古丽·努尔兰`, `jian` finds
`Wang^Jianguo`). Unknown or unsupported keys are ignored with a `Warning: 299` header as PS3.18
8.3.4.1 asks. Results are limited to what the caller may see (imaging.service).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, exists, or_, select
from sqlalchemy.orm import QueryableAttribute, Session, aliased

from alliance.errors import BadRequest
from alliance.fhir.values import fold
from alliance.numbers import MAX_INTEGER, whole_number
from imaging.models import Instance, Series, Study

Level = Literal["study", "series", "instance"]
MAX_LIMIT = 1000
_LEVELS: dict[Level, int] = {"study": 0, "series": 1, "instance": 2}
_DATE = re.compile(r"\d{8}")
_ESCAPE = "\\"


@dataclass(frozen=True)
class Attr:
    tag: str
    keyword: str
    vr: str
    level: Level
    #: The index column it matches; Any because mypy reads a mapped attribute held in a
    #: dataclass field through its descriptor (as the column's value, not the column).
    column: Any = None
    #: How a value is matched: exact/wildcard string, UID list, date/time range, integer,
    #: a PatientName, ModalitiesInStudy, or not matchable (returned only).
    match: str = "string"
    default: bool = True


ATTRS: list[Attr] = [
    Attr("00080020", "StudyDate", "DA", "study", Study.study_date, "range"),
    Attr("00080030", "StudyTime", "TM", "study", Study.study_time, "range"),
    Attr("00080050", "AccessionNumber", "SH", "study", Study.accession_number),
    Attr("00080056", "InstanceAvailability", "CS", "study", None, "none"),
    Attr("00080061", "ModalitiesInStudy", "CS", "study", None, "modalities"),
    Attr("00080090", "ReferringPhysicianName", "PN", "study", Study.referring_physician_name),
    Attr("00080201", "TimezoneOffsetFromUTC", "SH", "study", Study.timezone_offset),
    Attr("00081030", "StudyDescription", "LO", "study", Study.study_description),
    Attr("00100010", "PatientName", "PN", "study", Study.patient_name, "name"),
    Attr("00100020", "PatientID", "LO", "study", Study.dicom_patient_id),
    Attr("00100021", "IssuerOfPatientID", "LO", "study", Study.issuer_of_patient_id),
    Attr("00100030", "PatientBirthDate", "DA", "study", Study.patient_birth_date, "range"),
    Attr("00100040", "PatientSex", "CS", "study", Study.patient_sex),
    Attr("0020000D", "StudyInstanceUID", "UI", "study", Study.study_uid, "uids"),
    Attr("00200010", "StudyID", "SH", "study", Study.study_id),
    Attr("00201206", "NumberOfStudyRelatedSeries", "IS", "study", Study.number_of_series, "none"),
    Attr(
        "00201208",
        "NumberOfStudyRelatedInstances",
        "IS",
        "study",
        Study.number_of_instances,
        "none",
    ),
    Attr("00080060", "Modality", "CS", "series", Series.modality, "uids"),
    Attr("0008103E", "SeriesDescription", "LO", "series", Series.series_description),
    Attr("00080021", "SeriesDate", "DA", "series", Series.series_date, "range"),
    Attr("00080031", "SeriesTime", "TM", "series", Series.series_time, "range"),
    Attr("00180015", "BodyPartExamined", "CS", "series", Series.body_part_examined),
    Attr("0020000E", "SeriesInstanceUID", "UI", "series", Series.series_uid, "uids"),
    Attr("00200011", "SeriesNumber", "IS", "series", Series.series_number, "int"),
    Attr(
        "00201209",
        "NumberOfSeriesRelatedInstances",
        "IS",
        "series",
        Series.number_of_instances,
        "none",
    ),
    Attr("00080016", "SOPClassUID", "UI", "instance", Instance.sop_class_uid, "uids"),
    Attr("00080018", "SOPInstanceUID", "UI", "instance", Instance.sop_instance_uid, "uids"),
    Attr("00200013", "InstanceNumber", "IS", "instance", Instance.instance_number, "int"),
    Attr("00280010", "Rows", "US", "instance", Instance.rows, "int"),
    Attr("00280011", "Columns", "US", "instance", Instance.columns, "int"),
    Attr("00280008", "NumberOfFrames", "IS", "instance", Instance.number_of_frames, "int"),
    Attr(
        "00083002",
        "AvailableTransferSyntaxUID",
        "UI",
        "instance",
        Instance.transfer_syntax_uid,
        "uids",
    ),
]
_BY_TAG = {a.tag: a for a in ATTRS}
_BY_KEYWORD = {a.keyword: a for a in ATTRS}
_CONTROL = frozenset({"limit", "offset", "fuzzymatching", "includefield", "_"})


def level_at_most(attr_level: Level, level: Level) -> bool:
    """Whether an attribute of `attr_level` may be matched in a query at `level` (a series
    query matches study and series attributes, not instance ones)."""
    return _LEVELS[attr_level] <= _LEVELS[level]


def lookup(key: str) -> Attr | None:
    """An attribute by keyword or by tag (`00100010`, also `0010,0010`)."""
    found = _BY_KEYWORD.get(key)
    if found is not None:
        return found
    tag = key.replace(",", "").replace("(", "").replace(")", "").upper()
    return _BY_TAG.get(tag)


def _known_dicom_key(key: str) -> bool:
    try:
        if tag_for_keyword(key) is not None:
            return True
        return keyword_for_tag(int(key.replace(",", ""), 16)) != ""
    except (ValueError, TypeError, OverflowError):
        return False


@dataclass
class Query:
    level: Level
    conditions: list[ColumnElement[bool]]
    include: set[str]
    include_all: bool
    limit: int
    offset: int
    warnings: list[str] = field(default_factory=list)


def parse_query(params: list[tuple[str, str]], level: Level) -> Query:
    """The matching conditions and return keys of a QIDO-RS query string (PS3.18 8.3.4)."""
    fuzzy = False
    include: set[str] = set()
    include_all = False
    limit, offset = MAX_LIMIT, 0
    by_attr: dict[str, list[str]] = {}
    warnings: list[str] = []
    for key, value in params:
        if key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
        elif key == "limit":
            limit = _non_negative(key, value)
            if limit > MAX_LIMIT:
                warnings.append(f"limit capped at {MAX_LIMIT}")
                limit = MAX_LIMIT
        elif key == "offset":
            offset = _non_negative(key, value)
        elif key == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    include_all = True
                    continue
                attr = lookup(item)
                if attr is not None:
                    include.add(attr.tag)
                elif not _known_dicom_key(item):
                    raise BadRequest(f"includefield {item!r} is not a DICOM attribute")
        elif key in _CONTROL:
            continue
        else:
            attr = lookup(key)
            if attr is None:
                if not _known_dicom_key(key):
                    raise BadRequest(f"{key!r} is not a DICOM attribute or QIDO-RS parameter")
                warnings.append(f"{key} is not supported for matching and was ignored")
                continue
            if not level_at_most(attr.level, level):
                raise BadRequest(f"{attr.keyword} cannot be matched in a {level} query")
            by_attr.setdefault(attr.tag, []).append(value)
    conditions: list[ColumnElement[bool]] = []
    for tag, values in by_attr.items():
        attr = _BY_TAG[tag]
        include.add(tag)  # matching keys are returned (PS3.4 C.2.2.1)
        for value in values:
            cond = _condition(attr, value, fuzzy)
            if cond is not None:
                conditions.append(cond)
    return Query(level, conditions, include, include_all, limit, offset, warnings)


def _non_negative(key: str, value: str) -> int:
    """`limit` or `offset`: what the database's integer columns hold (MAX_INTEGER)."""
    number = whole_number(value)
    if number is None:
        raise BadRequest(f"{key} must be an integer from 0 to {MAX_INTEGER}, not {value[:40]!r}")
    return number


def _condition(attr: Attr, value: str, fuzzy: bool) -> ColumnElement[bool] | None:
    value = value.strip()
    if value == "" or value == "*" or attr.match == "none":
        return None  # universal matching
    if attr.match == "modalities":
        values = [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]
        # Its own alias of Series: at the series and instance levels Series is already in the
        # outer query, and an exists() over it would correlate away its only FROM.
        other = aliased(Series)
        return exists().where(other.study_uid == Study.study_uid, other.modality.in_(values))
    if attr.match == "name":
        return _name(value, fuzzy)
    column: QueryableAttribute[object] = attr.column
    assert column is not None, f"{attr.keyword} is matched on a column"
    if attr.match == "uids":
        values = [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]
        return column.in_(values)
    if attr.match == "int":
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"{attr.keyword} matches an integer, not {value!r}") from None
        if abs(number) > MAX_INTEGER:
            raise BadRequest(f"{attr.keyword} matches an integer up to {MAX_INTEGER}")
        return column == number
    if attr.match == "range":
        return _range(attr, column, value)
    return _string(column, value)


def _range(attr: Attr, column: QueryableAttribute[object], value: str) -> ColumnElement[bool]:
    if attr.vr == "DA":  # dates as some clients write them, 2026-01-02, made YYYYMMDD
        value = re.sub(r"(\d{4})-(\d{2})-(\d{2})", r"\1\2\3", value)
    low, sep, high = value.partition("-")
    if attr.vr == "DA":
        for part in (low, high):
            if part and not _DATE.fullmatch(part):
                raise BadRequest(f"{attr.keyword} takes dates as YYYYMMDD, or a range of them")
    elif any(part and not re.fullmatch(r"\d{2,6}(\.\d{1,6})?", part) for part in (low, high)):
        raise BadRequest(f"{attr.keyword} takes times as HHMMSS, or a range of them")
    if not sep:
        if attr.vr == "TM":
            return column.like(_escape(low) + "%", escape=_ESCAPE)
        return column == low
    conds = []
    if low:
        conds.append(column >= low)
    if high:
        # A time range's upper bound covers everything within it (101500 covers 101500.99).
        conds.append(column <= (high + "\uffff" if attr.vr == "TM" else high))
    if not conds:
        raise BadRequest(f"{attr.keyword}: a range needs at least one end")
    return and_(*conds)


def _escape(text: str) -> str:
    return text.replace(_ESCAPE, _ESCAPE * 2).replace("%", "\\%").replace("_", "\\_")


def _like(pattern: str) -> str:
    return _escape(pattern).replace("*", "%").replace("?", "_")


def _string(column: QueryableAttribute[object], value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return column.like(_like(value), escape=_ESCAPE)
    return column == value


def _name(value: str, fuzzy: bool) -> ColumnElement[bool]:
    groups = value.split("=")
    columns = (Study.name_alphabetic, Study.name_ideographic, Study.name_phonetic)
    if len(groups) > 1:
        conds = [
            _name_group(col, fold(g), fuzzy)
            for col, g in zip(columns, groups, strict=False)
            if g.strip()
        ]
        return and_(*conds)
    folded = fold(value)
    return or_(*(_name_group(col, folded, fuzzy) for col in columns))


def _name_group(
    column: QueryableAttribute[object], pattern: str, fuzzy: bool
) -> ColumnElement[bool]:
    wild = "*" in pattern or "?" in pattern
    like = _like(pattern)
    if not fuzzy:
        if wild:
            return column.like(like, escape=_ESCAPE)
        return column == pattern
    body = like if wild else like + "%"
    # Any component, or any part of one joined by a space or the middle dot, may start it.
    return or_(
        *(
            column.like(prefix + body, escape=_ESCAPE)
            for prefix in ("", "%^", "% ", "%\u00b7", "%=")
        )
    )


# ---- results -------------------------------------------------------------------------------


def pn_json(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    names = ("Alphabetic", "Ideographic", "Phonetic")
    parts = value.split("=")
    found = {names[i]: p for i, p in enumerate(parts[:3]) if p}
    return found or None


def _element(attr: Attr, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": attr.vr}
    if attr.vr == "PN":
        pn = pn_json(str(value))
        return {"vr": "PN", "Value": [pn]} if pn else {"vr": "PN"}
    if attr.vr in ("IS", "US"):
        return {"vr": attr.vr, "Value": [int(value)]}
    if attr.vr == "CS" and isinstance(value, str) and "\\" in value:
        return {"vr": "CS", "Value": value.split("\\")}
    return {"vr": attr.vr, "Value": [value]}


def _wanted(query: Query, attr: Attr, scoped_levels: set[Level]) -> bool:
    if attr.level in scoped_levels and attr.tag not in ("0020000D", "0020000E"):
        return False
    if _LEVELS[attr.level] > _LEVELS[query.level]:
        return False
    if query.include_all or attr.tag in query.include:
        return True
    if not attr.default:
        return False
    # Defaults (PS3.18 10.6.3.3): the level's own attributes; for series and instance
    # queries not scoped to a study (or series), those of the levels above too.
    return attr.level == query.level or attr.level not in scoped_levels


def study_json(
    study: Study, query: Query, base: str, scoped: set[Level] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    scoped = scoped or set()
    for attr in ATTRS:
        if attr.level != "study" or not _wanted(query, attr, scoped):
            continue
        if attr.tag == "00080061":
            out[attr.tag] = _element(attr, study.modalities)
        elif attr.tag == "00080056":
            out[attr.tag] = {"vr": "CS", "Value": ["ONLINE"]}
        else:
            out[attr.tag] = _element(attr, getattr(study, attr.column.key))
    if query.level == "study":
        out["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study.study_uid}"]}
    return out


def series_json(
    series: Series, study: Study, query: Query, base: str, scoped: set[Level]
) -> dict[str, Any]:
    out = study_json(study, query, base, scoped) if "study" not in scoped else {}
    out["0020000D"] = {"vr": "UI", "Value": [study.study_uid]}
    for attr in ATTRS:
        if attr.level == "series" and _wanted(query, attr, scoped):
            out[attr.tag] = _element(attr, getattr(series, attr.column.key))
    if query.level == "series":
        url = f"{base}/studies/{study.study_uid}/series/{series.series_uid}"
        out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def instance_json(
    instance: Instance,
    series: Series,
    study: Study,
    query: Query,
    base: str,
    scoped: set[Level],
) -> dict[str, Any]:
    out = series_json(series, study, query, base, scoped)
    out["0020000E"] = {"vr": "UI", "Value": [series.series_uid]}
    for attr in ATTRS:
        if attr.level == "instance" and _wanted(query, attr, scoped):
            out[attr.tag] = _element(attr, getattr(instance, attr.column.key))
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    url = (
        f"{base}/studies/{study.study_uid}/series/{series.series_uid}"
        f"/instances/{instance.sop_instance_uid}"
    )
    out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def ordered_studies(query: Select[Study]) -> Select[Study]:
    return query.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.study_uid)


# ---- the searches ----------------------------------------------------------------------------


@dataclass
class Results:
    """A page of QIDO-RS results, and the studies they come from (for the audit trail)."""

    body: list[dict[str, Any]]
    studies: list[Study]


def _unique(studies: Iterable[Study]) -> list[Study]:
    seen: dict[str, Study] = {}
    for s in studies:
        seen.setdefault(s.study_uid, s)
    return list(seen.values())


def search_studies(session: Session, visible: Select[Study], query: Query, base: str) -> Results:
    """Studies among `visible` (imaging.access) that match the query (PS3.18 10.6.1.2.1)."""
    rows = list(
        session.scalars(
            ordered_studies(visible.where(*query.conditions))
            .limit(query.limit)
            .offset(query.offset)
        )
    )
    return Results([study_json(s, query, base) for s in rows], rows)


def search_series(
    session: Session, visible: Select[Study], query: Query, base: str, study_uid: str | None
) -> Results:
    """Series of the `visible` studies (of one study, if named) that match the query."""
    scoped: set[Level] = {"study"} if study_uid else set()
    if study_uid is not None:
        visible = visible.where(Study.study_uid == study_uid)
    sub = visible.with_only_columns(Study.study_uid).subquery()
    statement = (
        select(Series, Study)
        .join(Study, Study.study_uid == Series.study_uid)
        .where(Series.study_uid.in_(select(sub.c.study_uid)), *query.conditions)
        .order_by(Study.study_uid, Series.series_number, Series.series_uid)
        .limit(query.limit)
        .offset(query.offset)
    )
    rows = list(session.execute(statement))
    body = [series_json(se, st, query, base, scoped) for se, st in rows]
    return Results(body, _unique(st for _, st in rows))


def search_instances(
    session: Session,
    visible: Select[Study],
    query: Query,
    base: str,
    study_uid: str | None,
    series_uid: str | None,
) -> Results:
    """Instances of the `visible` studies (of one study or series, if named) that match."""
    scoped: set[Level] = set()
    if study_uid:
        scoped.add("study")
    if series_uid:
        scoped.add("series")
    if study_uid is not None:
        visible = visible.where(Study.study_uid == study_uid)
    sub = visible.with_only_columns(Study.study_uid).subquery()
    statement = (
        select(Instance, Series, Study)
        .join(Series, Series.series_uid == Instance.series_uid)
        .join(Study, Study.study_uid == Instance.study_uid)
        .where(Instance.study_uid.in_(select(sub.c.study_uid)), *query.conditions)
    )
    if series_uid is not None:
        statement = statement.where(Instance.series_uid == series_uid)
    statement = (
        statement.order_by(
            Study.study_uid,
            Series.series_number,
            Series.series_uid,
            Instance.instance_number,
            Instance.sop_instance_uid,
        )
        .limit(query.limit)
        .offset(query.offset)
    )
    rows = list(session.execute(statement))
    body = [instance_json(i, se, st, query, base, scoped) for i, se, st in rows]
    return Results(body, _unique(st for _, _, st in rows))
