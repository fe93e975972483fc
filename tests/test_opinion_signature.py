"""A signed consult opinion stays verifiable for good: rotating the access-token keys
(ALLIANCE_JWT_KEYS) or the signature keys (ALLIANCE_SIGNATURE_KEYS) never makes an old
signature unverifiable; it verifies with the published JWK Set alone, too."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import jwt
from fastapi.testclient import TestClient

from alliance.config import Settings
from server.app import create_app
from teleconsult.opinion import verify_signature
from tests.conftest import bearer
from tests.teleconsults import (
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


def _seed() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def _sign_an_opinion(doctor: TestClient, specialist: TestClient) -> dict[str, Any]:
    """The consult's opinion, signed by 陈志明; returns the report as signed."""
    sr, _task = open_consult(doctor)
    start = beijing(weekday_ahead(2), "15:00")
    appt = book(
        doctor, proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
    ).json()
    assert (
        respond(specialist, appt["id"], "accepted", "PractitionerRole/sp-subei-role").status_code
        == 201
    )
    encounter = start_consult(specialist, appt["id"]).json()
    draft = specialist.post(
        "/fhir/DiagnosticReport",
        json=opinion(sr, encounter={"reference": f"Encounter/{encounter['id']}"}),
    ).json()
    r = specialist.put(f"/fhir/DiagnosticReport/{draft['id']}", json={**draft, "status": "final"})
    assert r.status_code == 200, r.text
    signed: dict[str, Any] = r.json()
    return signed


def _provenance(client: TestClient, report_id: str) -> dict[str, Any]:
    r = client.get("/fhir/Provenance", params={"target": f"DiagnosticReport/{report_id}"})
    assert r.status_code == 200, r.text
    (entry,) = r.json()["entry"]
    provenance: dict[str, Any] = entry["resource"]
    return provenance


def test_rotating_every_key_keeps_an_old_opinion_verifiable(
    database_url: str, tmp_path: Path
) -> None:
    blobs = (tmp_path / "blobs").as_uri()
    before = Settings(
        database_url=database_url,
        storage_url=blobs,
        base_url="http://testserver",
        demo=True,
        jwt_keys=f"t1:{'a' * 40}",
        signature_keys=f"s1:{_seed()}",
    )
    app = create_app(before)
    try:
        with (
            TestClient(app, headers=bearer(before, "dr.xinyuan.people")) as doctor,
            TestClient(app, headers=bearer(before, "sp.subei")) as specialist,
        ):
            signed = _sign_an_opinion(doctor, specialist)
            header = jwt.get_unverified_header(
                base64.b64decode(_provenance(doctor, signed["id"])["signature"][0]["data"])
            )
            assert header["alg"] == "EdDSA" and header["kid"] == "s1"
    finally:
        app.state.services.db.dispose()

    # Both kinds of key rotated, the old ones dropped from the configuration entirely.
    after = before.model_copy(
        update={"jwt_keys": f"t2:{'b' * 40}", "signature_keys": f"s2:{_seed()}"}
    )
    app = create_app(after)
    try:
        services = app.state.services
        with TestClient(app, headers=bearer(after, "dr.xinyuan.people")) as doctor:
            provenance = _provenance(doctor, signed["id"])
            with services.db.transaction() as s:
                stored = services.fhir.vread(
                    "DiagnosticReport", signed["id"], signed["meta"]["versionId"], session=s
                )
                assert stored.content is not None
                assert verify_signature(s, provenance, stored.content)
                assert not verify_signature(s, provenance, stored.content.replace("Z", "+"))
            # And by anyone, with the published key alone.
            r = doctor.get("/auth/jwks.json")
            assert r.status_code == 200
            keys = {k["kid"]: k for k in r.json()["keys"]}
            assert set(keys) == {"s1"}  # s2 has not signed anything yet
            token = base64.b64decode(provenance["signature"][0]["data"]).decode()
            claims = jwt.decode(token, jwt.PyJWK(keys["s1"]).key, algorithms=["EdDSA"])
            assert claims["sub"] == "Practitioner/sp-subei"
    finally:
        app.state.services.db.dispose()


def test_a_worker_without_a_signature_key_cannot_sign_an_opinion(
    database_url: str, tmp_path: Path
) -> None:
    keyless = Settings(
        database_url=database_url,
        storage_url=(tmp_path / "blobs").as_uri(),
        base_url="http://testserver",
        demo=False,
        jwt_keys=f"t1:{'a' * 40}",
        signature_keys="",
    )
    app = create_app(keyless)
    try:
        with (
            TestClient(app, headers=bearer(keyless, "dr.xinyuan.people")) as doctor,
            TestClient(app, headers=bearer(keyless, "sp.subei")) as specialist,
        ):
            sr, _task = open_consult(doctor)
            start = beijing(weekday_ahead(2), "15:00")
            appt = book(
                doctor,
                proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)]),
            ).json()
            respond(specialist, appt["id"], "accepted", "PractitionerRole/sp-subei-role")
            encounter = start_consult(specialist, appt["id"]).json()
            draft = specialist.post(
                "/fhir/DiagnosticReport",
                json=opinion(sr, encounter={"reference": f"Encounter/{encounter['id']}"}),
            ).json()
            r = specialist.put(
                f"/fhir/DiagnosticReport/{draft['id']}", json={**draft, "status": "final"}
            )
            assert r.status_code == 503
            assert "ALLIANCE_SIGNATURE_KEYS" in r.text
            # Nothing was signed: the draft stays a draft.
            again = doctor.get(f"/fhir/DiagnosticReport/{draft['id']}")
            assert again.json()["status"] == "preliminary"
    finally:
        app.state.services.db.dispose()
