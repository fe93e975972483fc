"""ImagingStudy and Endpoint: the FHIR face of the imaging index (FHIR R4 imagingstudy.html,
endpoint.html).

Each linked study (one whose patient is known) has an ImagingStudy kept by the imaging service
at ingest: identifier `urn:oid:<StudyInstanceUID>` (system `urn:dicom:uid`), subject, started,
modality and series modality as DICOM DCM codes, counts, every series and instance, and one
Endpoint with connectionType `dicom-wado-rs` whose address is this server's `/dicomweb`. Both
are read-only over FHIR: DICOM is the source of truth, so they change only through ingest.
The ImagingStudy's id is the Study Instance UID itself (a valid FHIR id: digits and dots,
at most 64), which is what a referral lists in supportingInfo and an access grant opens.
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy

from alliance.codes import RECORD_KEEPER
from alliance.directory.service import reference_id
from alliance.fhir.registry import ResourceDefinition, SearchParam
from imaging.views import StudyView

DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PAYLOAD_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"
_READ_ONLY = frozenset({"read", "vread", "history-instance", "search-type"})
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})")


def _keeper(resource: dict[str, Any]) -> str | None:
    for ext in resource.get("extension") or []:
        if ext.get("url") == RECORD_KEEPER:
            return reference_id(ext.get("valueReference"), "Organization")
    return None


def started(date: str | None, time: str | None, offset: str | None) -> str | None:
    """StudyDate/StudyTime as a FHIR dateTime. DICOM times carry no zone unless Timezone Offset
    From UTC (0008,0201) is given (PS3.3 C.12.1.1.8); the alliance reads them as Beijing time."""
    if not date:
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
    m = _TIME.fullmatch((time or "").strip())
    if not m:
        return day
    zone = "+08:00"
    o = _OFFSET.fullmatch((offset or "").strip())
    if o:
        zone = f"{o[1]}{o[2]}:{o[3]}"
    hh, mm, ss = m[1], m[2] or "00", m[3] or "00"
    return f"{day}T{hh}:{mm}:{ss}{m[4] or ''}{zone}"


def imaging_study(study: StudyView, dicomweb_base: str, endpoint_id: str) -> dict[str, Any]:
    """The ImagingStudy of an indexed study (a pure derivation: no I/O)."""
    hospital = {"reference": f"Organization/{study.hospital_id}"}
    identifiers: list[dict[str, Any]] = [
        {"system": DICOM_UID, "value": f"urn:oid:{study.study_uid}"}
    ]
    if study.accession_number:
        identifiers.append(
            {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "value": study.accession_number,
                "assigner": hospital,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "extension": [{"url": RECORD_KEEPER, "valueReference": hospital}],
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": f"Patient/{study.patient_id}"},
        "endpoint": [{"reference": f"Endpoint/{endpoint_id}"}],
        "numberOfSeries": len(study.series),
        "numberOfInstances": study.number_of_instances,
    }
    if study.modalities:
        resource["modality"] = [{"system": DCM, "code": m} for m in study.modalities]
    when = started(study.study_date, study.study_time, study.timezone_offset)
    if when:
        resource["started"] = when
    if study.study_description:
        resource["description"] = study.study_description
    series = []
    for s in study.series:
        entry: dict[str, Any] = {
            "uid": s.series_uid,
            "modality": {"system": DCM, "code": s.modality or "OT"},
            "numberOfInstances": len(s.instances),
            "endpoint": [{"reference": f"Endpoint/{endpoint_id}"}],
        }
        if s.series_number is not None and s.series_number >= 0:
            entry["number"] = s.series_number
        if s.series_description:
            entry["description"] = s.series_description
        series_started = started(s.series_date, s.series_time, study.timezone_offset)
        if series_started:
            entry["started"] = series_started
        entry["instance"] = [
            {
                "uid": i.sop_instance_uid,
                "sopClass": {"system": SOP_CLASS_SYSTEM, "code": f"urn:oid:{i.sop_class_uid}"},
                **({"number": i.instance_number} if i.instance_number is not None else {}),
            }
            for i in s.instances
        ]
        series.append(entry)
    if series:
        resource["series"] = series
    return resource


def endpoint(endpoint_id: str, dicomweb_base: str) -> dict[str, Any]:
    """The DICOMweb Endpoint every ImagingStudy points to (FHIR R4 endpoint.html)."""
    return {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {
            "system": CONNECTION_TYPE,
            "code": "dicom-wado-rs",
            "display": "DICOM WADO-RS",
        },
        "name": "Alliance DICOMweb (WADO-RS, QIDO-RS, STOW-RS)",
        "payloadType": [
            {"coding": [{"system": PAYLOAD_TYPE, "code": "any", "display": "Any"}], "text": "DICOM"}
        ],
        "payloadMimeType": ["application/dicom"],
        "address": dicomweb_base,
    }


def definitions() -> list[ResourceDefinition]:
    return [
        ResourceDefinition(
            "ImagingStudy",
            ImagingStudy,
            [
                SearchParam("patient", "reference", "subject", "The patient imaged", ("Patient",)),
                SearchParam(
                    "subject", "reference", "subject", "Who the study is about", ("Patient",)
                ),
                SearchParam(
                    "identifier",
                    "token",
                    "identifier",
                    "Study Instance UID (urn:dicom:uid|urn:oid:...) or accession number",
                ),
                SearchParam("started", "date", "started", "When the study started"),
                SearchParam(
                    "modality", "token", "series.modality", "Modality of a series (DCM code)"
                ),
                SearchParam("series", "token", "series.uid", "Series Instance UID"),
            ],
            "DICOM studies stored through DICOMweb or C-STORE, kept up to date at ingest; "
            "read-only here (the pixels and headers are served at the Endpoint, /dicomweb).",
            interactions=_READ_ONLY,
            access="clinical",
            patient_of=lambda r: reference_id(r.get("subject"), "Patient"),
            organization_of=_keeper,
        ),
        ResourceDefinition(
            "Endpoint",
            Endpoint,
            [
                SearchParam("connection-type", "token", "connectionType", "dicom-wado-rs, ..."),
                SearchParam("status", "token", "status", "active, ..."),
                SearchParam("name", "string", "name", "Name of the endpoint"),
            ],
            "Where imaging is served: the DICOMweb base URL of this server.",
            interactions=_READ_ONLY,
            access="directory",
        ),
    ]
