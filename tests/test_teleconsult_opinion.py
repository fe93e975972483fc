"""The consult and its opinion: the Encounter (class VR) from start to end, the opinion drafted,
signed (Provenance with a verifiable signature, an HTML rendering, the Task's output, the
consult completed), never changed once signed, and amended as a new version."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient

from alliance import clock
from alliance.config import Settings
from alliance.db import Database
from alliance.security.service import OPERATOR, create_user
from teleconsult.opinion import REPLACES, verify_signature
from tests.conftest import bearer
from tests.teleconsults import (
    AMENDMENT_REASON,
    beijing,
    book,
    open_consult,
    opinion,
    proposal_at,
    respond,
    slot_id,
    start_consult,
    weekday_ahead,
)
from tests.test_teleconsult_booking import refused, slot_status

Users = Callable[[str], TestClient]


def test_the_consult_and_its_signed_opinion(
    as_user: Users, settings: Settings, app: FastAPI
) -> None:
    doctor, specialist = as_user("dr.xinyuan.people"), as_user("sp.subei")
    sr, task = open_consult(doctor)
    day = weekday_ahead(2)
    start = beijing(day, "15:00")
    appt = book(
        doctor, proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
    )
    appt = appt.json()
    # The consult starts only once the specialist has accepted, and only at their hospital.
    refused(start_consult(specialist, appt["id"]), 409, "specialist-not-accepted")
    assert (
        respond(specialist, appt["id"], "accepted", "PractitionerRole/sp-subei-role").status_code
        == 201
    )
    refused(start_consult(doctor, appt["id"]), 403, "consult-host")
    r = start_consult(specialist, appt["id"])
    assert r.status_code == 201, r.text
    encounter = r.json()
    assert encounter["class"]["code"] == "VR" and encounter["period"]["start"]
    assert encounter["subject"] == {"reference": "Patient/demo-aygul"}
    refused(start_consult(specialist, appt["id"]), 409, "appointment-not-booked")
    assert doctor.get(f"/fhir/Appointment/{appt['id']}").json()["status"] == "arrived"
    assert doctor.get(f"/fhir/Task/{task['id']}").json()["status"] == "in-progress"
    finished = {**encounter, "status": "finished"}
    r = specialist.put(f"/fhir/Encounter/{encounter['id']}", json=finished)
    assert r.status_code == 200, r.text
    assert r.json()["period"]["end"] >= r.json()["period"]["start"]
    refused(
        specialist.put(f"/fhir/Encounter/{encounter['id']}", json=r.json()), 409, "encounter-closed"
    )
    assert doctor.get(f"/fhir/Appointment/{appt['id']}").json()["status"] == "fulfilled"
    # Held early and over: the rest of its time is free again, to book for someone else.
    assert slot_status(doctor, slot_id("sp-subei-consult", start)) == "free"
    other, _ = open_consult(doctor, "demo-wang-jianguo")
    again = proposal_at(other, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
    assert book(doctor, again).status_code == 200
    assert doctor.get(f"/fhir/Encounter/{encounter['id']}").status_code == 200

    # Drafted at the hospital asked; the county doctor does not write it.
    refused(doctor.post("/fhir/DiagnosticReport", json=opinion(sr)), 403, "opinion-author")
    draft = specialist.post(
        "/fhir/DiagnosticReport",
        json=opinion(sr, encounter={"reference": f"Encounter/{encounter['id']}"}),
    ).json()
    assert draft["status"] == "preliminary"
    # Signed only by the consult's specialist, with a conclusion, codes with their version.
    db = Database(settings.database_url)
    with db.transaction(write=True) as s:
        create_user(
            session=s,
            by=OPERATOR,
            username="sp.subei.resp",
            hospital_id="subei",
            role="specialist",
            password=None,
            practitioner_id="subei-resp",
        )
    db.dispose()
    colleague = TestClient(app, headers=bearer(settings, "sp.subei.resp"))
    refused(
        colleague.put(f"/fhir/DiagnosticReport/{draft['id']}", json={**draft, "status": "final"}),
        403,
        "opinion-signer",
    )
    unversioned = json.loads(json.dumps(draft))
    unversioned["conclusionCode"][0]["coding"][0].pop("version")
    assert (
        specialist.put(
            f"/fhir/DiagnosticReport/{draft['id']}", json={**unversioned, "status": "final"}
        ).status_code
        == 422
    )
    refused(
        specialist.put(
            f"/fhir/DiagnosticReport/{draft['id']}",
            json={**draft, "status": "final", "conclusion": " "},
        ),
        422,
        "opinion-conclusion",
    )
    r = specialist.put(f"/fhir/DiagnosticReport/{draft['id']}", json={**draft, "status": "final"})
    assert r.status_code == 200, r.text
    signed = r.json()
    assert signed["resultsInterpreter"] == [{"reference": "Practitioner/sp-subei"}]
    assert signed["presentedForm"][0]["contentType"] == "text/html"
    # The signed letter opens in the browser, printable, and says things in words.
    letter = doctor.get(signed["presentedForm"][0]["url"])
    assert letter.status_code == 200 and letter.headers["content-type"].startswith("text/html")
    assert letter.headers["content-disposition"].startswith("inline; filename*=UTF-8''")
    assert "sandbox" in letter.headers["content-security-policy"]
    page = letter.text
    for said in (
        "苏北人民医院",
        "远程会诊意见书",
        "阿依古丽·努尔兰",
        "<td>女</td>",
        "654025197809210242",
        "新源县人民医院",
        "陈志明 主任医师",
        "@page",
    ):
        assert said in page, said
    assert "Patient/" not in page and "ServiceRequest/" not in page and "http" not in page

    # The Provenance's signature binds 陈志明 to exactly this version.
    target = f"DiagnosticReport/{draft['id']}/_history/{signed['meta']['versionId']}"
    provenances = [
        e["resource"]
        for e in doctor.get(
            "/fhir/Provenance", params={"target": f"DiagnosticReport/{draft['id']}"}
        ).json()["entry"]
    ]
    assert [p["target"][0]["reference"] for p in provenances] == [target]
    signature = provenances[0]["signature"][0]
    assert signature["who"] == {"reference": "Practitioner/sp-subei"}
    assert signature["sigFormat"] == "application/jose"
    assert base64.b64decode(signature["data"]).count(b".") == 2  # a compact JWS
    services = app.state.services
    with services.db.transaction() as s:
        stored = services.fhir.vread(
            "DiagnosticReport", draft["id"], signed["meta"]["versionId"], session=s
        )
        assert stored.content is not None
        assert verify_signature(s, provenances[0], stored.content)
        assert not verify_signature(s, provenances[0], stored.content.replace("冠脉造影", "溶栓"))

    # Filed in the Task's output, which completes the consult; the county doctor reads it.
    done = doctor.get(f"/fhir/Task/{task['id']}").json()
    assert done["status"] == "completed"
    outputs = [o["valueReference"]["reference"] for o in done["output"]]
    document_ref = next(o for o in outputs if o.startswith("DocumentReference/"))
    assert target in outputs
    document = doctor.get(f"/fhir/{document_ref}").json()
    assert document["authenticator"] == {"reference": "Practitioner/sp-subei"}
    page = doctor.get(document["content"][0]["attachment"]["url"].removeprefix("http://testserver"))
    assert page.status_code == 200 and "冠脉造影" in page.text and "陈志明" in page.text
    assert doctor.get(f"/fhir/DiagnosticReport/{draft['id']}").json()["status"] == "final"

    # Signed never changes: 409, and nothing is written.
    versions = len(doctor.get(f"/fhir/DiagnosticReport/{draft['id']}/_history").json()["entry"])
    for change in (
        {"conclusion": "改为溶栓治疗"},
        {"status": "preliminary"},
        {"status": "cancelled"},
    ):
        refused(
            specialist.put(f"/fhir/DiagnosticReport/{draft['id']}", json={**signed, **change}),
            409,
            "signed-opinion-unchangeable",
        )
    assert (
        len(doctor.get(f"/fhir/DiagnosticReport/{draft['id']}/_history").json()["entry"])
        == versions
    )
    # An amendment: status amended with its reason, signed again; both versions stay readable.
    refused(
        specialist.put(
            f"/fhir/DiagnosticReport/{draft['id']}", json={**signed, "status": "amended"}
        ),
        422,
        "amendment-reason",
    )
    amended = {
        **signed,
        "status": "amended",
        "conclusion": "急性下壁心肌梗死合并右室梗死，建议尽快行冠脉造影",
        "extension": [
            *signed.get("extension", []),
            {"url": AMENDMENT_REASON, "valueString": "补充右室梗死诊断"},
        ],
    }
    r = specialist.put(f"/fhir/DiagnosticReport/{draft['id']}", json=amended)
    assert r.status_code == 200, r.text
    correction = r.json()
    replaces = next(e for e in correction["extension"] if e["url"] == REPLACES)
    assert replaces["valueReference"]["reference"] == target
    old = doctor.get(f"/fhir/{target}").json()
    assert old["status"] == "final" and "右室" not in old["conclusion"]
    assert doctor.get(f"/fhir/DiagnosticReport/{draft['id']}").json()["status"] == "amended"
    docs = doctor.get(
        "/fhir/DocumentReference",
        params={"patient": "demo-aygul", "type": "http://loinc.org|11488-4"},
    ).json()
    states = {e["resource"]["id"]: e["resource"] for e in docs["entry"]}
    assert states[document_ref.split("/")[1]]["status"] == "superseded"
    newer = next(d for d in states.values() if d["status"] == "current")
    assert newer["relatesTo"] == [{"code": "replaces", "target": {"reference": document_ref}}]
    assert (
        len(
            doctor.get(
                "/fhir/Provenance", params={"target": f"DiagnosticReport/{draft['id']}"}
            ).json()["entry"]
        )
        == 2
    )
    assert doctor.get(f"/fhir/Task/{task['id']}").json()["status"] == "completed"


def test_an_opinion_is_signed_once_the_consult_has_started(as_user: Users) -> None:
    """Not before it took place: before the booked time, with no Encounter started, signing
    is refused (409, consult-not-started); at the booked time it is signed."""
    doctor, specialist = as_user("dr.xinyuan.people"), as_user("sp.subei")
    sr, _task = open_consult(doctor)
    start = beijing(weekday_ahead(2), "10:00")
    appt = book(
        doctor, proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
    ).json()
    assert (
        respond(specialist, appt["id"], "accepted", "PractitionerRole/sp-subei-role").status_code
        == 201
    )
    draft = specialist.post("/fhir/DiagnosticReport", json=opinion(sr)).json()
    sign = {**draft, "status": "final"}
    refused(
        specialist.put(f"/fhir/DiagnosticReport/{draft['id']}", json=sign),
        409,
        "consult-not-started",
    )
    assert specialist.get(f"/fhir/DiagnosticReport/{draft['id']}").json()["status"] == (
        "preliminary"
    )
    clock.set_to(start)
    r = specialist.put(f"/fhir/DiagnosticReport/{draft['id']}", json=sign)
    assert (r.status_code, r.json()["status"]) == (200, "final")
