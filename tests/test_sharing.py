"""The sharing rule (issue: records leave a hospital only through a consented referral):
files referenced only by their own hospital's records, no re-sharing of what a grant opened,
the triage view before acceptance, and nothing derived from a grant outliving it. Every door
is walked through the public HTTP faces (FHIR, attachments, DICOMweb), on both databases."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pydicom
from fastapi.testclient import TestClient

from tests.imaging_data import AYGUL, ct_series, multipart, stow_headers
from tests.referrals import PDF, create, document, record_consent, request_body, task_body, upload

Users = Callable[..., TestClient]
REASON = {"statusReason": {"text": "患者要求取消"}}


def _move(client: TestClient, task_id: str, status: str, **changes: Any) -> Any:
    body = client.get(f"/fhir/Task/{task_id}").json()
    return client.put(f"/fhir/Task/{task_id}", json={**body, "status": status, **changes})


def _receive(client: TestClient, task_id: str) -> dict[str, Any]:
    """The hospital asked opens the request, which receives it (Task status `received`)."""
    task: dict[str, Any] = client.get(f"/fhir/Task/{task_id}").json()
    assert task["status"] == "received", task
    return task


def _path(url: str) -> str:
    return url.removeprefix("http://testserver")


def _ct_study(client: TestClient) -> str:
    slices = ct_series(2, patient_id=AYGUL)
    stored = client.post("/dicomweb/studies", content=multipart(slices), headers=stow_headers())
    assert stored.status_code == 200, stored.text
    return str(pydicom.dcmread(io.BytesIO(slices[0])).StudyInstanceUID)


def _refer(
    county: TestClient, target: str, supporting: list[str], performer: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    record_consent(county, "demo-aygul", (target,))
    sr = create(
        county,
        request_body("demo-aygul", performer=performer or target, supporting=supporting),
    )
    return sr, create(county, task_body(sr, target))


# ---- files -----------------------------------------------------------------------------------


def test_a_file_is_referenced_only_by_its_own_hospitals_records(as_user: Users) -> None:
    """新源县中医医院, never involved, names 新源县人民医院's PDF in records of its own (a
    document, a message-like extension, a patient photo): each write is refused with 422 and
    the file's bytes never reach it."""
    people = as_user("dr.xinyuan.people")
    tcm = as_user("dr.xinyuan.tcm")
    theirs = upload(people, PDF, "application/pdf", "出院小结")
    url = _path(theirs["url"])
    assert tcm.get(url).status_code == 404
    doc = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": "Patient/demo-ma-xiulan"},
        "content": [{"attachment": theirs}],
    }
    refused = tcm.post("/fhir/DocumentReference", json=doc)
    assert refused.status_code == 422, refused.text
    assert "uploaded by another hospital" in refused.json()["issue"][0]["diagnostics"]
    # Any element of any type that carries an Attachment: here Patient.photo.
    patient = tcm.get("/fhir/Patient/demo-ma-xiulan").json()
    with_photo = {**patient, "photo": [theirs]}
    assert tcm.put("/fhir/Patient/demo-ma-xiulan", json=with_photo).status_code == 422
    # ...and in an extension's valueAttachment, at any depth.
    hidden = {**doc, "content": [{"attachment": upload(tcm, PDF, "application/pdf")}]}
    hidden["extension"] = [{"url": "https://example.org/x", "valueAttachment": theirs}]
    assert tcm.post("/fhir/DocumentReference", json=hidden).status_code == 422
    assert tcm.get(url).status_code == 404
    # Its own hospital's file in its own record is fine, and the server states size and hash.
    own = upload(tcm, PDF, "application/pdf")
    ok = tcm.post(
        "/fhir/DocumentReference",
        json={**doc, "content": [{"attachment": {**own, "size": 1, "contentType": "text/plain"}}]},
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["content"][0]["attachment"]["size"] == len(PDF)
    assert tcm.get(_path(own["url"])).content == PDF


def test_a_message_cannot_carry_the_other_hospitals_file(as_user: Users) -> None:
    """The specialist's hospital, holding an accepted referral, cannot put the county
    hospital's file into a message of its own (which it would keep after the referral ends)."""
    county, city = as_user("dr.xinyuan.people"), as_user("sp.subei")
    summary = document(county, "demo-aygul")
    sr, task = _refer(county, "subei", [f"DocumentReference/{summary['id']}"])
    _receive(city, task["id"])
    assert _move(city, task["id"], "accepted").status_code == 200
    url = summary["content"][0]["attachment"]["url"]
    assert city.get(_path(url)).content == PDF  # opened by the accepted referral
    message = {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "subject": {"reference": "Patient/demo-aygul"},
        "payload": [{"contentAttachment": summary["content"][0]["attachment"]}],
    }
    refused = city.post("/fhir/Communication", json=message)
    assert refused.status_code == 422, refused.text
    # Cancelled: the file is no longer served to the city hospital by any path.
    assert _move(county, task["id"], "cancelled", **REASON).status_code == 200
    assert city.get(_path(url)).status_code == 404


def test_attachments_obey_the_tokens_scopes(as_user: Users) -> None:
    county = as_user("dr.xinyuan.people")
    url = _path(upload(county, PDF, "application/pdf")["url"])
    assert county.get(url).status_code == 200
    assert as_user("dr.xinyuan.people", "user/Organization.rs").get(url).status_code == 403
    assert as_user("dr.xinyuan.people", "user/DocumentReference.rs").get(url).status_code == 200


# ---- triage before acceptance ----------------------------------------------------------------


def test_triage_view_before_acceptance_and_closed_by_declining(as_user: Users) -> None:
    county, city = as_user("dr.xinyuan.people"), as_user("sp.subei")
    summary = document(county, "demo-aygul")
    study = _ct_study(county)
    sr, task = _refer(
        county, "subei", [f"DocumentReference/{summary['id']}", f"ImagingStudy/{study}"]
    )
    # The request whole: diagnoses, priority, summary, who asks.
    request = city.get(f"/fhir/ServiceRequest/{sr['id']}")
    assert request.status_code == 200
    assert request.json()["reasonCode"] == sr["reasonCode"]
    assert request.json()["note"] == sr["note"]
    # The patient: name, sex, birth date; no identity number, address or telecom.
    patient = city.get("/fhir/Patient/demo-aygul").json()
    assert patient["name"] == county.get("/fhir/Patient/demo-aygul").json()["name"]
    assert patient["gender"] == "female" and patient["birthDate"] == "1978-09-21"
    assert "identifier" not in patient and "address" not in patient and "telecom" not in patient
    assert patient["meta"]["tag"][-1]["code"] == "SUBSETTED"
    # Previews of what it lists: no file, no image.
    preview = city.get(f"/fhir/DocumentReference/{summary['id']}").json()
    assert preview["content"][0]["attachment"] == {
        "contentType": "application/pdf",
        "title": "病历摘要",
        "size": len(PDF),
        "creation": summary["content"][0]["attachment"]["creation"],
    }
    assert city.get(_path(summary["content"][0]["attachment"]["url"])).status_code == 404
    imaging = city.get(f"/fhir/ImagingStudy/{study}").json()
    assert imaging["numberOfInstances"] == 2 and "endpoint" not in imaging
    assert city.get(f"/dicomweb/studies/{study}/metadata").status_code == 404
    assert city.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json() == []
    # vread and history serve the subset too.
    assert "identifier" not in city.get("/fhir/Patient/demo-aygul/_history/1").json()
    history = city.get("/fhir/Patient/demo-aygul/_history").json()
    assert all("identifier" not in e["resource"] for e in history["entry"])
    # Writing about the patient needs the records opened in full.
    other_doc = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": "Patient/demo-aygul"},
        "content": [{"attachment": upload(city, PDF, "application/pdf")}],
    }
    assert city.post("/fhir/DocumentReference", json=other_doc).status_code == 404
    # Declining closes the triage view.
    _receive(city, task["id"])
    declined = _move(
        city,
        task["id"],
        "rejected",
        statusReason={"coding": [{"system": "x", "code": "no-capacity"}], "text": "床位已满"},
    )
    assert declined.status_code == 200, declined.text
    for url in (
        f"/fhir/ServiceRequest/{sr['id']}",
        "/fhir/Patient/demo-aygul",
        f"/fhir/DocumentReference/{summary['id']}",
        f"/fhir/ImagingStudy/{study}",
    ):
        assert city.get(url).status_code == 404, url


def test_a_reason_of_only_white_space_is_refused(as_user: Users) -> None:
    county, city = as_user("dr.xinyuan.people"), as_user("sp.subei")
    _, task = _refer(county, "subei", [])
    _receive(city, task["id"])
    blank = _move(city, task["id"], "rejected", statusReason={"text": "  \t\n "})
    assert blank.status_code == 422, blank.text
    blank = _move(county, task["id"], "cancelled", statusReason={"text": "   "})
    assert blank.status_code == 422, blank.text
    assert county.get(f"/fhir/Task/{task['id']}").json()["status"] == "received"


def test_a_second_acceptance_without_a_version_is_a_conflict(as_user: Users) -> None:
    county, city = as_user("dr.xinyuan.people"), as_user("sp.subei")
    _, task = _refer(county, "subei", [])
    received = _receive(city, task["id"])
    body = {**received, "status": "accepted"}
    body["meta"] = {k: v for k, v in body["meta"].items() if k != "versionId"}
    assert city.put(f"/fhir/Task/{task['id']}", json=body).status_code == 200
    assert city.put(f"/fhir/Task/{task['id']}", json=body).status_code == 409
    history = county.get(f"/fhir/Task/{task['id']}/_history").json()
    statuses = [e["resource"]["status"] for e in history["entry"]]
    assert statuses.count("accepted") == 1


# ---- no re-sharing; nothing derived outlives its grant ----------------------------------------


def test_no_resharing_and_nothing_derived_outlives_the_grant(as_user: Users) -> None:
    """苏北人民医院 holds an accepted referral from 新源县人民医院. It cannot list 新源县人民医院's
    document or CT in its own referral, consent or message for 扬州市中医院; a referral of its
    own opens only its own records; and once the original referral ends, 扬州市中医院 reaches
    nothing of 新源县人民医院's through any door."""
    county, city, third = (
        as_user("dr.xinyuan.people"),
        as_user("sp.subei"),
        as_user("sp.yz.tcm"),
    )
    summary = document(county, "demo-aygul")
    study = _ct_study(county)
    listed = [f"DocumentReference/{summary['id']}", f"ImagingStudy/{study}"]
    sr, task = _refer(county, "subei", listed)
    _receive(city, task["id"])
    assert _move(city, task["id"], "accepted").status_code == 200
    assert city.get(f"/dicomweb/studies/{study}/metadata").status_code == 200

    # Re-sharing is refused at every place a record is listed to share.
    form = upload(city, PDF, "application/pdf", "知情同意书")
    for ref in listed:
        onward = request_body("demo-aygul", performer="yz-tcm", supporting=[ref])
        r = city.post("/fhir/ServiceRequest", json=onward)
        assert r.status_code == 422, (ref, r.text)
        assert "only the hospital that keeps it" in r.json()["issue"][0]["diagnostics"]
    consent = record_consent_body(form, listed)
    assert city.post("/fhir/Consent", json=consent).status_code == 422
    message = {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "subject": {"reference": "Patient/demo-aygul"},
        "payload": [{"contentReference": {"reference": listed[0]}}],
    }
    assert city.post("/fhir/Communication", json=message).status_code == 422

    # A referral of its own to 扬州市中医院 (with its own consent and document) opens only
    # what 苏北人民医院 keeps: not 新源县人民医院's patient record.
    own_consent = city.post("/fhir/Consent", json=record_consent_body(form, []))
    assert own_consent.status_code == 201, own_consent.text
    opinion = document(city, "demo-aygul", title="会诊意见")
    onward = create(
        city,
        request_body(
            "demo-aygul",
            performer="yz-tcm",
            supporting=[f"DocumentReference/{opinion['id']}"],
        ),
    )
    onward_task = create(city, task_body(onward, "yz-tcm"))
    _receive(third, onward_task["id"])
    assert _move(third, onward_task["id"], "accepted").status_code == 200
    assert third.get(f"/fhir/DocumentReference/{opinion['id']}").status_code == 200
    assert third.get("/fhir/Patient/demo-aygul").status_code == 404

    # The original referral is cancelled: every door to 新源县人民医院's records is shut for
    # both other hospitals.
    assert _move(county, task["id"], "cancelled", **REASON).status_code == 200
    file_url = _path(summary["content"][0]["attachment"]["url"])
    for user in (city, third):
        for url in (
            f"/fhir/DocumentReference/{summary['id']}",
            f"/fhir/DocumentReference/{summary['id']}/_history/1",
            f"/fhir/DocumentReference/{summary['id']}/_history",
            f"/fhir/ImagingStudy/{study}",
            "/fhir/Patient/demo-aygul",
            file_url,
            f"/dicomweb/studies/{study}/metadata",
            f"/dicomweb/studies/{study}/rendered",
        ):
            assert user.get(url).status_code == 404, url
        for rtype, rid in (("DocumentReference", summary["id"]), ("ImagingStudy", study)):
            found = user.get(f"/fhir/{rtype}", params={"_id": rid}).json()
            assert found.get("entry", []) == [], (rtype, rid)
        included = user.get(
            "/fhir/ServiceRequest",
            params={"_id": onward["id"], "_include": "ServiceRequest:supporting-info"},
        ).json()
        ids = {e["resource"]["id"] for e in included.get("entry", [])}
        assert summary["id"] not in ids and study not in ids
        assert user.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json() == []
        assert user.get(f"/dicomweb/studies/{study}/series").json() == []


def record_consent_body(form: dict[str, Any], data: list[str]) -> dict[str, Any]:
    """苏北人民医院's own consent of the patient for 扬州市中医院, listing `data` to share."""
    from tests.referrals import consent_body

    body = consent_body("demo-aygul", form, ("yz-tcm",))
    if data:
        body["provision"]["data"] = [
            {"meaning": "instance", "reference": {"reference": r}} for r in data
        ]
    return body


def test_the_portal_shows_the_specialist_the_triage_view(
    as_user: Users, app: Any, client: TestClient
) -> None:
    """The specialist's referral page before acceptance: the patient's name, the diagnosis and
    what the request lists, by title only (no link to the file or the images), and no
    identity number anywhere on the page."""
    from tests.accounts import portal as sign_in

    county = as_user("dr.xinyuan.people")
    summary = document(county, "demo-aygul", title="入院病历摘要")
    study = _ct_study(county)
    _, task = _refer(
        county, "subei", [f"DocumentReference/{summary['id']}", f"ImagingStudy/{study}"]
    )
    sign_in(client, "sp.subei")
    page = client.get(f"/referrals/{task['id']}")
    assert page.status_code == 200, page.text
    assert "阿依古丽·努尔兰" in page.text and "急性心肌梗死" in page.text
    assert "入院病历摘要" in page.text and "接受转诊后可查看" in page.text
    assert summary["content"][0]["attachment"]["url"] not in page.text
    assert f"/viewer/{study}" not in page.text
    assert AYGUL not in page.text
