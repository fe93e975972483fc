"""Images uploaded after a referral was sent are added to it while it is open
(referral.commands.add_studies: a message carrying each ImagingStudy), and the referral's grant
then covers them: for triage while the hospital asked decides, in full once it accepted, closed
and ended with the referral. Added through the FHIR API and through the portal, on both
databases; WADO-RS answers exactly as the grant allows."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import pydicom
from fastapi.testclient import TestClient

from alliance.codes import RULE
from referral.commands import CONSULT_NOTE
from tests.accounts import portal as sign_in
from tests.imaging_data import AYGUL, ct_series, multipart, stow_headers
from tests.referrals import create, document, record_consent, request_body, task_body

Users = Callable[..., TestClient]


def stored_study(client: TestClient) -> str:
    """A CT study of 阿依古丽 stored now by `client`'s hospital (STOW-RS): its UID, which is
    its ImagingStudy's id."""
    slices = ct_series(2, patient_id=AYGUL)
    stored = client.post("/dicomweb/studies", content=multipart(slices), headers=stow_headers())
    assert stored.status_code == 200, stored.text
    return str(pydicom.dcmread(io.BytesIO(slices[0])).StudyInstanceUID)


def refer(county: TestClient, studies: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    record_consent(county, "demo-aygul", ("subei",))
    sr = create(
        county,
        request_body(
            "demo-aygul", performer="subei", supporting=[f"ImagingStudy/{s}" for s in studies]
        ),
    )
    return sr, create(county, task_body(sr, "subei"))


def carrying(sr: dict[str, Any], studies: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "subject": {"reference": "Patient/demo-aygul"},
        "payload": [{"contentReference": {"reference": f"ImagingStudy/{s}"}} for s in studies],
    }


def move(client: TestClient, task_id: str, status: str, **changes: Any) -> int:
    body = client.get(f"/fhir/Task/{task_id}").json()
    put = client.put(f"/fhir/Task/{task_id}", json={**body, "status": status, **changes})
    return put.status_code


def retrieve(client: TestClient, study: str) -> int:
    """WADO-RS retrieve of the whole study (PS3.18 10.4)."""
    return client.get(
        f"/dicomweb/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    ).status_code


def rule_of(response: Any) -> tuple[int, str]:
    issue = response.json()["issue"][0]
    coding = issue["details"]["coding"][0]
    assert coding["system"] == RULE
    return response.status_code, coding["code"]


def test_a_study_added_to_an_open_referral_is_shared_under_its_grant(as_user: Users) -> None:
    county, city = as_user("dr.xinyuan.people"), as_user("sp.subei")
    sent_with = stored_study(county)
    sr, task = refer(county, [sent_with])
    later = stored_study(county)  # uploaded after the referral was sent
    assert (retrieve(city, later), city.get(f"/fhir/ImagingStudy/{later}").status_code) == (
        404,
        404,
    )

    # Added while the hospital asked decides: a preview for triage, no images yet.
    assert county.post("/fhir/Communication", json=carrying(sr, [later])).status_code == 201
    preview = city.get(f"/fhir/ImagingStudy/{later}")
    assert preview.status_code == 200
    assert preview.json()["meta"]["tag"][-1]["code"] == "SUBSETTED"
    assert retrieve(city, later) == 404

    # Accepted: every study of the referral in full, the one added too.
    assert city.get(f"/fhir/Task/{task['id']}").json()["status"] == "received"
    assert move(city, task["id"], "accepted") == 200
    assert (retrieve(city, sent_with), retrieve(city, later)) == (200, 200)

    # One more, after acceptance: in full at once. The specialist adds nothing of the county
    # hospital's: not what it cannot see (404), nor what it sees through the grant (not its
    # own to share).
    third = stored_study(county)
    assert retrieve(city, third) == 404
    assert city.post("/fhir/Communication", json=carrying(sr, [third])).status_code == 404
    assert rule_of(city.post("/fhir/Communication", json=carrying(sr, [later]))) == (
        422,
        "record-not-yours-to-share",
    )
    assert county.post("/fhir/Communication", json=carrying(sr, [third])).status_code == 201
    assert retrieve(city, third) == 200

    # Completed: nothing more is added (messages still are), and nothing of it is shared.
    opinion = document(city, "demo-aygul", CONSULT_NOTE, "会诊意见")
    output = [
        {
            "type": {"text": "opinion"},
            "valueReference": {"reference": f"DocumentReference/{opinion['id']}"},
        }
    ]
    assert move(city, task["id"], "in-progress") == 200
    assert move(city, task["id"], "completed", output=output) == 200
    fourth = stored_study(county)
    refused = county.post("/fhir/Communication", json=carrying(sr, [fourth]))
    assert rule_of(refused) == (422, "referral-records-closed")
    assert retrieve(city, fourth) == 404
    assert city.get(f"/fhir/ImagingStudy/{fourth}").status_code == 404


def test_the_county_doctor_adds_a_study_on_the_referral_page(app: Any, as_user: Users) -> None:
    """Offered: the patient's studies the county hospital holds and the referral does not
    carry yet; added, the specialist's hospital sees it; refused in Chinese once it ended."""
    county_api, city = as_user("dr.xinyuan.people"), as_user("sp.subei")
    sent_with = stored_study(county_api)
    _sr, task = refer(county_api, [sent_with])
    later, last = stored_study(county_api), stored_study(county_api)
    page = TestClient(app)
    csrf = sign_in(page, "dr.xinyuan.people")
    offered = re.findall(r'name="study" value="([^"]+)"', page.get(f"/referrals/{task['id']}").text)
    assert sorted(offered) == sorted([later, last])
    added = page.post(
        f"/referrals/{task['id']}/studies",
        data={"csrf": csrf, "study": later},
        follow_redirects=False,
    )
    assert added.status_code == 303, added.text
    again = page.get(f"/referrals/{task['id']}").text
    assert re.findall(r'name="study" value="([^"]+)"', again) == [last]
    assert city.get(f"/fhir/ImagingStudy/{later}").status_code == 200  # triage preview
    assert city.get(f"/fhir/ImagingStudy/{last}").status_code == 404

    assert move(county_api, task["id"], "cancelled", statusReason={"text": "患者要求取消"}) == 200
    assert 'name="study"' not in page.get(f"/referrals/{task['id']}").text  # no control
    refused = page.post(f"/referrals/{task['id']}/studies", data={"csrf": csrf, "study": last})
    assert refused.status_code == 422
    assert "转诊已结束，不能再添加影像或资料。" in refused.text, refused.text
    assert city.get(f"/fhir/ImagingStudy/{last}").status_code == 404
