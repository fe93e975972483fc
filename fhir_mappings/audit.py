"""AuditEvent: the audit trail's FHIR face, read and search only, for auditors.

The trail lives in its own append-only, hash-chained table (alliance.audit), not in the generic
resource tables; this provider answers read and search from it. Search parameters follow FHIR
R4 AuditEvent's (date, agent, altid, agent-role, entity, patient, subtype, outcome, action,
type, address) plus `hospital`, the Organization of the user who acted.
"""

from __future__ import annotations

from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from alliance.audit.models import AuditRecord
from alliance.audit.service import AuditFilter, audit_filter, search_events
from alliance.errors import BadRequest, NotFound
from alliance.fhir.registry import ResourceDefinition, SearchParam
from alliance.fhir.search import SearchSpec
from alliance.fhir.store import SearchResult, Version

_PARAMS = [
    SearchParam("date", "date", "recorded", "When the event was recorded (prefixes allowed)"),
    SearchParam("agent", "reference", "agent.who", "The user: Practitioner/id, or a user name"),
    SearchParam("altid", "token", "agent.who.identifier", "The user's account name"),
    SearchParam("agent-role", "token", "agent.role", "The user's role"),
    SearchParam("hospital", "reference", "agent.extension", "The user's hospital"),
    SearchParam("entity", "reference", "entity.what", "The resource touched, Type/id"),
    SearchParam("patient", "reference", "entity.what", "The patient whose record it was"),
    SearchParam("subtype", "token", "subtype", "read, vread, history, search, create, ..."),
    SearchParam("outcome", "token", "outcome", "0 success, 4 minor, 8 serious, 12 major failure"),
    SearchParam("action", "token", "action", "C R U D E"),
    SearchParam("type", "token", "type", "rest, 110114 (login), 110106 (export), ..."),
    SearchParam("address", "string", "agent.network.address", "The client's network address"),
]


def _version(row: AuditRecord) -> Version:
    return Version("AuditEvent", row.id, 1, row.recorded, "create", row.content)


class AuditProvider:
    def read(self, session: Session, resource_id: str, visible: ColumnElement[bool]) -> Version:
        flt = AuditFilter(conditions=[AuditRecord.id == resource_id, visible])
        rows, _ = search_events(session, flt, limit=1)
        if not rows:
            raise NotFound(f"AuditEvent/{resource_id} is not known")
        return _version(rows[0])

    def search(
        self,
        session: Session,
        params: list[tuple[str, str]],
        *,
        default_count: int,
        max_count: int,
        lenient: bool,
        visible: ColumnElement[bool],
    ) -> SearchResult:
        flt, applied, warnings = audit_filter(params, lenient=lenient)
        flt.conditions.append(visible)
        given = dict(params)
        count = min(_number(given.get("_count"), default_count, "_count"), max_count)
        offset = _number(given.get("_page_offset"), 0, "_page_offset")
        sort = given.get("_sort", "-date")
        if sort not in ("date", "-date"):
            raise BadRequest("AuditEvent sorts by date or -date only")
        want_total = given.get("_total", "none") != "none" or count == 0
        rows, total = search_events(
            session,
            flt,
            newest_first=sort == "-date",
            limit=count + 1,
            offset=offset,
            count=want_total,
        )
        spec = SearchSpec("AuditEvent", count=count, offset=offset, warnings=warnings)
        spec.applied = [*applied, ("_sort", sort)]
        spec.order = [("date", sort == "-date")]
        more = len(rows) > count
        matches = [_version(r) for r in rows[:count]]
        next_page = ("_page_offset", str(offset + count)) if more else None
        return SearchResult(spec, matches, [], total, next_page)


def _number(value: str | None, default: int, name: str) -> int:
    if value is None:
        return default
    if not value.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


def definitions() -> list[ResourceDefinition]:
    return [
        ResourceDefinition(
            "AuditEvent",
            AuditEvent,
            _PARAMS,
            "The audit trail (IHE BALP), hash-chained and append-only; auditors only.",
            interactions=frozenset({"read", "vread", "search-type"}),
            access="audit",
            provider=AuditProvider(),
        )
    ]
