"""The FHIR interactions over the resource tables (FHIR R4 http.html).

Functions take the session keyword-only and never commit: the caller's unit of work does.
A caller that limits what a user may see passes `visible`, a SQL condition on `ResourceRow`;
a resource outside it behaves exactly like one that does not exist.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    select,
    true,
    tuple_,
)
from sqlalchemy.orm import Session

from alliance import clock
from alliance.attachments.service import ATTACHMENT_PARAM, check_attachments
from alliance.db import named_lock
from alliance.errors import BadRequest, Conflict, Gone, Issue, NotFound, PreconditionFailed
from alliance.fhir.indexing import INDEX_TABLES, index_rows, insert_index_rows
from alliance.fhir.models import ReferenceIndex, ResourceRow, ResourceVersion, TokenIndex
from alliance.fhir.registry import Registry, ResourceDefinition, WriteCheck, WriteContext
from alliance.fhir.search import matching_rows, page_query, parse_search
from alliance.fhir.types import (
    Actor,
    Resource,
    SearchResult,
    SearchSpec,
    Version,
    Visibility,
    WriteResult,
)
from alliance.fhir.values import instant
from alliance.numbers import whole_number

# Callers that named these through the store before they moved to `alliance.fhir.types`.
__all__ = ["FhirStore", "SearchResult", "Version", "Visibility", "WriteResult", "validate"]


ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class FhirStore:
    def __init__(self, registry: Registry, *, base_url: str, server_url: str) -> None:
        """`base_url` is the FHIR base (`…/fhir`); `server_url` the service's own public URL,
        under which uploaded files live (`…/api/attachments/{id}`)."""
        self.registry = registry
        self.base_url = base_url
        self.server_url = server_url
        #: The read statements built (see `_read_query`), by type and access condition.
        self._read_queries: dict[
            tuple[str, int, int], tuple[object, object, Select[*tuple[Any, ...]]]
        ] = {}

    # ---- reads ------------------------------------------------------------------------

    def read(
        self,
        resource_type: str,
        resource_id: str,
        *,
        session: Session,
        visible: Visibility | None = None,
        actor: Actor | None = None,
    ) -> Version:
        """Read (FHIR R4 http.html#read). With an `actor`, the type's read hook runs (it may
        move the resource, as a Task's owner opening it does) and its presenter applies."""
        known: dict[tuple[str, str], bool] = {}
        result = self._read(session, resource_type, resource_id, visible, known)
        definition = self.registry.get(resource_type)
        if actor is not None and definition.on_read is not None:
            result = definition.on_read(WriteContext(session, self, actor), result)
        if definition.present is not None:
            definition.present(session, [result])
        if actor is not None and definition.present_to is not None:
            definition.present_to(session, actor, [result])
        _redact(visible, session, [result], known)
        return result

    def _read(
        self,
        session: Session,
        resource_type: str,
        resource_id: str,
        visible: Visibility | None,
        known: dict[tuple[str, str], bool] | None = None,
    ) -> Version:
        """The current version, if `visible`; in `known`, whether it is opened whole (asked
        by the same query, for `Reach.redact`)."""
        definition = self.registry.get(resource_type)
        if definition.provider is not None:
            return definition.provider.read(
                session, resource_id, _condition(visible, resource_type)
            )
        found = session.execute(
            self._read_query(resource_type, visible), {"read_id": resource_id}
        ).first()
        if found is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        result = Version.of(found, found.patient_id)
        if result.deleted:
            raise Gone(f"{resource_type}/{resource_id} was deleted")
        if known is not None and visible is not None:
            known[(resource_type, resource_id)] = bool(found.opened_whole)
        return result

    def _read_query(
        self, resource_type: str, visible: Visibility | None
    ) -> Select[*tuple[Any, ...]]:
        """The read of one resource by id (a bound parameter), within `visible`, and whether
        it is opened whole. Built once per type and access condition: the access rules hand
        out the same condition object for every request of a hospital and role
        (alliance.security.access.clinical_reach), so the statement is kept, keyed by the
        conditions' identity and holding them (an identity is never taken for another
        object's), and SQLAlchemy neither rebuilds it nor recomputes its cache key."""
        condition = visible(resource_type) if visible is not None else None
        whole = visible.full(resource_type) if visible is not None else None
        key = (resource_type, id(condition), id(whole))
        kept = self._read_queries.get(key)
        if kept is not None and kept[0] is condition and kept[1] is whole:
            return kept[2]
        query: Select[*tuple[Any, ...]] = (
            select(ResourceRow.patient_id, *VERSION_COLUMNS)
            .join(
                ResourceVersion,
                and_(
                    ResourceVersion.resource_type == ResourceRow.resource_type,
                    ResourceVersion.id == ResourceRow.id,
                    ResourceVersion.version == ResourceRow.version,
                ),
            )
            .where(
                ResourceRow.resource_type == resource_type, ResourceRow.id == bindparam("read_id")
            )
        )
        if condition is not None and whole is not None:
            query = query.where(condition).add_columns(_opened_whole(whole))
        if len(self._read_queries) >= _KEPT_QUERIES:
            self._read_queries.clear()  # conditions that are not kept (a caller of its own)
        self._read_queries[key] = (condition, whole, query)
        return query

    def vread(
        self,
        resource_type: str,
        resource_id: str,
        version_id: str,
        *,
        session: Session,
        visible: Visibility | None = None,
    ) -> Version:
        definition = self.registry.get(resource_type)
        if definition.provider is not None:
            only = definition.provider.read(
                session, resource_id, _condition(visible, resource_type)
            )
            if version_id != str(only.version):
                raise NotFound(f"{resource_type}/{resource_id} has no version {version_id!r}")
            return only
        current = self._current(session, resource_type, resource_id, visible)
        number = whole_number(version_id)
        if number is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id[:40]!r}")
        row = session.get(ResourceVersion, (resource_type, resource_id, number))
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id}")
        result = Version.of(row, current.patient_id)
        if result.deleted:
            raise Gone(f"version {version_id} of {resource_type}/{resource_id} is a deletion")
        _redact(visible, session, [result])
        return result

    def history(
        self,
        resource_type: str,
        resource_id: str,
        *,
        session: Session,
        count: int,
        before_version: int | None = None,
        visible: Visibility | None = None,
    ) -> list[Version]:
        """Versions newest first (FHIR R4 http.html#history), `count` at most."""
        definition = self.registry.get(resource_type)
        if definition.provider is not None:
            return [
                definition.provider.read(session, resource_id, _condition(visible, resource_type))
            ]
        current = self._current(session, resource_type, resource_id, visible)
        query = select(ResourceVersion).where(
            ResourceVersion.resource_type == resource_type, ResourceVersion.id == resource_id
        )
        if before_version is not None:
            query = query.where(ResourceVersion.version < before_version)
        rows = session.scalars(query.order_by(ResourceVersion.version.desc()).limit(count))
        versions = [Version.of(r, current.patient_id) for r in rows]
        _redact(visible, session, versions)
        return versions

    def _current(
        self,
        session: Session,
        resource_type: str,
        resource_id: str,
        visible: Visibility | None,
        *,
        for_update: bool = False,
    ) -> ResourceRow:
        query = select(ResourceRow).where(
            ResourceRow.resource_type == resource_type, ResourceRow.id == resource_id
        )
        if visible is not None:
            query = query.where(visible(resource_type))
        if for_update:
            query = query.with_for_update()
        row = session.scalars(query).one_or_none()
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        return row

    # ---- search -----------------------------------------------------------------------

    def search(
        self,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        session: Session,
        default_count: int,
        max_count: int,
        lenient: bool = False,
        visible: Visibility | None = None,
        actor: Actor | None = None,
    ) -> SearchResult:
        """Search (FHIR R4 search.html); with an `actor`, each type's reader presenter applies."""
        definition = self.registry.get(resource_type)
        spec = parse_search(
            definition,
            self.registry,
            params,
            base_url=self.base_url,
            default_count=default_count,
            max_count=max_count,
            lenient=lenient,
        )
        if definition.provider is not None:
            return definition.provider.search_parsed(
                session, spec, visible=_condition(visible, resource_type)
            )
        condition = visible(resource_type) if visible is not None else None
        total: int | None = None
        if spec.wants_total:
            counted = matching_rows(spec, definition, condition).subquery()
            total = session.scalar(select(func.count()).select_from(counted)) or 0
        if spec.summary_count or spec.count == 0:
            return SearchResult(spec, [], [], total, None)
        rows_page = page_query(spec, definition, condition).limit(spec.count + 1)
        page = rows_page.join(
            ResourceVersion,
            and_(
                ResourceVersion.resource_type == ResourceRow.resource_type,
                ResourceVersion.id == ResourceRow.id,
                ResourceVersion.version == ResourceRow.version,
            ),
        ).with_only_columns(ResourceRow.patient_id, *VERSION_COLUMNS)
        if visible is not None:
            page = page.add_columns(_opened_whole(visible.full(resource_type)))
        fetched = list(session.execute(page))
        more = len(fetched) > spec.count
        fetched = fetched[: spec.count]
        matches = [Version.of(row, row.patient_id) for row in fetched]
        # Whether each match is opened whole, asked by the page query (for `Reach.redact`).
        known = (
            {(resource_type, row.id): bool(row.opened_whole) for row in fetched}
            if visible is not None
            else {}
        )
        ids = [row.id for row in fetched]
        next_page: tuple[str, str] | None = None
        if more:
            next_page = (
                ("_page_offset", str(spec.offset + spec.count))
                if spec.order
                else ("_page_after", ids[-1])
            )
        included = self._included(session, spec, ids, visible) if spec.includes else []
        for version_list in (matches, included):
            self._present(session, version_list, actor)
            _redact(visible, session, version_list, known)
        return SearchResult(spec, matches, included, total, next_page)

    def _present(
        self, session: Session, versions: list[Version], actor: Actor | None = None
    ) -> None:
        by_type: dict[str, list[Version]] = {}
        for v in versions:
            by_type.setdefault(v.resource_type, []).append(v)
        for rtype, group in by_type.items():
            definition = self.registry.get(rtype)
            if definition.present is not None:
                definition.present(session, group)
            if actor is not None and definition.present_to is not None:
                definition.present_to(session, actor, group)

    def _contents(self, session: Session, rows: list[ResourceRow]) -> list[Version]:
        """The stored JSON of the current version of each row, in the rows' order."""
        if not rows:
            return []
        key = tuple_(ResourceVersion.resource_type, ResourceVersion.id, ResourceVersion.version)
        wanted = [(r.resource_type, r.id, r.version) for r in rows]
        found = {
            (v.resource_type, v.id, v.version): v
            for v in session.scalars(select(ResourceVersion).where(key.in_(wanted)))
        }
        patients = {(r.resource_type, r.id): r.patient_id for r in rows}
        return [Version.of(found[k], patients[k[:2]]) for k in wanted if k in found]

    def _included(
        self,
        session: Session,
        spec: SearchSpec,
        ids: list[str],
        visible: Visibility | None,
    ) -> list[Version]:
        """The resources the matches `ids` (of `spec`'s type) refer to by `_include`."""
        targets: dict[tuple[str, str], None] = {}
        for inc in spec.includes:
            query = select(ReferenceIndex.target_type, ReferenceIndex.target_id).where(
                ReferenceIndex.resource_type == spec.resource_type,
                ReferenceIndex.param == inc.param.name,
                ReferenceIndex.resource_id.in_(ids),
            )
            if inc.target_type:
                query = query.where(ReferenceIndex.target_type == inc.target_type)
            for ttype, tid in session.execute(query):
                if ttype in self.registry and (visible is None or visible.may_read(ttype)):
                    targets[(ttype, tid)] = None
        matched = {(spec.resource_type, i) for i in ids}
        wanted = [t for t in targets if t not in matched]
        if not wanted:
            return []
        found: list[ResourceRow] = []
        for ttype in {t for t, _ in wanted}:
            rows_query = select(ResourceRow).where(
                ResourceRow.resource_type == ttype,
                ResourceRow.id.in_([i for t, i in wanted if t == ttype]),
                ResourceRow.deleted.is_(False),
                visible(ttype) if visible is not None else true(),
            )
            found.extend(session.scalars(rows_query.order_by(ResourceRow.id)))
        by_type: dict[str, list[ResourceRow]] = {}
        for r in found:
            by_type.setdefault(r.resource_type, []).append(r)
        return [v for group in by_type.values() for v in self._contents(session, group)]

    # ---- writes -----------------------------------------------------------------------

    def create(
        self,
        resource_type: str,
        body: Resource,
        *,
        session: Session,
        if_none_exist: str | None = None,
        resource_id: str | None = None,
        visible: Visibility | None = None,
        authorize: WriteCheck | None = None,
        actor: Actor | None = None,
    ) -> WriteResult:
        """Create (FHIR R4 http.html#create); with `if_none_exist`, conditional create.

        The id in the body is ignored as the spec says; `resource_id` is for internal callers
        (seeding) that need a stable id.
        """
        definition = self.registry.get(resource_type)
        self._check_type(definition, body)
        if if_none_exist is not None:
            criteria = parse_qsl(if_none_exist.lstrip("?"), keep_blank_values=True)
            if not criteria:
                raise BadRequest("If-None-Exist holds no search criteria")
            # Concurrent conditional creates with the same criteria queue here, so the second
            # sees what the first made (on SQLite the write transaction already serialises).
            named_lock(session, f"conditional-create:{resource_type}?{sorted(criteria)}")
            found = self.search(
                resource_type,
                [*criteria, ("_count", "2")],
                session=session,
                default_count=2,
                max_count=2,
                visible=visible,
            )
            if len(found.matches) > 1:
                raise PreconditionFailed(
                    f"If-None-Exist: {if_none_exist} matches more than one {resource_type}"
                )
            if found.matches:
                return WriteResult(found.matches[0], created=False)
        new_id = resource_id or str(uuid.uuid4())
        if not ID_RE.match(new_id):
            raise BadRequest(f"{new_id!r} is not a valid FHIR id")
        return self._write(
            definition,
            session,
            new_id,
            body,
            None,
            method="create",
            authorize=authorize,
            actor=actor,
        )

    def update(
        self,
        resource_type: str,
        resource_id: str,
        body: Resource,
        *,
        session: Session,
        if_match: str | None = None,
        visible: Visibility | None = None,
        authorize: WriteCheck | None = None,
        actor: Actor | None = None,
    ) -> WriteResult:
        """Update (FHIR R4 http.html#update); `if_match` is the version id the client last saw
        (version-aware update: a stale one answers 412)."""
        definition = self.registry.get(resource_type)
        self._check_type(definition, body)
        if body.get("id") != resource_id:
            raise BadRequest(
                f"the id in the body ({body.get('id')!r}) does not match the URL ({resource_id})",
                expression=[f"{resource_type}.id"],
            )
        current = self._current(session, resource_type, resource_id, visible, for_update=True)
        if if_match is not None and if_match != str(current.version):
            raise PreconditionFailed(
                f'If-Match W/"{if_match}" does not match the current version '
                f'W/"{current.version}" of {resource_type}/{resource_id}'
            )
        claimed = (body.get("meta") or {}).get("versionId")
        if definition.versioned_updates and claimed is not None and claimed != str(current.version):
            raise Conflict(
                f"{resource_type}/{resource_id} changed since version {claimed} (it is at "
                f"version {current.version}); read it again and retry"
            )
        return self._write(
            definition,
            session,
            resource_id,
            body,
            current,
            method="update",
            authorize=authorize,
            actor=actor,
        )

    def delete(
        self,
        resource_type: str,
        resource_id: str,
        *,
        session: Session,
        visible: Visibility | None = None,
        authorize: WriteCheck | None = None,
    ) -> Version | None:
        """Delete (FHIR R4 http.html#delete): a new version that marks the resource deleted.
        Earlier versions stay readable by vread and history; nothing is erased."""
        definition = self.registry.get(resource_type)
        current = self._current(session, resource_type, resource_id, visible, for_update=True)
        if current.deleted:
            return None
        if authorize is not None:
            previous = self._read(session, resource_type, resource_id, None).resource()
            authorize(definition, session, previous, previous)
        now = _now(current.last_updated)
        current.version += 1
        current.deleted = True
        current.last_updated = now
        row = ResourceVersion(
            resource_type=resource_type,
            id=resource_id,
            version=current.version,
            last_updated=now,
            method="delete",
            content=None,
        )
        session.add(row)
        self._clear_index(session, resource_type, resource_id)
        session.flush()
        return Version.of(row, current.patient_id)

    def _check_type(self, definition: ResourceDefinition, body: Resource) -> None:
        if body.get("resourceType") != definition.type:
            raise BadRequest(
                f"the body is a {body.get('resourceType')!r}, not a {definition.type}",
                expression=[f"{definition.type}.resourceType"],
            )
        # Read before the model validates (a versionId precondition, the new meta), so its
        # shape is checked first: Resource.meta is one Meta object (FHIR R4 resource.html).
        if "meta" in body and not isinstance(body["meta"], dict):
            raise BadRequest(
                f"{definition.type}.meta must be a JSON object (a Meta)",
                expression=[f"{definition.type}.meta"],
            )

    def _write(
        self,
        definition: ResourceDefinition,
        session: Session,
        resource_id: str,
        body: Resource,
        current: ResourceRow | None,
        *,
        method: str,
        authorize: WriteCheck | None,
        actor: Actor | None,
    ) -> WriteResult:
        resource = dict(body)
        resource["id"] = resource_id
        version = (current.version + 1) if current else 1
        now = _now(current.last_updated if current else None)
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = instant(now)
        resource["meta"] = meta
        validate(definition, resource)
        previous = None
        if current is not None and not current.deleted:
            previous = self._read(session, definition.type, resource_id, None).resource()
        ctx = WriteContext(session, self, actor)
        if definition.prepare is not None:
            definition.prepare(ctx, resource, previous)
            validate(definition, resource)
        if authorize is not None:
            authorize(definition, session, resource, previous)
        warnings = definition.on_write(ctx, resource, previous) if definition.on_write else []
        # The sharing rule for files holds for every type (alliance.attachments), and for what
        # the type's hooks added too.
        files = check_attachments(
            session,
            definition.type,
            resource,
            definition.organization_of(resource),
            self.server_url,
        )
        first = current is None
        if current is None:
            current = ResourceRow(resource_type=definition.type, id=resource_id)
            session.add(current)
        current.version = version
        current.last_updated = now
        current.deleted = False
        current.patient_id = definition.patient_of(resource)
        current.organization_id = definition.organization_of(resource)
        content = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        row = ResourceVersion(
            resource_type=definition.type,
            id=resource_id,
            version=version,
            last_updated=now,
            method=method,
            content=content,
        )
        session.add(row)
        if not first:  # a resource's first version has no index rows to replace
            self._clear_index(session, definition.type, resource_id)
        rows = index_rows(definition, resource_id, resource, self.base_url)
        tokens = rows.setdefault(TokenIndex, [])
        indexed = {r["code"] for r in tokens if r["param"] == ATTACHMENT_PARAM}
        tokens.extend(
            {
                "resource_type": definition.type,
                "resource_id": resource_id,
                "param": ATTACHMENT_PARAM,
                "system": None,
                "code": url[:255],
            }
            for url in files
            if url[:255] not in indexed
        )
        session.flush()
        insert_index_rows(session, rows)
        written = Version.of(row, current.patient_id)
        for after_write in definition.after_write:
            after_write(ctx, written, previous)
        return WriteResult(written, created=method == "create", warnings=warnings)

    def _clear_index(self, session: Session, resource_type: str, resource_id: str) -> None:
        for table in INDEX_TABLES:
            session.execute(
                delete(table).where(
                    table.resource_type == resource_type, table.resource_id == resource_id
                )
            )


def _redact(
    visible: Visibility | None,
    session: Session,
    versions: list[Version],
    known: dict[tuple[str, str], bool] | None = None,
) -> None:
    if visible is not None:
        visible.redact(session, versions, known)


#: Most read statements `FhirStore` keeps (types x hospitals x roles is far fewer).
_KEPT_QUERIES = 1024
#: A stored version as `Version` holds it: a read or a page of matches selects these columns,
#: not `ResourceVersion` objects (loading ORM objects for a page of 20 was a tenth of a
#: search's time), and `Version.of` takes the row as it would the object.
VERSION_COLUMNS = (
    ResourceVersion.resource_type,
    ResourceVersion.id,
    ResourceVersion.version,
    ResourceVersion.last_updated,
    ResourceVersion.method,
    ResourceVersion.content,
)


def _opened_whole(whole: ColumnElement[bool]) -> ColumnElement[bool]:
    """Whether the row is opened whole to the caller (for `Reach.redact`), as a column."""
    return case((whole, True), else_=False).label("opened_whole")


def _condition(visible: Visibility | None, resource_type: str) -> ColumnElement[bool]:
    return visible(resource_type) if visible is not None else true()


def _now(previous: datetime | None) -> datetime:
    """Now, but never before the previous version (clocks of several workers may differ)."""
    now = clock.now()
    return max(now, previous) if previous else now


def validate(definition: ResourceDefinition, resource: Resource) -> None:
    """Base FHIR validation by the fhir.resources model; each failure names the element path
    and the structural rule broken (`structural_rule`), so clients and the portal read it as
    they read the domains' rules (issue.details.coding)."""
    try:
        definition.model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        issues = [
            structural_issue(err["type"], _path(definition.type, err["loc"]), err["msg"])
            for err in errors
        ]
        first = errors[0]
        raise BadRequest(
            f"{_path(definition.type, first['loc'])}: {first['msg']}",
            rule=issues[0].rule,
            issues=issues,
        ) from None
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{definition.type} is not valid: {exc}", rule="fhir-value") from None


def structural_issue(error_type: str, where: str, message: str) -> Issue:
    """A structural failure (pydantic's error type) as the rule it breaks, with its FHIR R4
    issue type (IssueType value set): an element the resource type does not define
    (`fhir-unknown-element`, structure), a required element missing (`fhir-required`,
    required), a value of the wrong JSON type (`fhir-type`, value) or not in its type's format
    (`fhir-value`, value: a date, a pattern, one of a choice's elements)."""
    if error_type == "extra_forbidden":
        return _issue(where, message, code="structure", rule="fhir-unknown-element")
    if error_type.split(".")[-1] == "missing":  # pydantic's, and fhir.resources' own
        return _issue(where, message, code="required", rule="fhir-required")
    if error_type.endswith(("_type", "_parsing")):
        return _issue(where, message, code="value", rule="fhir-type")
    return _issue(where, message, code="value", rule="fhir-value")


def _issue(where: str, message: str, *, code: str, rule: str) -> Issue:
    return Issue(f"[{rule}] {where}: {message}", code, "error", [where], rule)


def _path(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
