"""Who may see what, as SQL conditions inside the queries (never a filter after them).

- Directory records (hospitals, departments, partnerships, practitioners and their roles) are
  shared across the alliance: every signed-in user reads them; only a hospital administrator
  writes those of their own hospital.
- Clinical records: a user with the `clinical` capability sees the records their hospital
  owns, every record about a patient their hospital keeps, and the records an access grant
  opens to their hospital while it lasts. Nothing else: a record outside reach behaves as if
  it did not exist (404), so existence does not leak.
- The sharing rule: a record leaves the hospital that keeps it only through a grant, and only
  the hospital that keeps it (or keeps its patient) can share it (`shareable`); what a hospital
  sees through a grant it cannot pass on, so nothing derived from a grant outlives it.
- A grant opens its records in `full` (an accepted referral) or for `triage` (a request not
  yet decided: the receiving hospital sees what it needs to decide, `TRIAGE_ELEMENTS`, and no
  file or image). A record seen only through a triage grant is served as a subset, tagged
  SUBSETTED (FHIR R4 search.html#elements); files and DICOM need `full` reach.
- The audit trail: only the `audit` capability.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    and_,
    bindparam,
    exists,
    false,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from alliance import clock
from alliance.codes import RECORD_KEEPER, RECORD_PATIENT
from alliance.errors import Forbidden, Invalid, NotFound
from alliance.fhir.models import ResourceRow
from alliance.fhir.registry import ResourceDefinition
from alliance.fhir.types import Actor, Resource, Version
from alliance.security.models import AccessGrant, AccessGrantResource
from alliance.security.scopes import INTERACTION_PERMISSION, Scope, allows, format_scopes


@dataclass(frozen=True)
class Principal:
    """Who is asking: a person (user) or a partner system (client), for one hospital."""

    subject: str
    username: str
    kind: str
    hospital_id: str
    role: str
    capabilities: frozenset[str]
    scopes: tuple[Scope, ...]
    practitioner_id: str | None = None
    token_id: str | None = None

    @property
    def scope_text(self) -> str:
        return format_scopes(list(self.scopes))

    def check_scope(self, resource_type: str, interaction: str) -> None:
        """403 when the token's scopes do not cover this type and interaction."""
        permission = INTERACTION_PERMISSION[interaction]
        if not allows(list(self.scopes), resource_type, permission):
            raise Forbidden(
                f"the token's scope ({self.scope_text or 'none'}) does not allow "
                f"{interaction} on {resource_type}"
            )


#: Grant levels: `full` opens records as they are, `triage` opens the subset below.
FULL, TRIAGE = "full", "triage"
#: What a triage grant shows of a record: the elements a receiving specialist needs to decide
#: on a request (the request itself whole; the patient's name, sex and birth date; previews of
#: the documents and studies it lists, without their files), as dotted element paths. A type
#: mapped to None is shown whole; a type not listed shows only id and meta.
TRIAGE_ELEMENTS: dict[str, frozenset[str] | None] = {
    "ServiceRequest": None,
    "Task": None,
    "Patient": frozenset({"name", "gender", "birthDate", "managingOrganization", "active"}),
    "DocumentReference": frozenset(
        {
            "status",
            "docStatus",
            "type",
            "category",
            "subject",
            "date",
            "author",
            "description",
            "content.attachment.contentType",
            "content.attachment.title",
            "content.attachment.size",
            "content.attachment.creation",
            "content.format",
        }
    ),
    "ImagingStudy": frozenset(
        {
            "identifier",
            "status",
            "modality",
            "subject",
            "started",
            "numberOfSeries",
            "numberOfInstances",
            "description",
            "series.uid",
            "series.number",
            "series.modality",
            "series.description",
            "series.numberOfInstances",
            "series.bodySite",
        }
    ),
}
#: The SUBSETTED tag (FHIR R4 v3-ObservationValue) on a record served as a subset.
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
#: Extensions a subset keeps: who keeps the record and whose it is (needed to act on it).
_KEPT_EXTENSIONS = frozenset({RECORD_KEEPER, RECORD_PATIENT})


def _now() -> datetime:
    return clock.now()


def _at(at: datetime | None) -> datetime | BindParameter[datetime]:
    """`at`, or when None the instant each statement runs: a parameter whose value is asked
    of alliance.clock at execution, so a condition built once serves every request."""
    if at is not None:
        return at
    return bindparam("access_now", callable_=_now, unique=True)


def _opened(hospital_id: str, at: datetime | None, levels: tuple[str, ...]) -> Select[str]:
    """The grant rows in force at `at` (None: when the statement runs) that open records to
    `hospital_id`, at these levels."""
    return (
        select(AccessGrantResource.resource_id)
        .join(AccessGrant, AccessGrant.id == AccessGrantResource.grant_id)
        .where(
            AccessGrant.hospital_id == hospital_id,
            AccessGrant.valid_from <= _at(at),
            or_(AccessGrant.valid_until.is_(None), AccessGrant.valid_until > _at(at)),
            AccessGrant.closed_at.is_(None),
            # Each level a parameter of its own: an IN of plain values is "expanding", and
            # SQLAlchemy renders its SQL again at every execution (5% of an audited read).
            AccessGrant.level.in_([literal(level) for level in levels]),
        )
    )


def granted_to(resource_type: str, resource_id: str, at: datetime) -> Select[str]:
    """The hospitals a grant in force at `at` opens this record to in full."""
    return (
        select(AccessGrant.hospital_id)
        .join(AccessGrantResource, AccessGrant.id == AccessGrantResource.grant_id)
        .where(
            AccessGrantResource.resource_type == resource_type,
            AccessGrantResource.resource_id == resource_id,
            AccessGrant.valid_from <= at,
            or_(AccessGrant.valid_until.is_(None), AccessGrant.valid_until > at),
            AccessGrant.closed_at.is_(None),
            AccessGrant.level == FULL,
        )
        .distinct()
    )


def granted_ids(
    hospital_id: str, resource_type: str, at: datetime | None, *, triage: bool = False
) -> ColumnElement[bool]:
    """ResourceRow ids of `resource_type` opened to `hospital_id` by a grant in force at `at`
    (None: when the statement runs), full grants only or triage grants too."""
    levels = (FULL, TRIAGE) if triage else (FULL,)
    opened = _opened(hospital_id, at, levels)
    return ResourceRow.id.in_(opened.where(AccessGrantResource.resource_type == resource_type))


def opened_in_full(hospital_id: str, at: datetime) -> ColumnElement[bool]:
    """The `ResourceRow` (of any type) is opened in full to `hospital_id` by a grant in force."""
    opened = _opened(hospital_id, at, (FULL,)).where(
        AccessGrantResource.resource_type == ResourceRow.resource_type,
        AccessGrantResource.resource_id == ResourceRow.id,
    )
    return exists(opened)


#: The conditions that do not depend on who asks, made once (so that a statement built on
#: them can be recognised and kept, see `clinical_reach`).
_ALL: ColumnElement[bool] = true()
_NONE: ColumnElement[bool] = false()


def visible(principal: Actor, definition: ResourceDefinition) -> ColumnElement[bool]:
    """The condition on `ResourceRow` for what `principal` may read of this type."""
    caps = principal.capabilities
    if definition.access == "directory":
        return _ALL
    if definition.access == "audit":
        return _ALL if "audit" in caps else _NONE
    return clinical_reach(principal, definition.type, triage=True)


def kept_by(hospital_id: str) -> ColumnElement[bool]:
    """Clinical records a hospital keeps, or keeps the patient of: what it may share."""
    own_patients = select(ResourceRow.id).where(
        ResourceRow.resource_type == "Patient", ResourceRow.organization_id == hospital_id
    )
    return or_(ResourceRow.organization_id == hospital_id, ResourceRow.patient_id.in_(own_patients))


def clinical_reach(
    principal: Actor, resource_type: str, *, triage: bool = False
) -> ColumnElement[bool]:
    """Clinical records of `resource_type` within reach: owned by the principal's hospital,
    about a patient it keeps, or opened to it by a grant in force when the statement runs
    (full grants, or triage ones too when `triage`).

    The condition depends only on the hospital, the role's capabilities, the type and the
    level, so it is built once per hospital and type (`_reach`) and the same object is handed
    to every request: SQLAlchemy then finds the statements built on it in its compiled cache
    without rebuilding them, and the store keeps whole statements built on it
    (alliance.fhir.store)."""
    if "clinical" not in principal.capabilities:
        return _NONE
    return _reach(principal.hospital_id, resource_type, triage)


@lru_cache(maxsize=4096)
def _reach(hospital_id: str, resource_type: str, triage: bool) -> ColumnElement[bool]:
    return or_(kept_by(hospital_id), granted_ids(hospital_id, resource_type, None, triage=triage))


def shareable(
    session: Session, hospital_id: str, resources: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Of `resources` (type, id), those `hospital_id` may share: the records it keeps and the
    records about a patient it keeps, never what it sees only through a grant."""
    wanted = list(dict.fromkeys(resources))
    found: set[tuple[str, str]] = set()
    for rtype in {t for t, _ in wanted}:
        ids = [i for t, i in wanted if t == rtype]
        found.update(
            (rtype, rid)
            for rid in session.scalars(
                select(ResourceRow.id).where(
                    ResourceRow.resource_type == rtype,
                    ResourceRow.id.in_(ids),
                    kept_by(hospital_id),
                )
            )
        )
    return [r for r in wanted if r in found]


def subset(resource: Resource, elements: frozenset[str] | None) -> Resource:
    """The resource cut down to `elements` (dotted paths), with id, meta (tagged SUBSETTED)
    and the record-keeping extensions (FHIR R4 search.html#elements)."""
    if elements is None:
        return resource
    kept: Resource = _pick(resource, elements)
    kept["resourceType"] = resource["resourceType"]
    kept["id"] = resource.get("id")
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    kept["meta"] = meta
    extensions = [
        e
        for e in resource.get("extension") or []
        if isinstance(e, dict) and e.get("url") in _KEPT_EXTENSIONS
    ]
    if extensions:
        kept["extension"] = extensions
    return kept


def _pick(value: Any, paths: frozenset[str]) -> Any:
    if isinstance(value, list):
        return [_pick(v, paths) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in paths:
            out[key] = item
            continue
        deeper = frozenset(p.removeprefix(f"{key}.") for p in paths if p.startswith(f"{key}."))
        if deeper:
            out[key] = _pick(item, deeper)
    return out


class Reach:
    """What one principal may see, as the FHIR store and the domains ask for it: a condition
    per type for reads and searches (calling the object), `full` for what needs the record
    opened whole (files, DICOM, writing about a patient), and `redact` to serve what is seen
    only through a triage grant as its subset."""

    def __init__(self, principal: Actor, lookup: Callable[[str], ResourceDefinition]) -> None:
        self.principal = principal
        self.lookup = lookup

    def __call__(self, resource_type: str) -> ColumnElement[bool]:
        return visible(self.principal, self.lookup(resource_type))

    def full(self, resource_type: str) -> ColumnElement[bool]:
        definition = self.lookup(resource_type)
        if definition.access != "clinical":
            return visible(self.principal, definition)
        return clinical_reach(self.principal, resource_type)

    def may_read(self, resource_type: str) -> bool:
        scopes = list(self.principal.scopes)
        return allows(scopes, resource_type, "r") or allows(scopes, resource_type, "s")

    def redact(
        self,
        session: Session,
        versions: list[Version],
        known: Mapping[tuple[str, str], bool] | None = None,
    ) -> None:
        """Cut the versions seen only through a triage grant down to their triage subset.
        `known` tells, of (type, id), whether it is within full reach, as the query that found
        it already asked (`full` as a column); one query per clinical type asks of the rest."""
        known = known or {}
        by_type: dict[str, list[Version]] = {}
        for v in versions:
            if v.content is not None and self.lookup(v.resource_type).access == "clinical":
                by_type.setdefault(v.resource_type, []).append(v)
        for rtype, group in by_type.items():
            whole = {v.id for v in group if known.get((rtype, v.id))}
            unknown = {v.id for v in group if (rtype, v.id) not in known}
            if unknown:
                whole |= set(
                    session.scalars(
                        select(ResourceRow.id).where(
                            ResourceRow.resource_type == rtype,
                            ResourceRow.id.in_(unknown),
                            self.full(rtype),
                        )
                    )
                )
            elements = TRIAGE_ELEMENTS.get(rtype, frozenset())
            for v in group:
                if v.id not in whole:
                    cut = subset(v.resource(), elements)
                    v.content = json.dumps(cut, ensure_ascii=False, separators=(",", ":"))


def visibility(principal: Actor, lookup: Callable[[str], ResourceDefinition]) -> Reach:
    """What `principal` may see of any type, as the FHIR store asks for it (searches
    `_include` other types)."""
    return Reach(principal, lookup)


def check_write(
    principal: Actor,
    definition: ResourceDefinition,
    session: Session,
    resource: Resource,
    previous: Resource | None,
) -> None:
    """May `principal` store `resource` (replacing `previous`)? Raises Forbidden or NotFound.

    The record must belong to the writer's hospital before and after the write; a clinical
    record about a patient must be about a patient the writer can see.
    """
    caps = principal.capabilities
    hospital = principal.hospital_id
    owner = definition.organization_of(resource)
    if owner is None and definition.access != "audit":
        raise Invalid(f"the {definition.type} does not name the hospital that keeps it")
    writers = definition.writers or (lambda r: {definition.organization_of(r)})
    allowed = writers(resource)
    if previous is not None:
        allowed &= writers(previous)
    if definition.access == "audit":
        raise Forbidden("the audit trail is written by the server only")
    if definition.access == "directory":
        if "administer" not in caps:
            raise Forbidden(f"only hospital administrators change {definition.type} records")
        if hospital not in allowed:
            raise Forbidden(f"administrators change their own hospital's {definition.type} only")
        return
    if "clinical" not in caps:
        raise Forbidden(f"the role {principal.role} does not write clinical records")
    patient_id = definition.patient_of(resource)
    # A new record about a patient (or one moved to another patient) must be about a patient
    # the writer can see; an update of a record the writer can see needs no more.
    about_new_patient = previous is None or definition.patient_of(previous) != patient_id
    if patient_id is not None and definition.type != "Patient" and about_new_patient:
        patient_visible = session.scalar(
            select(ResourceRow.id).where(
                and_(
                    ResourceRow.resource_type == "Patient",
                    ResourceRow.id == patient_id,
                    clinical_reach(principal, "Patient"),
                )
            )
        )
        if patient_visible is None:
            raise NotFound(f"Patient/{patient_id} is not known")
    if hospital not in allowed:
        raise Forbidden(
            f"this {definition.type} belongs to another hospital; "
            f"records are written by the hospital that keeps them"
        )
