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
from alliance.audit.service import audit_conditions, search_events
from alliance.errors import BadRequest, NotFound
from alliance.fhir.registry import ResourceDefinition, SearchParam
from alliance.fhir.store import SearchResult, Version
from alliance.fhir.types import SearchSpec

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
        rows, _ = search_events(session, [AuditRecord.id == resource_id, visible], limit=1)
        if not rows:
            raise NotFound(f"AuditEvent/{resource_id} is not known")
        return _version(rows[0])

    def search_parsed(
        self, session: Session, spec: SearchSpec, *, visible: ColumnElement[bool]
    ) -> SearchResult:
        """The kernel's parsed search over the trail: newest first unless `_sort=date`, paged
        by offset (the trail has no keyset link)."""
        if spec.page_after is not None:
            raise BadRequest("AuditEvent pages by _page_offset", expression=["_page_after"])
        if not spec.order:
            spec.order = [("date", True)]
            spec.applied.append(("_sort", "-date"))
        if len(spec.order) != 1 or spec.order[0][0] not in ("date", "_lastUpdated"):
            raise BadRequest("AuditEvent sorts by date or -date only", expression=["_sort"])
        newest_first = spec.order[0][1]
        conditions = [*audit_conditions(spec.filters), visible]
        if spec.summary_count or spec.count == 0:
            _, total = search_events(session, conditions, limit=0, count=True)
            return SearchResult(spec, [], [], total, None)
        rows, total = search_events(
            session,
            conditions,
            newest_first=newest_first,
            limit=spec.count + 1,
            offset=spec.offset,
            count=spec.wants_total,
        )
        more = len(rows) > spec.count
        matches = [_version(r) for r in rows[: spec.count]]
        next_page = ("_page_offset", str(spec.offset + spec.count)) if more else None
        return SearchResult(spec, matches, [], total, next_page)


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
