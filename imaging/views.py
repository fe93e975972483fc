"""The imaging index as the FHIR ImagingStudy derivation sees it (fhir_mappings.imaging): plain
views of a study, its series and instances, read from the index rows, and the derivers'
signatures. The derivation itself lives in fhir_mappings, which imaging must not import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging.models import Instance, Series, Study


@dataclass
class InstanceView:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    number_of_frames: int | None


@dataclass
class SeriesView:
    series_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    series_date: str | None
    series_time: str | None
    instances: list[InstanceView] = field(default_factory=list)


@dataclass
class StudyView:
    """A study as the FHIR ImagingStudy derivation sees it (fhir_mappings.imaging)."""

    study_uid: str
    hospital_id: str
    patient_id: str
    study_date: str | None
    study_time: str | None
    timezone_offset: str | None
    accession_number: str | None
    study_description: str | None
    modalities: list[str]
    number_of_instances: int
    series: list[SeriesView]


#: (the study, the DICOMweb base URL, the Endpoint id) -> the ImagingStudy resource.
StudyDeriver = Callable[[StudyView, str, str], dict[str, Any]]
#: (the Endpoint id, the DICOMweb base URL) -> the Endpoint resource.
EndpointDeriver = Callable[[str, str], dict[str, Any]]


def study_view(session: Session, study: Study) -> StudyView:
    assert study.patient_id is not None
    series_rows = list(
        session.scalars(
            select(Series)
            .where(Series.study_uid == study.study_uid)
            .order_by(Series.series_number, Series.series_uid)
        )
    )
    instances: dict[str, list[InstanceView]] = {}
    for row in session.execute(
        select(
            Instance.series_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.instance_number,
            Instance.number_of_frames,
        )
        .where(Instance.study_uid == study.study_uid)
        .order_by(Instance.instance_number, Instance.sop_instance_uid)
    ):
        instances.setdefault(row[0], []).append(InstanceView(row[1], row[2], row[3], row[4]))
    return StudyView(
        study_uid=study.study_uid,
        hospital_id=study.hospital_id,
        patient_id=study.patient_id,
        study_date=study.study_date,
        study_time=study.study_time,
        timezone_offset=study.timezone_offset,
        accession_number=study.accession_number,
        study_description=study.study_description,
        modalities=[m for m in study.modalities.split("\\") if m],
        number_of_instances=study.number_of_instances,
        series=[
            SeriesView(
                s.series_uid,
                s.modality,
                s.series_number,
                s.series_description,
                s.series_date,
                s.series_time,
                instances.get(s.series_uid, []),
            )
            for s in series_rows
        ],
    )
