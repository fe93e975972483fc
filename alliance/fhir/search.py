"""Parsing a FHIR search (FHIR R4 search.html) into SQL over the index tables.

Every condition is a sub-select on one index table, so filters combine freely and the access
filter a caller adds (`extra_condition`) sits in the same query: results are filtered in the
query, never after it.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    String,
    and_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from alliance.errors import BadRequest, Issue
from alliance.fhir.models import DateIndex, ReferenceIndex, ResourceRow, StringIndex, TokenIndex
from alliance.fhir.registry import Registry, ResourceDefinition
from alliance.fhir.types import DateValue, Filter, Include, SearchParam, SearchSpec, Token
from alliance.fhir.values import date_range, normalize, parse_reference
from alliance.numbers import MAX_INTEGER, whole_number

#: Parameters the paging links carry; clients should treat them as opaque.
PAGE_AFTER = "_page_after"
PAGE_OFFSET = "_page_offset"

#: Result parameters handled here, and parameters the HTTP layer consumes before us.
_RESULT_PARAMS = {
    "_count",
    "_sort",
    "_include",
    "_total",
    "_totalMethod",
    "_summary",
    PAGE_AFTER,
    PAGE_OFFSET,
}
_TRANSPORT_PARAMS = {"_format", "_pretty"}
_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_SPECIAL = {
    "_id": SearchParam("_id", "token", "id", "Logical id of the resource"),
    "_lastUpdated": SearchParam("_lastUpdated", "date", "meta.lastUpdated", "When last changed"),
}
COMMON_PARAMS = list(_SPECIAL.values())


#: At most this many parameters in one search, and this many values in all (a comma's
#: alternatives count one each): each is a condition of one SQL statement, and beyond a few
#: hundred the database refuses the statement ("expression tree is too large") - a search no
#: client needs, so a 400 that says so rather than a 503 (README, "Limits").
MAX_SEARCH_PARAMS = 100
MAX_SEARCH_VALUES = 200


_IndexTable = type[TokenIndex] | type[StringIndex] | type[ReferenceIndex] | type[DateIndex]


def parse_search(
    definition: ResourceDefinition,
    registry: Registry,
    params: list[tuple[str, str]],
    *,
    base_url: str,
    default_count: int,
    max_count: int,
    lenient: bool = False,
) -> SearchSpec:
    """Parse a search of `definition`'s type: result parameters, and each filter by the grammar
    of its parameter's type. What is not understood is a 400, or with `lenient` (Prefer:
    handling=lenient) left out with a warning."""
    spec = SearchSpec(definition.type, count=default_count)
    if len(params) > MAX_SEARCH_PARAMS:
        raise BadRequest(f"a search takes at most {MAX_SEARCH_PARAMS} parameters")
    if sum(len(split_values(value)) for _, value in params) > MAX_SEARCH_VALUES:
        raise BadRequest(f"a search takes at most {MAX_SEARCH_VALUES} values in all")
    # The Guard refuses a NUL in the address; a POST to _search carries its parameters in the
    # body. No id, code or name holds one, and PostgreSQL cannot compare text that does.
    if any("\x00" in name or "\x00" in value for name, value in params):
        raise BadRequest("a search parameter holds a NUL character (U+0000)")

    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if raw_name in _TRANSPORT_PARAMS:
            continue
        try:
            if name in _RESULT_PARAMS:
                _apply_result_param(spec, definition, registry, name, value, max_count)
            else:
                param = _SPECIAL.get(name) or definition.param(name)
                if param is None:
                    raise _Unsupported(f"unknown search parameter {name!r} for {definition.type}")
                spec.filters.append(parse_filter(param, modifier, value, base_url))
        except _Unsupported as exc:
            if not lenient:
                raise BadRequest(str(exc), expression=[raw_name]) from None
            spec.warnings.append(Issue(f"{exc} (ignored)", "not-supported", "warning"))
            continue
        if name not in _RESULT_PARAMS:  # result parameters add themselves as applied
            spec.applied.append((raw_name, value))
    return spec


class _Unsupported(Exception):
    """A parameter, modifier or value this server does not support (ignored when lenient)."""


def _apply_result_param(
    spec: SearchSpec,
    definition: ResourceDefinition,
    registry: Registry,
    name: str,
    value: str,
    max_count: int,
) -> None:
    if name == "_count":
        spec.count = min(non_negative(value, "_count"), max_count)
        if spec.count == 0:  # asking for no entries is asking for the count
            spec.total = "accurate"
        return
    if name == PAGE_AFTER:
        spec.page_after = value
        return
    if name == PAGE_OFFSET:
        spec.offset = non_negative(value, PAGE_OFFSET)
        return
    if name == "_sort":
        for key in filter(None, value.split(",")):
            desc = key.startswith("-")
            pname = key.lstrip("-")
            param = _SPECIAL.get(pname) or definition.param(pname)
            if param is None or param.type == "reference":
                raise _Unsupported(f"cannot sort {definition.type} by {pname!r}")
            spec.order.append((pname, desc))
        spec.applied.append(("_sort", value))
        return
    if name == "_include":
        parts = value.split(":")
        if len(parts) not in (2, 3) or ":".join(parts[:2]) not in definition.includes:
            raise _Unsupported(f"_include={value} is not supported on {definition.type}")
        param = definition.param(parts[1])
        assert param is not None
        target = parts[2] if len(parts) == 3 else None
        if target is not None and target not in registry:
            raise _Unsupported(f"_include target type {target!r} is not supported")
        spec.includes.append(Include(param, target, value))
        spec.applied.append(("_include", value))
        return
    if name == "_totalMethod":  # Aidbox's spelling, sent by fhirpy's count()
        spec.total = "accurate"
        return
    if name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise BadRequest("_total must be none, estimate or accurate", expression=["_total"])
        spec.total = value
        spec.applied.append(("_total", value))
        return
    if name == "_summary":
        if value == "count":
            spec.summary_count = True
            spec.applied.append(("_summary", value))
        elif value != "false":
            raise _Unsupported(f"_summary={value} is not supported (count and false are)")
        return


def non_negative(value: str, name: str) -> int:
    """A result parameter's integer (`_count`, `_page_offset`, `_page_before`); 400 when it
    is not one from 0 to MAX_INTEGER."""
    number = whole_number(value)
    if number is None:
        raise BadRequest(
            f"{name} must be an integer from 0 to {MAX_INTEGER}, not {value[:40]!r}",
            expression=[name],
        )
    return number


def split_values(value: str) -> list[str]:
    """Comma-separated alternatives (OR), honouring `\\,` escapes (search.html#escaping)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$") for p in parts]


#: Modifiers each parameter type takes (search.html#modifiers); a reference also takes its
#: target types (`subject:Patient`).
_MODIFIERS: dict[str, tuple[str, ...]] = {
    "token": ("", "not"),
    "string": ("", "exact", "contains"),
    "reference": ("",),
    "date": ("",),
}


def parse_filter(param: SearchParam, modifier: str, value: str, base_url: str) -> Filter:
    """One parameter's value by the grammar of its type; a value that cannot be parsed is a
    400 (lenient or not: it is not an unknown parameter but a wrong value)."""
    allowed = _MODIFIERS[param.type]
    if param.type == "reference":
        allowed = (*allowed, *param.targets)
    if param.condition is not None or param.name in _SPECIAL:
        allowed = ("",)
    if modifier not in allowed:
        raise _Unsupported(f"modifier :{modifier} is not supported on {param.name}")
    values = tuple(split_values(value))
    if param.condition is not None or param.name == "_id":
        return Filter(param, modifier, values)
    if param.type == "token":
        return Filter(param, modifier, values, tokens=tuple(_token_value(v) for v in values))
    if param.type == "reference":
        refs = (_reference_value(v, modifier or None, param, base_url) for v in values)
        return Filter(param, modifier, values, references=tuple(r for r in refs if r))
    if param.type == "date":
        return Filter(param, modifier, values, dates=tuple(parse_date(v) for v in values))
    return Filter(param, modifier, values)


def parse_date(value: str) -> DateValue:
    """One date search value with its prefix (search.html#prefix; none means eq). A prefix
    this grammar does not know, or a date that is not one, is a 400."""
    prefix, text = (value[:2], value[2:]) if value[:2] in _DATE_PREFIXES else ("eq", value)
    try:
        low, high = date_range(text)
    except ValueError as exc:
        raise BadRequest(f"{value!r} is not a valid date search value: {exc}") from None
    return DateValue(prefix, low, high)


def parse_dates(value: str) -> list[DateValue]:
    """Every alternative of a date parameter's value (a comma: OR)."""
    return [parse_date(v) for v in split_values(value)]


def _token_value(value: str) -> Token:
    if "|" not in value:
        return Token(None, value)
    system, _, code = value.partition("|")
    return Token(system or None, code or None, no_system=not system)


def _reference_value(
    value: str, type_modifier: str | None, param: SearchParam, base_url: str
) -> tuple[str | None, str] | None:
    parsed = parse_reference(value, base_url)
    if parsed is not None:
        return None if type_modifier and parsed[0] != type_modifier else parsed
    if "/" in value:
        raise BadRequest(f"{value!r} is not a reference to a resource on this server")
    target = type_modifier or (param.targets[0] if len(param.targets) == 1 else None)
    return target, value


# ---- the filters as SQL over the generic index tables -------------------------------------


def _owner_ids(
    table: _IndexTable, rtype: str, pname: str, *conds: ColumnElement[bool]
) -> Select[str]:
    return select(table.resource_id).where(
        table.resource_type == rtype, table.param == pname, or_(false(), *conds)
    )


def filter_condition(rtype: str, f: Filter) -> ColumnElement[bool]:
    """A filter as a condition on `ResourceRow` of a generically kept type."""
    param = f.param
    if param.condition is not None:
        return or_(*(param.condition(v) for v in f.values))
    if param.name == "_id":
        return ResourceRow.id.in_(f.values)
    if param.name == "_lastUpdated":
        col = ResourceRow.last_updated
        return or_(*(d.condition(col, col) for d in f.dates))
    if param.type == "token":
        cond = ResourceRow.id.in_(
            _owner_ids(TokenIndex, rtype, param.name, *(_token(t) for t in f.tokens))
        )
        return not_(cond) if f.modifier == "not" else cond
    if param.type == "string":
        conds = (_string(v, f.modifier) for v in f.values)
        return ResourceRow.id.in_(_owner_ids(StringIndex, rtype, param.name, *conds))
    if param.type == "reference":
        conds = (_reference(t, i) for t, i in f.references)
        return ResourceRow.id.in_(_owner_ids(ReferenceIndex, rtype, param.name, *conds))
    if param.type == "date":
        conds = (d.condition(DateIndex.low, DateIndex.high) for d in f.dates)
        return ResourceRow.id.in_(_owner_ids(DateIndex, rtype, param.name, *conds))
    raise AssertionError(param.type)


def _token(token: Token) -> ColumnElement[bool]:
    conds: list[ColumnElement[bool]] = []
    if token.no_system:
        conds.append(TokenIndex.system.is_(None))
    elif token.system is not None:
        conds.append(TokenIndex.system == token.system)
    if token.code is not None:
        conds.append(TokenIndex.code == token.code)
    return and_(*conds)


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def string_pattern(value: str, modifier: str) -> str:
    """The LIKE pattern (escape `\\`) of a string search value over its normalised form:
    starts with by default, anywhere with `:contains` (search.html#string)."""
    needle = like_escape(normalize(value))
    return f"%{needle}%" if modifier == "contains" else f"{needle}%"


def _string(value: str, modifier: str) -> ColumnElement[bool]:
    if modifier == "exact":
        return StringIndex.exact == value
    like = StringIndex.norm.like(string_pattern(value, modifier), escape="\\")
    prefix = normalize(value)
    after = _after_prefix(prefix)
    if modifier == "contains" or after is None:
        return like
    return and_(_PrefixRange(StringIndex.norm.expression, prefix, after), like)


def _after_prefix(prefix: str) -> str | None:
    """The least string after every string that starts with `prefix`, in code point order
    (UTF-8's byte order): its last character's successor. None when there is none to take
    (an empty prefix, or one ending in U+10FFFF)."""
    if not prefix or prefix[-1] == "\U0010ffff":
        return None
    following = ord(prefix[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters: past them
        following = 0xE000
    return prefix[:-1] + chr(following)


class _PrefixRange(ColumnElement[bool]):
    """`low <= column < high`, compared byte by byte: the range of the prefix a starts-with
    search looks for, which the index on (resource_type, param, norm) reads directly.

    The LIKE beside it is not enough on PostgreSQL: its pattern is a bound parameter, and once
    psycopg prepares the statement (its fifth execution) the server plans it without knowing
    the pattern (a generic plan), so it cannot take the prefix's index range and reads every
    value of the parameter (measured: 11 ms for a name search over 19,000 names, against
    2 ms). Bounds of their own are parameters the generic plan does use. On PostgreSQL they
    are the operators of the index's `varchar_pattern_ops` (`~>=~`, `~<~`); SQLite compares
    text byte by byte already (BINARY)."""

    type = Boolean()
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (declared so by SQLAlchemy)
        ("column", InternalTraversal.dp_clauseelement),
        ("low", InternalTraversal.dp_clauseelement),
        ("high", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[str], low: str, high: str) -> None:
        self.column = column
        self.low = literal(low, String())
        self.high = literal(high, String())

    def self_group(self, against: Any = None) -> ColumnElement[Any]:
        return self  # compiled in parentheses, and a comparison: no "= 1" on SQLite


def _range_sql(
    element: _PrefixRange, compiler: SQLCompiler, at_least: str, below: str, **kw: Any
) -> str:
    column, low, high = (
        compiler.process(e, **kw) for e in (element.column, element.low, element.high)
    )
    return f"({column} {at_least} {low} AND {column} {below} {high})"


@compiles(_PrefixRange)
def _prefix_range(element: _PrefixRange, compiler: SQLCompiler, **kw: Any) -> str:
    return _range_sql(element, compiler, ">=", "<", **kw)


@compiles(_PrefixRange, "postgresql")
def _prefix_range_postgresql(element: _PrefixRange, compiler: SQLCompiler, **kw: Any) -> str:
    return _range_sql(element, compiler, "~>=~", "~<~", **kw)


def _reference(target_type: str | None, target_id: str) -> ColumnElement[bool]:
    cond = ReferenceIndex.target_id == target_id
    return and_(ReferenceIndex.target_type == target_type, cond) if target_type else cond


def sort_key(spec: SearchSpec, definition: ResourceDefinition, pname: str, desc: bool) -> Any:
    if pname == "_id":
        return ResourceRow.id
    if pname == "_lastUpdated":
        return ResourceRow.last_updated
    param = definition.param(pname)
    assert param is not None
    table: Any
    column: Any
    if param.type == "string":
        table, column = StringIndex, func.min(StringIndex.norm)
    elif param.type == "date":
        table = DateIndex
        column = func.max(DateIndex.high) if desc else func.min(DateIndex.low)
    else:
        table, column = TokenIndex, func.min(TokenIndex.code)
    return (
        select(column)
        .where(
            table.resource_type == spec.resource_type,
            table.resource_id == ResourceRow.id,
            table.param == pname,
        )
        .scalar_subquery()
    )


def matching_rows(
    spec: SearchSpec, definition: ResourceDefinition, extra: ColumnElement[bool] | None
) -> Select[Any]:
    """The filtered rows, unordered and unpaged (for counting and for the page query)."""
    query = select(ResourceRow).where(
        ResourceRow.resource_type == spec.resource_type, ResourceRow.deleted.is_(False)
    )
    for f in spec.filters:
        query = query.where(filter_condition(spec.resource_type, f))
    if extra is not None:
        query = query.where(extra)
    return query


def page_query(
    spec: SearchSpec, definition: ResourceDefinition, extra: ColumnElement[bool] | None
) -> Select[Any]:
    """One page: keyset on id when no `_sort` is asked (stable under concurrent writes),
    otherwise ordered by the sort keys with the id as tie-breaker and an offset."""
    query = matching_rows(spec, definition, extra)
    if not spec.order:
        if spec.page_after is not None:
            query = query.where(ResourceRow.id > spec.page_after)
        return query.order_by(ResourceRow.id).limit(spec.count)
    keys = []
    for pname, desc in spec.order:
        key = sort_key(spec, definition, pname, desc)
        keys.append(key.desc().nulls_last() if desc else key.asc().nulls_last())
    return query.order_by(*keys, ResourceRow.id).offset(spec.offset).limit(spec.count)
