"""A referral up and back down, end to end over real HTTP with a real FHIR client (fhirpy)
and two users' tokens from /auth/token."""

from __future__ import annotations

import io

import httpx
import pydicom
from fhirpy import SyncFHIRClient

from tests.conftest import LiveServer
from tests.imaging_data import AYGUL, ct_series, multipart, stow_headers
from tests.referrals import (
    CONSULT_NOTE,
    DISCHARGE,
    PDF,
    PNG,
    consent_body,
    request_body,
    task_body,
)


def signed_in(server: LiveServer, username: str) -> tuple[SyncFHIRClient, httpx.Client]:
    r = httpx.post(
        f"{server.url}/auth/token",
        data={"grant_type": "password", "username": username, "password": "alliance-demo"},
    )
    assert r.status_code == 200, r.text
    auth = f"Bearer {r.json()['access_token']}"
    fhir = SyncFHIRClient(f"{server.url}/fhir", authorization=auth)
    http = httpx.Client(base_url=server.url, headers={"Authorization": auth}, timeout=30)
    return fhir, http


def attach(http: httpx.Client, data: bytes, ctype: str, title: str) -> dict:
    r = http.post(
        "/api/attachments", content=data, headers={"Content-Type": ctype}, params={"title": title}
    )
    assert r.status_code == 201, r.text
    return r.json()


def document(fhir: SyncFHIRClient, http: httpx.Client, patient: str, loinc: str, title: str):
    doc = fhir.resource(
        "DocumentReference",
        status="current",
        type={"coding": [{"system": "http://loinc.org", "code": loinc}]},
        subject={"reference": f"Patient/{patient}"},
        content=[{"attachment": attach(http, PDF, "application/pdf", title)}],
    )
    doc.save()
    return doc


def test_referral_up_and_back_down(live_server: LiveServer) -> None:
    county, county_http = signed_in(live_server, "dr.xinyuan.people")
    city, city_http = signed_in(live_server, "sp.subei")

    # The county doctor records the patient's consent, with the photographed signed form.
    form = attach(county_http, PNG, "image/png", "知情同意书")
    consent = county.resource("Consent", **consent_body("demo-aygul", form))
    consent.save()
    summary = document(county, county_http, "demo-aygul", "34133-9", "病历摘要")
    # ...uploads her CT (STOW-RS), linked to her by the identity number in PatientID...
    slices = ct_series(4, patient_id=AYGUL)
    stored = county_http.post(
        "/dicomweb/studies", content=multipart(slices), headers=stow_headers()
    )
    assert stored.status_code == 200, stored.text
    study_uid = pydicom.dcmread(io.BytesIO(slices[0])).StudyInstanceUID

    # ...and sends the referral up to 苏北人民医院's cardiology department, sharing both.
    sr = county.resource(
        "ServiceRequest",
        **request_body(
            "demo-aygul",
            supporting=[f"DocumentReference/{summary.id}", f"ImagingStudy/{study_uid}"],
        ),
    )
    sr.save()
    task = county.resource("Task", **task_body(sr.serialize(), "subei"))
    task.save()
    assert task["status"] == "requested"

    # It is in the specialist's worklist; the patient is not readable yet.
    worklist = (
        city.resources("Task")
        .search(owner="Organization/subei", status="requested,received")
        .fetch_all()
    )
    assert task.id in {t.id for t in worklist}
    # Before acceptance: the triage view (the patient's name, sex and birth date, a preview of
    # the summary), but no identity number, no file and no image.
    preview = city.reference("Patient", "demo-aygul").to_resource()
    assert preview["name"][0]["text"] == "阿依古丽·努尔兰" and "identifier" not in preview
    doc_preview = city.reference("DocumentReference", summary.id).to_resource()
    assert "url" not in doc_preview["content"][0]["attachment"]
    assert city_http.get(summary["content"][0]["attachment"]["url"]).status_code == 404
    assert city_http.get(f"/dicomweb/studies/{study_uid}/metadata").status_code == 404

    # Opening it receives it; accepting opens the shared records.
    mine = city.reference("Task", task.id).to_resource()
    assert mine["status"] == "received"
    mine["status"] = "accepted"
    mine.save()
    patient = city.reference("Patient", "demo-aygul").to_resource()
    assert patient["name"][0]["text"] == "阿依古丽·努尔兰"
    assert city.reference("DocumentReference", summary.id).to_resource()["subject"]
    url = summary["content"][0]["attachment"]["url"]
    assert city_http.get(url).content == PDF
    # ...the images too, through DICOMweb.
    found = city_http.get("/dicomweb/studies", params={"StudyInstanceUID": study_uid})
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [study_uid]
    assert len(city_http.get(f"/dicomweb/studies/{study_uid}/metadata").json()) == 4

    # The specialist sees the patient, then completes with the opinion.
    mine["status"] = "in-progress"
    mine.save()
    opinion = document(city, city_http, "demo-aygul", CONSULT_NOTE, "会诊意见")
    mine["status"] = "completed"
    mine["output"] = [
        {
            "type": {"text": "consult opinion"},
            "valueReference": {"reference": f"DocumentReference/{opinion.id}"},
        }
    ]
    mine.save()

    # The county doctor reads the outcome.
    done = county.reference("Task", task.id).to_resource()
    assert done["status"] == "completed"
    out = done["output"][0]["valueReference"]["reference"]
    assert county.get("DocumentReference", out.split("/")[1])["type"]["coding"][0]["code"] == (
        CONSULT_NOTE
    )
    assert county.reference("ServiceRequest", sr.id).to_resource()["status"] == "completed"

    # The specialist sends the patient back down with a discharge summary and a plan.
    discharge = document(city, city_http, "demo-aygul", DISCHARGE, "出院小结")
    plan = city.resource(
        "CarePlan",
        status="active",
        intent="plan",
        subject={"reference": "Patient/demo-aygul"},
        activity=[
            {"detail": {"kind": "Appointment", "status": "scheduled", "description": "2周后复诊"}},
            {
                "detail": {
                    "kind": "MedicationRequest",
                    "status": "scheduled",
                    "description": "阿司匹林",
                }
            },
        ],
    )
    plan.save()
    down = city.resource(
        "ServiceRequest",
        **request_body(
            "demo-aygul",
            performer="xy-people",
            category="down-referral",
            basedOn=[{"reference": f"ServiceRequest/{sr.id}"}],
            supporting=[f"DocumentReference/{discharge.id}", f"CarePlan/{plan.id}"],
        ),
    )
    down.save()
    down_task = city.resource("Task", **task_body(down.serialize(), "xy-people"))
    down_task.save()

    # The county side receives, accepts and completes it.
    back = county.reference("Task", down_task.id).to_resource()
    assert back["status"] == "received"
    for status in ("accepted", "in-progress"):
        back["status"] = status
        back.save()
    follow_up = document(county, county_http, "demo-aygul", "11506-3", "随访记录")
    back["status"] = "completed"
    back["output"] = [
        {
            "type": {"text": "follow-up"},
            "valueReference": {"reference": f"DocumentReference/{follow_up.id}"},
        }
    ]
    back.save()
    assert city.reference("Task", down_task.id).to_resource()["status"] == "completed"
    plan_seen = county.reference("CarePlan", plan.id).to_resource()
    assert plan_seen["activity"][0]["detail"]["description"] == "2周后复诊"
