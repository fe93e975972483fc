"""A real FHIR client (fhirpy) against the app served by uvicorn on a free port."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome

from alliance.codes import RESIDENT_ID
from tests.conftest import LiveServer
from tests.factories import identity_number, patient


@pytest.fixture
def fhir(live_server: LiveServer) -> SyncFHIRClient:
    """fhirpy signed in as a county doctor of 新源县人民医院, with a token from /auth/token."""
    r = httpx.post(
        f"{live_server.url}/auth/token",
        data={
            "grant_type": "password",
            "username": "dr.xinyuan.people",
            "password": "alliance-demo",
        },
    )
    assert r.status_code == 200, r.text
    return SyncFHIRClient(
        f"{live_server.url}/fhir", authorization=f"Bearer {r.json()['access_token']}"
    )


def test_create_read_update_history(fhir: SyncFHIRClient) -> None:
    p = fhir.resource("Patient", **patient("阿依古丽·努尔兰"))
    p.save()
    assert p.id and p["meta"]["versionId"] == "1"

    read = fhir.reference("Patient", p.id).to_resource()
    assert read["name"][0]["text"] == "阿依古丽·努尔兰"

    read["telecom"] = [{"system": "phone", "value": "13899990000"}]
    read.save()
    assert read["meta"]["versionId"] == "2"

    v1 = fhir.execute(f"Patient/{p.id}/_history/1", method="get")
    assert "telecom" not in v1

    # A versioned update with a stale If-Match is refused; with the current one it passes.
    body = read.serialize()
    with pytest.raises(MultipleResourcesFound):  # fhirpy's name for any 412
        fhir._do_request("put", f"Patient/{p.id}", data=body, extra_headers={"If-Match": 'W/"1"'})
    updated = fhir._do_request(
        "put", f"Patient/{p.id}", data=body, extra_headers={"If-Match": 'W/"2"'}
    )
    assert updated["meta"]["versionId"] == "3"

    history = fhir.execute(f"Patient/{p.id}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]

    read.refresh()  # fhirpy sends If-None-Match with the bare version id
    assert read["meta"]["versionId"] == "3"


def test_conditional_create(fhir: SyncFHIRClient) -> None:
    number = identity_number()
    first, created = (
        fhir.resources("Patient")
        .search(identifier=f"{RESIDENT_ID}|{number}")
        .get_or_create(fhir.resource("Patient", **patient(number=number)))
    )
    assert created
    again, created_again = (
        fhir.resources("Patient")
        .search(identifier=f"{RESIDENT_ID}|{number}")
        .get_or_create(fhir.resource("Patient", **patient(number=number)))
    )
    assert not created_again and again.id == first.id


def test_search_by_identifier_and_names(fhir: SyncFHIRClient) -> None:
    number = identity_number()
    kazakh = fhir.resource(
        "Patient",
        **patient("艾克拜尔·吐尔洪", number=number, other_names=[("Әкбар Тұрғын", "kk-Cyrl")]),
    )
    kazakh.save()
    fhir.resource("Patient", **patient("欧阳修远")).save()

    def names(name: str) -> list[str]:
        return [r.id for r in fhir.resources("Patient").search(name=name).fetch()]

    by_id = fhir.resources("Patient").search(identifier=number).fetch_all()
    assert [r.id for r in by_id] == [kazakh.id]
    assert names("艾克拜尔·吐尔洪") == [kazakh.id]
    assert names("吐尔洪") == [kazakh.id]  # the part after "·"
    assert names("әкбар") == [kazakh.id]  # Cyrillic, any case
    assert fhir.resources("Patient").search(name="欧阳").count() == 1


def test_paging_through_120_patients(fhir: SyncFHIRClient, live_server: LiveServer) -> None:
    services = live_server.app.state.services
    with services.db.transaction(write=True) as s:
        made = {
            services.fhir.create("Patient", patient(f"患者{i:03d}"), session=s).version.id
            for i in range(120)
        }
    pages = 0
    seen: list[str] = []
    url: str | None = f"{live_server.url}/fhir/Patient?name=患者&_count=50"
    headers = {"Authorization": fhir.authorization}
    while url:
        bundle = httpx.get(url, headers=headers).json()
        pages += 1
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
    assert pages == 3
    assert len(seen) == 120 and set(seen) == made
    # fhirpy follows the same next links.
    assert {r.id for r in fhir.resources("Patient").search(name="患者").limit(50)} == made


def test_errors_reach_the_client_as_operation_outcomes(fhir: SyncFHIRClient) -> None:
    bad = fhir.resource("Patient", **patient(number="654125199001010016"))
    with pytest.raises(OperationOutcome) as info:
        bad.save()
    assert "checksum" in json.dumps(info.value.resource)


def test_16_parallel_conditional_creates_make_one_patient(
    live_server: LiveServer, fhir: SyncFHIRClient
) -> None:
    number = identity_number()
    body = patient(number=number)
    headers = {
        "Authorization": fhir.authorization,
        "Content-Type": "application/fhir+json",
        "If-None-Exist": f"identifier={RESIDENT_ID}|{number}",
    }

    def attempt(_: int) -> tuple[int, str]:
        r = httpx.post(f"{live_server.url}/fhir/Patient", json=body, headers=headers, timeout=60)
        return r.status_code, r.json().get("id", r.text)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(16)))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] * 15 + [201], results
    assert len({pid for _, pid in results}) == 1
    found = httpx.get(
        f"{live_server.url}/fhir/Patient",
        params={"identifier": number, "_total": "accurate"},
        headers={"Authorization": fhir.authorization},
    ).json()
    assert found["total"] == 1
