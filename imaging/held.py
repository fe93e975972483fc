"""Studies held for reconciliation: stored by a hospital, matching none of its patients (the
DICOM PatientID was no identity number or MRN it knows). Its clinical staff list them and
link each to the right patient (`Imaging.link_study`), which makes the study that patient's
ImagingStudy; until then only that hospital sees it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alliance.errors import BadRequest, Forbidden
from alliance.http import BEARER, path_parameters, read_limited, responses
from alliance.records import reference_id
from alliance.security.access import Principal
from alliance.security.guard import Guard, Interaction, Touched
from imaging.models import Instance, Study
from imaging.service import Imaging

_LINK = "/api/imaging/held/{study_uid}/link"


@dataclass(frozen=True)
class HeldStudy:
    study_uid: str
    patient_name: str | None
    dicom_patient_id: str | None
    patient_birth_date: str | None
    study_date: str | None
    description: str | None
    instances: int


def held_studies(session: Session, hospital_id: str) -> list[HeldStudy]:
    """The hospital's studies that match no patient, newest first."""
    rows = session.execute(
        select(
            Study.study_uid,
            Study.patient_name,
            Study.dicom_patient_id,
            Study.patient_birth_date,
            Study.study_date,
            Study.study_description,
            func.count(Instance.sop_instance_uid),
        )
        .join(Instance, Instance.study_uid == Study.study_uid, isouter=True)
        .where(Study.hospital_id == hospital_id, Study.patient_id.is_(None))
        .group_by(Study.study_uid)
        .order_by(Study.study_date.desc(), Study.study_uid)
    )
    return [HeldStudy(*row) for row in rows]


def may_reconcile(principal: Principal) -> None:
    principal.check_scope("ImagingStudy", "update")
    if "clinical" not in principal.capabilities:
        raise Forbidden(f"the role {principal.role} does not handle imaging")


def held_router(guard: Guard, imaging: Imaging) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["imaging"])

    @router.get(
        "/imaging/held",
        response_class=Response,
        responses=responses({200: {"application/json": {"type": "array"}}}, [401, 403, 503]),
        openapi_extra={"security": BEARER},
    )
    async def listed(request: Request) -> JSONResponse:
        """The caller's hospital's studies held for reconciliation (matching no patient)."""
        found = await guard.run(
            request,
            Interaction("search", query="held studies", type="query"),
            lambda session, ctx: held_studies(session, ctx.principal.hospital_id),
            lambda studies: [Touched(f"ImagingStudy/{s.study_uid}", None) for s in studies],
            check=may_reconcile,
        )
        return JSONResponse([asdict(s) for s in found])

    @router.post(
        _LINK.removeprefix("/api"),
        response_class=Response,
        responses=responses(
            {200: {"application/json": {"type": "object"}}}, [400, 401, 403, 404, 422, 503]
        ),
        openapi_extra={
            "security": BEARER,
            "parameters": path_parameters(_LINK),
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"patient": {"type": "string"}},
                            "required": ["patient"],
                        }
                    }
                }
            },
        },
    )
    async def link(request: Request) -> JSONResponse:
        """Link a held study to a patient the hospital keeps (`{"patient": "Patient/id"}`):
        it becomes that patient's ImagingStudy. 404 for a study or patient the hospital does
        not have; 422 for a study linked to another patient already."""
        study_uid = request.path_params["study_uid"]
        raw = b"".join([chunk async for chunk in read_limited(request, 4096)])
        patient_id = _patient_of(raw)

        def work(session: Session, ctx: Any) -> str:
            imaging.link_study(
                session, study_uid, patient_id, hospital_id=ctx.principal.hospital_id
            )
            return patient_id

        await guard.run(
            request,
            Interaction("update", f"ImagingStudy/{study_uid}"),
            work,
            lambda pid: [Touched(f"ImagingStudy/{study_uid}", pid)],
            check=may_reconcile,
        )
        return JSONResponse({"study": study_uid, "patient": f"Patient/{patient_id}"})

    return router


def _patient_of(raw: bytes) -> str:
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise BadRequest('the body is JSON: {"patient": "Patient/id"}') from None
    given = body.get("patient") if isinstance(body, dict) else None
    if not isinstance(given, str) or not given.strip():
        raise BadRequest('name the patient: {"patient": "Patient/id"}')
    found = reference_id({"reference": given}, "Patient") if "/" in given else given.strip()
    if not found:
        raise BadRequest('name the patient: {"patient": "Patient/id"}')
    return found
