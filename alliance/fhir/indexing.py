"""Search-index rows for the current version of a resource (FHIR R4 search.html)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from alliance.errors import BadRequest
from alliance.fhir.models import DateIndex, ReferenceIndex, StringIndex, TokenIndex
from alliance.fhir.registry import ResourceDefinition
from alliance.fhir.types import Resource, SearchParam
from alliance.fhir.values import (
    date_range,
    elements_at,
    normalize,
    reference_of,
    strings_of,
    tokens_of,
)

#: The token index's system column (alliance.fhir.models.TokenIndex): a longer system is
#: refused rather than cut, since a cut one could match another system.
TOKEN_SYSTEM_LEN = 255

DATE_MIN = datetime(1, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(9999, 12, 31, tzinfo=UTC)

IndexTable = type[TokenIndex] | type[StringIndex] | type[ReferenceIndex] | type[DateIndex]
INDEX_TABLES: tuple[IndexTable, ...] = (TokenIndex, StringIndex, ReferenceIndex, DateIndex)
#: A resource's index rows: each table's rows, as the values of their columns.
IndexRows = dict[IndexTable, list[dict[str, Any]]]


def index_rows(
    definition: ResourceDefinition, resource_id: str, resource: Resource, base_url: str
) -> IndexRows:
    rows: IndexRows = {}
    for param in definition.search_params:
        for element in elements_at(resource, param.path):
            table, values = _rows_for(definition.type, resource_id, param, element, base_url)
            if values:
                rows.setdefault(table, []).extend(values)
    return rows


def insert_index_rows(session: Session, rows: IndexRows) -> None:
    """Write `rows` in the session's transaction: one INSERT per table, executed with the list
    of its rows (Core). They are plain values, never read back as objects, so they need none
    of the ORM's bookkeeping per row (measured: a Patient's twenty rows were a quarter of the
    server's time per create)."""
    for table, values in rows.items():
        if values:
            session.execute(insert(cast(Table, table.__table__)), values)


def _rows_for(
    rtype: str, rid: str, param: SearchParam, element: object, base_url: str
) -> tuple[IndexTable, list[dict[str, Any]]]:
    common = {"resource_type": rtype, "resource_id": rid, "param": param.name}
    if param.type == "token":
        for system, _code in tokens_of(element):
            if system is not None and len(system) > TOKEN_SYSTEM_LEN:
                raise BadRequest(
                    f"a system of {rtype}.{param.path} is longer than {TOKEN_SYSTEM_LEN} "
                    "characters; this server indexes systems up to that length",
                    expression=[f"{rtype}.{param.path}"],
                )
        return TokenIndex, [
            {**common, "system": system, "code": code[:255]}
            for system, code in dict.fromkeys(tokens_of(element))
        ]
    if param.type == "string":
        return StringIndex, [
            {**common, "norm": normalize(s), "exact": s[:1024] if whole else None}
            for s, whole in dict.fromkeys(strings_of(element))
        ]
    if param.type == "reference":
        ref = reference_of(element, base_url)
        if ref is None or (param.targets and ref[0] not in param.targets):
            return ReferenceIndex, []
        return ReferenceIndex, [{**common, "target_type": ref[0], "target_id": ref[1]}]
    if param.type == "date":
        try:
            span = _date_span(element)
        except ValueError as exc:  # valid FHIR, but beyond the instants the index holds
            where = f"{rtype}.{param.path}"
            raise BadRequest(f"{where}: {exc}", expression=[where]) from None
        return DateIndex, [{**common, "low": span[0], "high": span[1]}] if span else []
    raise AssertionError(f"unknown search parameter type {param.type}")


def _date_span(element: object) -> tuple[datetime, datetime] | None:
    if isinstance(element, str):
        return date_range(element)
    if isinstance(element, dict) and ("start" in element or "end" in element):
        low = date_range(element["start"])[0] if element.get("start") else DATE_MIN
        high = date_range(element["end"])[1] if element.get("end") else DATE_MAX
        return low, high
    return None
