"""Who may see what, as SQL conditions inside the queries (never a filter after them).

- Directory records (hospitals, departments, partnerships, practitioners and their roles) are
  shared across the alliance: every signed-in user reads them; only a hospital administrator
  writes those of their own hospital.
- Clinical records: a user with the `clinical` capability sees the records their hospital
  owns, every record about a patient their hospital keeps, and the records an access grant
  opens to their hospital while it lasts. Nothing else: a record outside reach behaves as if
  it did not exist (404), so existence does not leak.
- The audit trail: only the `audit` capability.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, false, or_, select, true
from sqlalchemy.orm import Session

from alliance.errors import Forbidden, Invalid, NotFound
from alliance.fhir.models import ResourceRow
from alliance.fhir.registry import Resource, ResourceDefinition
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


def granted_ids(hospital_id: str, resource_type: str, at: datetime) -> ColumnElement[bool]:
    """ResourceRow ids of `resource_type` opened to `hospital_id` by a grant in force at `at`."""
    opened = (
        select(AccessGrantResource.resource_id)
        .join(AccessGrant, AccessGrant.id == AccessGrantResource.grant_id)
        .where(
            AccessGrant.hospital_id == hospital_id,
            AccessGrantResource.resource_type == resource_type,
            AccessGrant.valid_from <= at,
            or_(AccessGrant.valid_until.is_(None), AccessGrant.valid_until > at),
            AccessGrant.closed_at.is_(None),
        )
    )
    return ResourceRow.id.in_(opened)


def visible(principal: Principal, definition: ResourceDefinition) -> ColumnElement[bool]:
    """The condition on `ResourceRow` for what `principal` may see of this type."""
    caps = principal.capabilities
    if definition.access == "directory":
        return true()
    if definition.access == "audit":
        return true() if "audit" in caps else false()
    return clinical_reach(principal, definition.type)


def clinical_reach(principal: Principal, resource_type: str) -> ColumnElement[bool]:
    """Clinical records of `resource_type` within reach: owned by the principal's hospital,
    about a patient it keeps, or opened to it by a grant in force."""
    if "clinical" not in principal.capabilities:
        return false()
    hospital = principal.hospital_id
    own_patients = select(ResourceRow.id).where(
        ResourceRow.resource_type == "Patient", ResourceRow.organization_id == hospital
    )
    return or_(
        ResourceRow.organization_id == hospital,
        ResourceRow.patient_id.in_(own_patients),
        granted_ids(hospital, resource_type, datetime.now(UTC)),
    )


def visibility(
    principal: Principal, lookup: Callable[[str], ResourceDefinition]
) -> Callable[[str], ColumnElement[bool]]:
    """`visible` for any type, as the FHIR store asks for it (searches `_include` other types)."""
    return lambda resource_type: visible(principal, lookup(resource_type))


def check_write(
    principal: Principal,
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
