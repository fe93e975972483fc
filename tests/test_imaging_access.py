"""Who may see a study over DICOMweb and FHIR: the uploading hospital; another hospital only
while an access grant (made by a referral or consult that lists the ImagingStudy) is in force;
a study held for reconciliation only its own hospital's clinical users."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pydicom
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from alliance.security.service import close_grants, open_grant
from tests.imaging_data import AYGUL, ct_series, ct_slice, encode, multipart, stow_headers

REASON = "ServiceRequest/imaging-access-test"


def store(client: TestClient, parts: list[bytes]) -> tuple[str, str, str]:
    r = client.post("/dicomweb/studies", content=multipart(parts), headers=stow_headers())
    assert r.status_code == 200, r.text
    ds = pydicom.dcmread(io.BytesIO(parts[0]))
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def reach(client: TestClient, uids: tuple[str, str, str]) -> dict[str, int | list[str]]:
    """What a user gets of one study over every face that serves it."""
    study, series, instance = uids
    base = f"/dicomweb/studies/{study}"
    one = f"{base}/series/{series}/instances/{instance}"
    qido = client.get("/dicomweb/studies")
    return {
        "qido": [r["0020000D"]["Value"][0] for r in qido.json()] if qido.status_code == 200 else [],
        "qido-series": len(client.get("/dicomweb/series").json()),
        "qido-instances": len(client.get(f"{base}/instances").json()),
        "retrieve": client.get(base).status_code,
        "metadata": client.get(f"{base}/metadata").status_code,
        "frames": client.get(f"{one}/frames/1").status_code,
        "rendered": client.get(f"{one}/rendered").status_code,
        "thumbnail": client.get(f"{base}/thumbnail").status_code,
        "bulkdata": client.get(f"{one}/bulkdata/7FE00010").status_code,
        "fhir-read": client.get(f"/fhir/ImagingStudy/{study}").status_code,
        "fhir-search": [
            e["resource"]["id"] for e in client.get("/fhir/ImagingStudy").json().get("entry", [])
        ],
    }


def nothing(study: str) -> dict[str, int | list[str]]:
    return {
        "qido": [],
        "qido-series": 0,
        "qido-instances": 0,
        "retrieve": 404,
        "metadata": 404,
        "frames": 404,
        "rendered": 404,
        "thumbnail": 404,
        "bulkdata": 404,
        "fhir-read": 404,
        "fhir-search": [],
    }


def everything(study: str) -> dict[str, int | list[str]]:
    return {
        "qido": [study],
        "qido-series": 1,
        "qido-instances": 2,
        "retrieve": 200,
        "metadata": 200,
        "frames": 200,
        "rendered": 200,
        "thumbnail": 200,
        "bulkdata": 200,
        "fhir-read": 200,
        "fhir-search": [study],
    }


def test_another_hospital_sees_a_study_only_while_a_grant_opens_it(
    app: FastAPI, as_user: Callable[[str], TestClient]
) -> None:
    doctor, specialist = as_user("dr.xinyuan.people"), as_user("sp.subei")
    shared = store(doctor, ct_series(2))
    other = store(doctor, ct_series(2))  # same patient, never shared
    assert set(reach(doctor, shared)["qido"]) == {shared[0], other[0]}  # type: ignore[arg-type]
    assert reach(specialist, shared) == nothing(shared[0])

    db = app.state.services.db
    with db.transaction(write=True) as session:
        open_grant(
            session=session,
            patient_id="demo-aygul",
            hospital_id="subei",
            reason=REASON,
            resources=[("ImagingStudy", shared[0])],
        )
    assert reach(specialist, shared) == everything(shared[0])
    assert reach(specialist, other) == {
        **nothing(other[0]),
        "qido": [shared[0]],
        "qido-series": 1,
        "fhir-search": [shared[0]],
    }
    # Another hospital that was not named sees nothing.
    assert reach(as_user("sp.yz.tcm"), shared) == nothing(shared[0])

    with db.transaction(write=True) as session:
        assert close_grants(session=session, reason=REASON, why="referral completed") == 1
    assert reach(specialist, shared) == nothing(shared[0])


def test_an_ended_grant_opens_nothing(app: FastAPI, as_user: Callable[[str], TestClient]) -> None:
    doctor, specialist = as_user("dr.xinyuan.people"), as_user("sp.subei")
    shared = store(doctor, ct_series(2))
    with app.state.services.db.transaction(write=True) as session:
        open_grant(
            session=session,
            patient_id="demo-aygul",
            hospital_id="subei",
            reason=REASON,
            resources=[("ImagingStudy", shared[0])],
            valid_from=datetime.now(UTC) - timedelta(days=2),
            valid_until=datetime.now(UTC) - timedelta(days=1),
        )
    assert reach(specialist, shared) == nothing(shared[0])


def test_a_held_study_is_seen_by_its_hospital_only_until_linked(
    app: FastAPI, as_user: Callable[[str], TestClient]
) -> None:
    doctor = as_user("dr.xinyuan.people")
    study_uid, series_uid = generate_uid(), generate_uid()
    parts = [
        encode(
            ct_slice(
                study_uid=study_uid,
                series_uid=series_uid,
                number=n,
                patient_id="UNKNOWN-42",
                patient_name="Unknown^Patient",
            )
        )
        for n in (1, 2)
    ]
    # The uploader is told the study is stored but held, matching no patient (a Warning).
    answer = doctor.post("/dicomweb/studies", content=multipart(parts), headers=stow_headers())
    assert answer.status_code == 200
    assert answer.headers["warning"] == (
        '299 - "stored, but matched no patient of this hospital: held for reconciliation: '
        f'{study_uid}"'
    )
    ds = pydicom.dcmread(io.BytesIO(parts[0]))
    held = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    seen = reach(doctor, held)
    assert seen == {**everything(study_uid), "fhir-read": 404, "fhir-search": []}
    for user in ("dr.xinyuan.tcm", "sp.subei"):
        assert reach(as_user(user), held) == nothing(study_uid)

    # Its hospital lists it, and links it to the right patient (no other hospital can).
    listed = doctor.get("/api/imaging/held").json()
    assert [(h["study_uid"], h["dicom_patient_id"], h["instances"]) for h in listed] == [
        (study_uid, "UNKNOWN-42", 2)
    ]
    assert as_user("dr.xinyuan.tcm").get("/api/imaging/held").json() == []
    link = f"/api/imaging/held/{study_uid}/link"
    assert (
        as_user("dr.xinyuan.tcm").post(link, json={"patient": "Patient/demo-memet"}).status_code
        == 404
    )
    assert doctor.post(link, json={"patient": "Patient/no-such"}).status_code == 404
    assert doctor.post(link, content=b"not json").status_code == 400
    assert (
        as_user("admin.xinyuan.people").post(link, json={"patient": "demo-memet"}).status_code
        == 403
    )
    r = doctor.post(link, json={"patient": "Patient/demo-memet"})
    assert (r.status_code, r.json()) == (200, {"study": study_uid, "patient": "Patient/demo-memet"})
    assert doctor.get("/api/imaging/held").json() == []
    assert doctor.post(link, json={"patient": "Patient/demo-aygul"}).status_code == 422
    linked = doctor.get(f"/fhir/ImagingStudy/{study_uid}").json()
    assert linked["subject"]["reference"] == "Patient/demo-memet"
    assert linked["numberOfInstances"] == 2


def test_a_study_of_a_known_patient_carries_no_warning(
    as_user: Callable[[str], TestClient],
) -> None:
    r = as_user("dr.xinyuan.people").post(
        "/dicomweb/studies",
        content=multipart(ct_series(1, patient_id=AYGUL)),
        headers=stow_headers(),
    )
    assert r.status_code == 200 and "warning" not in r.headers


def test_users_without_the_clinical_capability_see_no_imaging(
    as_user: Callable[[str], TestClient],
) -> None:
    store(as_user("dr.xinyuan.people"), ct_series(1, patient_id=AYGUL))
    auditor = as_user("auditor")
    assert auditor.get("/dicomweb/studies").status_code == 403  # no ImagingStudy scope
    assert as_user("admin.xinyuan.people").get("/dicomweb/studies").status_code == 403


def test_a_narrower_token_scope_is_enforced(as_user: Callable[[str], TestClient]) -> None:
    read_only = as_user("dr.xinyuan.people", "user/ImagingStudy.rs")
    assert read_only.get("/dicomweb/studies").status_code == 200
    r = read_only.post("/dicomweb/studies", content=multipart(ct_series(1)), headers=stow_headers())
    assert r.status_code == 403
