"""Who may see a study, as SQL: the access rule of the imaging index, and lookups under it.

A study the caller may not see is exactly as absent as one that does not exist, so every
lookup here answers `NotFound` for both (ARCHITECTURE: existence does not leak).
"""

from __future__ import annotations

from sqlalchemy import Select, and_, false, or_, select
from sqlalchemy.orm import Session

from alliance.errors import NotFound
from alliance.fhir.models import ResourceRow
from alliance.fhir.types import Visibility
from alliance.security.guard import Context
from imaging.models import Instance, Study

IMAGING_STUDY = "ImagingStudy"


def reachable_studies(
    principal_hospital: str, capabilities: frozenset[str], visible: Visibility
) -> Select[Study]:
    """`select(Study)` limited to the studies the caller may see, filtered in SQL.

    A linked study is visible exactly when its FHIR ImagingStudy is opened in full
    (alliance.security.access: the owning hospital, the hospital keeping the patient, a full
    grant in force; a request's triage preview shows the ImagingStudy, never the images); a
    held study only to its own hospital's clinical users.
    """
    held = (
        and_(Study.patient_id.is_(None), Study.hospital_id == principal_hospital)
        if "clinical" in capabilities
        else false()
    )
    return (
        select(Study)
        .outerjoin(
            ResourceRow,
            and_(
                ResourceRow.resource_type == IMAGING_STUDY,
                ResourceRow.id == Study.study_uid,
                ResourceRow.deleted.is_(False),
            ),
        )
        .where(or_(and_(ResourceRow.id.is_not(None), visible.full(IMAGING_STUDY)), held))
    )


def visible_study_uids(
    principal_hospital: str, capabilities: frozenset[str], visible: Visibility
) -> Select[str]:
    """The same rule as a subquery of study UIDs, for series and instance queries."""
    query = reachable_studies(principal_hospital, capabilities, visible)
    return query.with_only_columns(Study.study_uid)


def visible_studies(ctx: Context) -> Select[Study]:
    """`reachable_studies` for the principal of a guarded unit of work."""
    p = ctx.principal
    return reachable_studies(p.hospital_id, p.capabilities, ctx.visible)


def find_study(session: Session, ctx: Context, study_uid: str) -> Study:
    """The study, if the caller may see it; `NotFound` otherwise."""
    study: Study | None = session.scalars(
        visible_studies(ctx).where(Study.study_uid == study_uid)
    ).first()
    if study is None:
        raise NotFound(f"study {study_uid} is not known")
    return study


def find_instances(
    session: Session,
    study: Study,
    series_uid: str | None = None,
    instance_uid: str | None = None,
) -> list[Instance]:
    """The study's instances (of one series, or the one instance), in series and instance
    order; `NotFound` when there is none."""
    query = select(Instance).where(Instance.study_uid == study.study_uid)
    if series_uid is not None:
        query = query.where(Instance.series_uid == series_uid)
    if instance_uid is not None:
        query = query.where(Instance.sop_instance_uid == instance_uid)
    rows = list(
        session.scalars(
            query.order_by(Instance.series_uid, Instance.instance_number, Instance.sop_instance_uid)
        )
    )
    if not rows:
        what = instance_uid or series_uid or study.study_uid
        raise NotFound(f"{what} is not known")
    return rows
