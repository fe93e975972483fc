"""Builders for referral tests: uploads, consents, documents, requests and their Tasks."""

from __future__ import annotations

from typing import Any

from alliance.codes import ICD10_CN, REQUEST_CATEGORY
from referral.documents import RELATIONSHIP_EXTENSION

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n% consult opinion\n" + b"0" * 2000 + b"\n%%EOF\n"
LOINC = "http://loinc.org"
SUMMARY, DISCHARGE, CONSULT_NOTE = "34133-9", "18842-5", "11488-4"

Client = Any  # a TestClient or an httpx.Client with a base URL and a token


def upload(
    client: Client, data: bytes = PDF, ctype: str = "application/pdf", title: str = "x"
) -> Any:
    r = client.post(
        "/api/attachments", content=data, headers={"Content-Type": ctype}, params={"title": title}
    )
    assert r.status_code == 201, r.text
    return r.json()


def create(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{body['resourceType']}", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def consent_body(
    patient_id: str, form: dict[str, Any], recipients: tuple[str, ...] = ("subei",), **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]}
        ],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-11-29T10:00:00+08:00",
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "sourceAttachment": form,
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": f"Organization/{org}"},
                }
                for org in recipients
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        },
    }
    body.update(extra)
    return body


def guardian_performer(name: str = "张伟", code: str = "FTH") -> dict[str, Any]:
    return {
        "display": name,
        "extension": [
            {
                "url": RELATIONSHIP_EXTENSION,
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                            "code": code,
                        }
                    ]
                },
            }
        ],
    }


def record_consent(
    client: Client, patient_id: str = "demo-aygul", recipients: tuple[str, ...] = ("subei",)
) -> dict[str, Any]:
    form = upload(client, PNG, "image/png", "知情同意书")
    return create(client, consent_body(patient_id, form, recipients))


def document(
    client: Client, patient_id: str, loinc: str = SUMMARY, title: str = "病历摘要"
) -> dict[str, Any]:
    attachment = upload(client, PDF, "application/pdf", title)
    return create(
        client,
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"coding": [{"system": LOINC, "code": loinc}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "date": "2026-11-29T10:00:00+08:00",
            "content": [{"attachment": attachment}],
        },
    )


def care_plan(client: Client, patient_id: str) -> dict[str, Any]:
    return create(
        client,
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": f"Patient/{patient_id}"},
            "title": "康复及随访计划",
            "activity": [
                {
                    "detail": {
                        "kind": "Appointment",
                        "status": "scheduled",
                        "description": "出院后2周复诊",
                    }
                },
                {
                    "detail": {
                        "kind": "MedicationRequest",
                        "status": "scheduled",
                        "description": "阿司匹林 100mg qd",
                    }
                },
                {
                    "detail": {
                        "kind": "ServiceRequest",
                        "status": "scheduled",
                        "description": "心脏康复训练 每周3次",
                    }
                },
            ],
        },
    )


def request_body(
    patient_id: str,
    *,
    performer: str = "subei-cardiology",
    category: str = "up-referral",
    supporting: list[str] = (),  # type: ignore[assignment]
    priority: str = "routine",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "category": [{"coding": [{"system": REQUEST_CATEGORY, "code": category}]}],
        "priority": priority,
        "subject": {"reference": f"Patient/{patient_id}"},
        "performer": [{"reference": f"Organization/{performer}"}],
        "reasonCode": [
            {
                "coding": [
                    {
                        "system": ICD10_CN,
                        "version": "2.0",
                        "code": "I21.900",
                        "display": "急性心肌梗死",
                    }
                ]
            }
        ],
        "occurrenceDateTime": "2026-12-03T10:00:00+08:00",
        "note": [{"text": "胸痛3天，心电图ST段抬高，建议上转进一步诊治"}],
        "supportingInfo": [{"reference": r} for r in supporting],
    }
    body.update(extra)
    return body


def task_body(
    sr: dict[str, Any], owner: str, status: str = "requested", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "priority": sr.get("priority", "routine"),
        "focus": {"reference": f"ServiceRequest/{sr['id']}"},
        "for": sr["subject"],
        "owner": {"reference": f"Organization/{owner}"},
        "description": "上转：急性心肌梗死",
    }
    body.update(extra)
    return body


def send_referral(
    doctor: Client,
    patient_id: str = "demo-aygul",
    *,
    target: str = "subei",
    department: str = "subei-cardiology",
    status: str = "requested",
    priority: str = "routine",
    consent: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    if consent:
        record_consent(doctor, patient_id, (target,))
    doc = document(doctor, patient_id)
    sr = create(
        doctor,
        request_body(
            patient_id,
            performer=department,
            supporting=[f"DocumentReference/{doc['id']}"],
            priority=priority,
        ),
    )
    task = create(doctor, task_body(sr, target, status))
    return sr, task


def move(
    client: Client, task: dict[str, Any], status: str, *, reader: Client = None, **changes: Any
) -> Any:
    """PUT the Task's current version with a new status. It is read by `reader` (default: the
    same client; note that the owner reading a requested Task receives it)."""
    current = (reader or client).get(f"/fhir/Task/{task['id']}")
    body = current.json() if current.status_code == 200 else dict(task)
    body = {**body, "status": status, **changes}
    return client.put(f"/fhir/Task/{task['id']}", json=body)
