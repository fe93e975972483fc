"""Parsing a FHIR search (FHIR R4 search.html) into SQL over the index tables.

Every condition is a sub-select on one index table, so filters combine freely and the access
filter a caller adds (`extra_condition`) sits in the same query: results are filtered in the
query, never after it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Select,
    SQLColumnExpression,
    and_,
    false,
    func,
    not_,
    or_,
    select,
)

from alliance.errors import BadRequest, Issue
from alliance.fhir.models import DateIndex, ReferenceIndex, ResourceRow, StringIndex, TokenIndex
from alliance.fhir.registry import Registry, ResourceDefinition
from alliance.fhir.types import Include, SearchParam
from alliance.fhir.types import SearchSpec as SearchSpec  # still imported from here
from alliance.fhir.values import date_range, normalize, parse_reference

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
    spec = SearchSpec(definition.type, count=default_count)

    def refuse(message: str, name: str) -> None:
        if not lenient:
            raise BadRequest(message, expression=[name])
        spec.warnings.append(Issue(f"{message} (ignored)", "not-supported", "warning"))

    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if raw_name in _TRANSPORT_PARAMS:
            continue
        if name in _RESULT_PARAMS:
            _apply_result_param(spec, definition, registry, name, value, max_count, refuse)
            continue
        param = _SPECIAL.get(name) or definition.param(name)
        if param is None:
            refuse(f"unknown search parameter {name!r} for {definition.type}", name)
            continue
        try:
            spec.conditions.append(_condition(definition.type, param, modifier, value, base_url))
        except _Unsupported as exc:
            refuse(str(exc), raw_name)
            continue
        spec.applied.append((raw_name, value))
    return spec


class _Unsupported(Exception):
    pass


def _apply_result_param(
    spec: SearchSpec,
    definition: ResourceDefinition,
    registry: Registry,
    name: str,
    value: str,
    max_count: int,
    refuse: Callable[[str, str], None],
) -> None:
    if name == "_count":
        if not value.isdigit():
            raise BadRequest(f"_count must be a non-negative integer, not {value!r}")
        spec.count = min(int(value), max_count)
        if spec.count == 0:  # asking for no entries is asking for the count
            spec.total = "accurate"
        return
    if name in (PAGE_AFTER, PAGE_OFFSET):
        if name == PAGE_AFTER:
            spec.page_after = value
        elif value.isdigit():
            spec.offset = int(value)
        else:
            raise BadRequest(f"{PAGE_OFFSET} must be a non-negative integer")
        return
    if name == "_sort":
        for key in filter(None, value.split(",")):
            desc = key.startswith("-")
            pname = key.lstrip("-")
            param = _SPECIAL.get(pname) or definition.param(pname)
            if param is None or param.type == "reference":
                refuse(f"cannot sort {definition.type} by {pname!r}", "_sort")
                continue
            spec.order.append((pname, desc))
        spec.applied.append(("_sort", value))
        return
    if name == "_include":
        parts = value.split(":")
        param = definition.param(parts[1]) if len(parts) in (2, 3) else None
        if parts[0] != definition.type or param is None or param.type != "reference":
            refuse(f"_include={value} is not supported on {definition.type}", "_include")
            return
        target = parts[2] if len(parts) == 3 else None
        if target is not None and target not in registry:
            refuse(f"_include target type {target!r} is not supported", "_include")
            return
        spec.includes.append(Include(param, target, value))
        spec.applied.append(("_include", value))
        return
    if name == "_totalMethod":  # Aidbox's spelling, sent by fhirpy's count()
        spec.total = "accurate"
        return
    if name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise BadRequest("_total must be none, estimate or accurate")
        spec.total = value
        spec.applied.append(("_total", value))
        return
    if name == "_summary":
        if value == "count":
            spec.summary_count = True
            spec.applied.append(("_summary", value))
        elif value != "false":
            refuse(f"_summary={value} is not supported (count and false are)", "_summary")
        return


def split_values(value: str) -> list[str]:
    """Comma-separated alternatives (OR), honouring `\\,` escapes (search.html#escaping)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$") for p in parts]


def _owner_ids(
    table: _IndexTable, rtype: str, pname: str, *conds: ColumnElement[bool]
) -> Select[str]:
    return select(table.resource_id).where(
        table.resource_type == rtype, table.param == pname, or_(*conds)
    )


def _condition(
    rtype: str, param: SearchParam, modifier: str, value: str, base_url: str
) -> ColumnElement[bool]:
    values = split_values(value)
    if param.condition is not None:
        if modifier:
            raise _Unsupported(f"modifier :{modifier} is not supported on {param.name}")
        return or_(*(param.condition(v) for v in values))
    if param.name == "_id":
        if modifier:
            raise _Unsupported(f"modifier :{modifier} is not supported on _id")
        return ResourceRow.id.in_(values)
    if param.name == "_lastUpdated":
        if modifier:
            raise _Unsupported(f"modifier :{modifier} is not supported on _lastUpdated")
        col = ResourceRow.last_updated
        return or_(*(date_condition(v, col, col) for v in values))
    if param.type == "token":
        if modifier not in ("", "not"):
            raise _Unsupported(f"modifier :{modifier} is not supported on token {param.name}")
        cond = ResourceRow.id.in_(
            _owner_ids(TokenIndex, rtype, param.name, *(_token(v) for v in values))
        )
        return not_(cond) if modifier == "not" else cond
    if param.type == "string":
        if modifier not in ("", "exact", "contains"):
            raise _Unsupported(f"modifier :{modifier} is not supported on string {param.name}")
        return ResourceRow.id.in_(
            _owner_ids(StringIndex, rtype, param.name, *(_string(v, modifier) for v in values))
        )
    if param.type == "reference":
        if modifier and modifier not in param.targets:
            raise _Unsupported(f"modifier :{modifier} is not supported on {param.name}")
        conds = [_reference(v, modifier or None, param, base_url) for v in values]
        return ResourceRow.id.in_(_owner_ids(ReferenceIndex, rtype, param.name, *conds))
    if param.type == "date":
        if modifier:
            raise _Unsupported(f"modifier :{modifier} is not supported on date {param.name}")
        conds = [date_condition(v, DateIndex.low, DateIndex.high) for v in values]
        return ResourceRow.id.in_(_owner_ids(DateIndex, rtype, param.name, *conds))
    raise AssertionError(param.type)


def _token(value: str) -> ColumnElement[bool]:
    if "|" not in value:
        return TokenIndex.code == value
    system, _, code = value.partition("|")
    if not system:
        return and_(TokenIndex.system.is_(None), TokenIndex.code == code)
    if not code:
        return TokenIndex.system == system
    return and_(TokenIndex.system == system, TokenIndex.code == code)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string(value: str, modifier: str) -> ColumnElement[bool]:
    if modifier == "exact":
        return StringIndex.exact == value
    needle = _like_escape(normalize(value))
    pattern = f"%{needle}%" if modifier == "contains" else f"{needle}%"
    return StringIndex.norm.like(pattern, escape="\\")


def _reference(
    value: str, type_modifier: str | None, param: SearchParam, base_url: str
) -> ColumnElement[bool]:
    parsed = parse_reference(value, base_url)
    if parsed is not None:
        rtype, rid = parsed
        if type_modifier and rtype != type_modifier:
            return false()
        return and_(ReferenceIndex.target_type == rtype, ReferenceIndex.target_id == rid)
    if "/" in value:
        raise BadRequest(f"{value!r} is not a reference to a resource on this server")
    target = type_modifier or (param.targets[0] if len(param.targets) == 1 else None)
    cond = ReferenceIndex.target_id == value
    return and_(ReferenceIndex.target_type == target, cond) if target else cond


def date_condition(
    value: str, low: SQLColumnExpression[datetime], high: SQLColumnExpression[datetime]
) -> ColumnElement[bool]:
    """Prefix semantics of FHIR R4 search.html#prefix over ranges `[low, high)`."""
    prefix = value[:2] if value[:2] in _DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in _DATE_PREFIXES else value
    try:
        lo, hi = date_range(text)
    except ValueError:
        raise BadRequest(f"{value!r} is not a valid date search value") from None
    within = and_(low >= lo, high <= hi)
    if prefix == "eq":
        return within
    if prefix == "ne":
        return not_(within)
    if prefix == "gt":
        return high > hi
    if prefix == "lt":
        return low < lo
    if prefix == "ge":
        return or_(high > hi, within)
    if prefix == "le":
        return or_(low < lo, within)
    if prefix == "sa":
        return low >= hi
    if prefix == "eb":
        return high <= lo
    # ap: within 10% of the distance from now (at least a day), as search.html suggests.
    now = datetime.now(UTC)
    slack = max(abs(now - lo) / 10, timedelta(days=1))
    return and_(low < hi + slack, high > lo - slack)


def sort_key(
    spec: SearchSpec, definition: ResourceDefinition, pname: str, desc: bool
) -> SQLColumnExpression[str] | SQLColumnExpression[datetime]:
    if pname == "_id":
        return ResourceRow.id
    if pname == "_lastUpdated":
        return ResourceRow.last_updated
    param = definition.param(pname)
    assert param is not None
    table: type[StringIndex] | type[DateIndex] | type[TokenIndex]
    column: ColumnElement[str] | ColumnElement[datetime]
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
) -> Select[ResourceRow]:
    """The filtered rows, unordered and unpaged (for counting and for the page query)."""
    query = select(ResourceRow).where(
        ResourceRow.resource_type == spec.resource_type, ResourceRow.deleted.is_(False)
    )
    for cond in spec.conditions:
        query = query.where(cond)
    if extra is not None:
        query = query.where(extra)
    return query


def page_query(
    spec: SearchSpec, definition: ResourceDefinition, extra: ColumnElement[bool] | None
) -> Select[ResourceRow]:
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
