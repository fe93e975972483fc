"""The FHIR REST plumbing through HTTP: interactions, headers, search, and every error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from alliance.fhir.search import _after_prefix
from tests.factories import hospital, identity_number, patient

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def fhir(as_user: Callable[[str], TestClient]) -> TestClient:
    """A county doctor of 新源县人民医院 (the demo alliance is in every test database)."""
    return as_user("dr.xinyuan.people")


def create(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post(f"/fhir/{body['resourceType']}", json=body, headers=headers)


def assert_outcome(response: Any, status: int, code: str | None = None, text: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    if code:
        assert issue["code"] == code
    assert text in issue["diagnostics"]
    return body


# ---- interactions and headers ----------------------------------------------------------------


def test_create_read_update_vread_history(fhir: TestClient) -> None:
    r = create(fhir, patient("阿依古丽·努尔兰", other_names=[("Айгүл Нұрлан", "kk-Cyrl")]))
    assert r.status_code == 201
    created = r.json()
    pid = created["id"]
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://testserver/fhir/Patient/{pid}/_history/1"
    assert "last-modified" in r.headers
    assert created["meta"]["versionId"] == "1"
    assert created["name"][0]["text"] == "阿依古丽·努尔兰"  # kept exactly as typed
    assert created["name"][1]["extension"][0]["valueCode"] == "kk-Cyrl"

    read = fhir.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200 and read.json() == created
    assert fhir.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304

    phone = [{"system": "phone", "value": "13899990000"}]
    changed = {**created, "telecom": phone}
    r2 = fhir.put(f"/fhir/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert r2.status_code == 200, r2.text
    assert r2.headers["etag"] == 'W/"2"' and r2.json()["telecom"] == phone

    stale = fhir.put(f"/fhir/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert_outcome(stale, 412, text='W/"2"')

    v1 = fhir.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and "telecom" not in v1.json()
    assert_outcome(fhir.get(f"/fhir/Patient/{pid}/_history/9"), 404)

    history = fhir.get(f"/fhir/Patient/{pid}/_history").json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert history["entry"][1]["request"]["method"] == "POST"


def test_prefer_return(fhir: TestClient) -> None:
    minimal = create(fhir, patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    oo = create(fhir, patient(), Prefer="return=OperationOutcome")
    assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"


def test_unknown_address_code_is_a_warning(fhir: TestClient) -> None:
    number = identity_number(address="990101")
    r = create(fhir, patient(number=number), Prefer="return=OperationOutcome")
    assert r.status_code == 201
    issue = r.json()["issue"][0]
    assert issue["severity"] == "warning" and "990101" in issue["diagnostics"]


def test_conditional_create(fhir: TestClient) -> None:
    number = identity_number()
    criteria = f"identifier=https://fhir.yzxy-alliance.cn/sid/resident-id|{number}"
    first = create(fhir, patient(number=number), **{"If-None-Exist": criteria})
    assert first.status_code == 201
    again = create(fhir, patient(number=number), **{"If-None-Exist": criteria})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    create(fhir, patient("同名", number=identity_number()))
    create(fhir, patient("同名", number=identity_number()))
    several = create(fhir, patient("同名"), **{"If-None-Exist": "name=" + quote("同名")})
    assert_outcome(several, 412)


def test_delete_where_deletes_exist(fhir: TestClient, as_user: Callable[[str], TestClient]) -> None:
    admin = as_user("admin.xinyuan.people")
    role = {
        "resourceType": "PractitionerRole",
        "active": True,
        "organization": {"reference": "Organization/xy-people"},
    }
    assert_outcome(create(fhir, role), 403, text="administrators")  # a doctor may not
    rid = create(admin, role).json()["id"]
    assert_outcome(fhir.delete(f"/fhir/PractitionerRole/{rid}"), 403)
    assert admin.delete(f"/fhir/PractitionerRole/{rid}").status_code == 204
    assert_outcome(admin.get(f"/fhir/PractitionerRole/{rid}"), 410, "deleted")
    assert admin.get(f"/fhir/PractitionerRole/{rid}/_history/1").status_code == 200
    assert admin.get("/fhir/PractitionerRole", params={"_id": rid}).json().get("entry") == []
    # Patients are clinical records: never deleted.
    pid = create(fhir, patient()).json()["id"]
    assert_outcome(fhir.delete(f"/fhir/Patient/{pid}"), 405)


def test_metadata_is_truthful(client: TestClient, as_user: Callable[[str], TestClient]) -> None:
    r = client.get("/fhir/metadata")  # public, as SMART clients expect
    assert r.status_code == 200
    cs = r.json()
    assert cs["fhirVersion"] == "4.0.1"
    types = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert set(types) >= {
        "Organization",
        "OrganizationAffiliation",
        "Practitioner",
        "PractitionerRole",
        "Patient",
    }
    pat = types["Patient"]
    codes = {i["code"] for i in pat["interaction"]}
    assert codes == {"read", "vread", "update", "history-instance", "create", "search-type"}
    params = {p["name"] for p in pat["searchParam"]}
    assert {
        "identifier",
        "name",
        "family",
        "given",
        "birthdate",
        "gender",
        "organization",
        "_id",
        "_lastUpdated",
    } <= params
    assert "Patient:organization" in pat["searchInclude"]
    # What the statement says is served is served: each search parameter is accepted.
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    for res in cs["rest"][0]["resource"]:
        user = auditor if res["type"] == "AuditEvent" else doctor
        for p in res["searchParam"]:
            value = {"date": "2020", "reference": "Organization/x"}.get(p["type"], "x")
            value = {"overdue": "true", "upcoming": "24"}.get(p["name"], value)
            r = user.get(f"/fhir/{res['type']}", params={p["name"]: value})
            assert r.status_code == 200, (res["type"], p["name"], r.text)


# ---- search ----------------------------------------------------------------------------------


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_a_name_search_finds_its_prefix_and_nothing_past_it(fhir: TestClient) -> None:
    """A starts-with search reads the index range [prefix, successor of its last character):
    王 (U+738B) finds 王 and 王建国, never 玌明 (U+738C, the first string past the range) nor
    珏; repeated past psycopg's fifth execution, when PostgreSQL plans the statement without
    its values (alliance.fhir.search._PrefixRange), it still does."""
    since = datetime.now(UTC).isoformat()
    made = {
        name: create(fhir, patient(name)).json()["id"] for name in ("王", "王建国", "玌明", "珏")
    }
    for _ in range(7):
        r = fhir.get("/fhir/Patient", params={"name": "王", "_lastUpdated": f"ge{since}"})
        assert r.status_code == 200, r.text
        assert sorted(_ids(r.json())) == sorted([made["王"], made["王建国"]])
        r = fhir.get("/fhir/Patient", params={"name": "玌", "_lastUpdated": f"ge{since}"})
        assert _ids(r.json()) == [made["玌明"]]


def test_the_range_after_a_prefix() -> None:
    assert _after_prefix("王") == "玌"
    assert _after_prefix("ab") == "ac"
    assert _after_prefix("a\ud7ff") == "a\ue000"  # past the surrogates, which are no text
    assert _after_prefix("a\U0010ffff") is None  # nothing after the last character
    assert _after_prefix("") is None


def test_search_parameters(fhir: TestClient, as_user: Callable[[str], TestClient]) -> None:
    since = datetime.now(UTC).isoformat()  # the demo patients were made before: leave them out
    kazakh = create(
        fhir,
        patient(
            "阿依古丽·努尔兰",
            other_names=[("Айгүл Нұрлан", "kk-Cyrl")],
            birthDate="1978-09-21",
            gender="female",
        ),
    ).json()
    han = create(fhir, patient("王建国", birthDate="1965-03-12")).json()
    hui = create(fhir, patient("马秀兰", birthDate="1970-01-30")).json()
    han_named = {**han, "name": [{"text": "王建国", "family": "王", "given": ["建国"]}]}
    assert fhir.put(f"/fhir/Patient/{han['id']}", json=han_named).status_code == 200
    tcm_doctor = as_user("dr.xinyuan.tcm")
    tcm = create(tcm_doctor, patient("马秀兰", hospital_id="xy-tcm")).json()

    def search(**params: str) -> list[str]:
        r = fhir.get("/fhir/Patient", params=[*params.items(), ("_lastUpdated", f"ge{since}")])
        assert r.status_code == 200, r.text
        return _ids(r.json())

    number = kazakh["identifier"][0]["value"]
    assert search(identifier=number) == [kazakh["id"]]
    assert search(identifier=f"https://fhir.yzxy-alliance.cn/sid/resident-id|{number}") == [
        kazakh["id"]
    ]
    assert search(identifier=f"http://other|{number}") == []
    assert search(name="阿依古丽·努尔兰") == [kazakh["id"]]
    assert search(name="努尔兰") == [kazakh["id"]]  # a part after the middle dot
    assert search(name="айгүл") == [kazakh["id"]]  # Cyrillic, case-insensitive
    assert search(**{"name:contains": "古丽"}) == [kazakh["id"]]
    # Name parts however they are separated, and pinyin: whole, by initials, by syllables.
    for written in ("阿依古丽 努尔兰", "阿依古丽.努尔兰", "阿依古丽•努尔兰", "阿依古丽・努尔兰"):
        assert search(name=written) == [kazakh["id"]], written
    for typed in ("ayiguli", "AYGL", "ayiguli nuerlan", "aygl·nel", "nuerlan", "a yi gu li"):
        assert search(name=typed) == [kazakh["id"]], typed
    assert search(name="wangjianguo") == [han["id"]]
    assert search(name="wjg") == [han["id"]]
    assert search(name="mxl") == [hui["id"]]  # 马秀兰 at xy-tcm is not this hospital's
    assert search(**{"name:exact": "ayiguli"}) == []  # derived forms are never exact
    # An identity number by its start, or any part of it.
    assert search(identity=number[:10]) == [kazakh["id"]]
    assert search(**{"identity:contains": number[-6:]}) == [kazakh["id"]]
    assert search(**{"name:exact": "阿依古丽"}) == []
    assert search(**{"name:exact": "阿依古丽·努尔兰"}) == [kazakh["id"]]
    assert search(family="王") == [han["id"]]
    assert search(given="建国") == [han["id"]]
    assert search(gender="female") == [kazakh["id"]]
    assert search(birthdate="1978") == [kazakh["id"]]
    assert search(birthdate="1978-09-21") == [kazakh["id"]]
    assert sorted(search(birthdate="lt1971-01-01")) == sorted([han["id"], hui["id"]])
    assert search(birthdate="ge1978-09-21") == [kazakh["id"]]
    assert sorted(search(organization="Organization/xy-people")) == sorted(
        [kazakh["id"], han["id"], hui["id"]]
    )
    # Another hospital's patient is outside a county doctor's reach: never in a search.
    assert search(organization="xy-tcm") == []
    assert search(_id=tcm["id"]) == []
    assert search(_id=f"{han['id']},{hui['id']}", _sort="birthdate") == [han["id"], hui["id"]]
    assert search(_sort="-birthdate") == [kazakh["id"], hui["id"], han["id"]]
    assert search(gender="male", _sort="_id") == sorted([han["id"], hui["id"]])

    count = fhir.get("/fhir/Patient", params={"_summary": "count", "_lastUpdated": f"ge{since}"})
    assert count.json()["total"] == 3 and not count.json().get("entry")
    total = fhir.get(
        "/fhir/Patient",
        params={"_total": "accurate", "_count": "1", "_lastUpdated": f"ge{since}"},
    ).json()
    assert total["total"] == 3 and len(_ids(total)) == 1

    inc = fhir.get(
        "/fhir/Patient", params={"_id": hui["id"], "_include": "Patient:organization"}
    ).json()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in inc["entry"]}
    assert modes == {("Patient", "match"), ("Organization", "include")}


def test_paging_links_walk_every_result_once(fhir: TestClient) -> None:
    made = {create(fhir, patient(f"病人{i}")).json()["id"] for i in range(25)}
    seen: list[str] = []
    url: str | None = "/fhir/Patient?name=病人&_count=10"
    while url:
        bundle = fhir.get(url.replace("http://testserver", "")).json()
        seen += _ids(bundle)
        url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == 25 and set(seen) == made
    sorted_seen: list[str] = []
    url = "/fhir/Patient?name=病人&_count=10&_sort=-_lastUpdated"
    while url:
        bundle = fhir.get(url.replace("http://testserver", "")).json()
        sorted_seen += _ids(bundle)
        url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
    assert len(sorted_seen) == 25 and set(sorted_seen) == made


def test_count_is_capped(fhir: TestClient) -> None:
    r = fhir.get("/fhir/Patient", params={"_count": "100000"})
    assert r.status_code == 200
    self_link = next(lk["url"] for lk in r.json()["link"] if lk["relation"] == "self")
    assert "_count=200" in self_link


def test_post_search(fhir: TestClient) -> None:
    p = create(fhir, patient("马秀兰")).json()
    r = fhir.post("/fhir/Patient/_search", data={"name": "马秀兰"})
    assert r.status_code == 200 and _ids(r.json()) == [p["id"]]


def test_lenient_handling_reports_unknown_parameters(fhir: TestClient) -> None:
    create(fhir, patient())
    strict = fhir.get("/fhir/Patient", params={"shoe-size": "42"})
    assert_outcome(strict, 400, text="shoe-size")
    lenient = fhir.get(
        "/fhir/Patient", params={"shoe-size": "42"}, headers={"Prefer": "handling=lenient"}
    )
    assert lenient.status_code == 200
    outcome = [e for e in lenient.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert "shoe-size" in outcome[0]["resource"]["issue"][0]["diagnostics"]


# ---- errors (every one answers an OperationOutcome with the right status) ---------------------


def test_malformed_json(fhir: TestClient) -> None:
    r = fhir.post("/fhir/Patient", content=b'{"resourceType": "Patient",', headers=FHIR_JSON)
    assert_outcome(r, 400, "invalid", "malformed JSON")


def test_body_not_an_object(fhir: TestClient) -> None:
    r = fhir.post("/fhir/Patient", content=b"[1, 2]", headers=FHIR_JSON)
    assert_outcome(r, 400, text="JSON object")


def test_invalid_fhir_names_the_element(fhir: TestClient) -> None:
    body = patient(birthDate="1990-13-45")
    body["name"][0]["given"] = [42]
    body["shoeSize"] = 42
    r = create(fhir, body)
    oo = assert_outcome(r, 400)
    expressions = {e for i in oo["issue"] for e in i.get("expression", [])}
    assert {"Patient.birthDate", "Patient.name[0].given[0]", "Patient.shoeSize"} <= expressions


def test_resource_type_mismatch(fhir: TestClient) -> None:
    r = fhir.post("/fhir/Patient", json=hospital("x"))
    assert_outcome(r, 400, text="not a Patient")


def test_id_mismatch_on_update(fhir: TestClient) -> None:
    p = create(fhir, patient()).json()
    r = fhir.put(f"/fhir/Patient/{p['id']}", json={**p, "id": "someone-else"})
    assert_outcome(r, 400, text="does not match")


def test_unknown_type_and_unknown_id(fhir: TestClient) -> None:
    assert_outcome(fhir.get("/fhir/Spaceship/1"), 404, "not-found", "Spaceship")
    assert_outcome(fhir.get("/fhir/Spaceship"), 404, "not-found")
    assert_outcome(fhir.get("/fhir/Patient/no-such-id"), 404, "not-found")
    assert_outcome(
        fhir.put("/fhir/Patient/no-such-id", json={**patient(), "id": "no-such-id"}), 404
    )


def test_unsupported_search_parameter_and_bad_values(fhir: TestClient) -> None:
    assert_outcome(fhir.get("/fhir/Patient", params={"colour": "red"}), 400, text="colour")
    assert_outcome(fhir.get("/fhir/Patient", params={"birthdate": "yesterday"}), 400)
    assert_outcome(fhir.get("/fhir/Patient", params={"_count": "-1"}), 400)
    assert_outcome(fhir.get("/fhir/Patient", params={"_include": "Patient:nothing"}), 400)
    assert_outcome(fhir.get("/fhir/Patient", params={"_sort": "colour"}), 400)


def test_body_over_the_limit(fhir: TestClient) -> None:
    limit = fhir.app.state.services.settings.max_body_bytes  # type: ignore[attr-defined]
    body = b'{"resourceType":"Patient","text":"' + b"x" * limit + b'"}'
    assert_outcome(fhir.post("/fhir/Patient", content=body, headers=FHIR_JSON), 413)

    def chunks():  # no Content-Length: counted while reading
        yield b'{"resourceType":"Patient","x":"'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    r = fhir.post("/fhir/Patient", content=chunks(), headers=FHIR_JSON)
    assert_outcome(r, 413)


@pytest.mark.parametrize(
    ("number", "rule"),
    [
        ("65412519900101001", "identity-length"),
        ("6541251990010100AX", "identity-characters"),
        ("654125199013010015", "identity-date"),
        ("654125199001010016", "identity-checksum"),
    ],
)
def test_invalid_identity_number(fhir: TestClient, number: str, rule: str) -> None:
    r = create(fhir, patient(number=number))
    oo = assert_outcome(r, 422, text=f"[{rule}] ")
    assert oo["issue"][0]["details"]["coding"][0]["code"] == rule
    assert oo["issue"][0]["expression"] == ["Patient.identifier[0].value"]
    count = fhir.get("/fhir/Patient", params={"identifier": number, "_summary": "count"})
    assert count.json()["total"] == 0


def test_second_patient_with_same_identity_number(
    fhir: TestClient, as_user: Callable[[str], TestClient]
) -> None:
    number = identity_number()
    assert create(fhir, patient(number=number)).status_code == 201
    assert_outcome(create(fhir, patient("另一个", number=number)), 409, text=number)
    # Another hospital keeps its own record of the same person.
    tcm_doctor = as_user("dr.xinyuan.tcm")
    assert create(tcm_doctor, patient(number=number, hospital_id="xy-tcm")).status_code == 201


def test_patient_rules(fhir: TestClient) -> None:
    # Without managingOrganization (a stock client) the writer's hospital keeps it
    # (tests/test_bad_input.py).
    no_org = patient()
    del no_org["managingOrganization"]
    assert create(fhir, no_org).json()["managingOrganization"] == {
        "reference": "Organization/xy-people"
    }
    # Registering a patient at another hospital is refused.
    assert_outcome(create(fhir, patient(hospital_id="xy-tcm")), 403)
    no_text = patient()
    no_text["name"] = [{"family": "王", "given": ["建国"]}]
    assert_outcome(create(fhir, no_text), 422, text="full-text")


def test_xml_is_refused(fhir: TestClient) -> None:
    assert_outcome(fhir.get("/fhir/metadata", params={"_format": "xml"}), 406)
    assert_outcome(fhir.get("/fhir/Patient", headers={"Accept": "application/fhir+xml"}), 406)
    r = fhir.post(
        "/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert_outcome(r, 415)


def test_unknown_route_and_method(fhir: TestClient) -> None:
    assert_outcome(fhir.get("/fhir/Patient/x/y/z/w"), 404)
    assert_outcome(fhir.patch("/fhir/Patient/x", json={}), 405)


def test_birth_date_and_sex_are_the_identity_numbers(fhir: TestClient) -> None:
    """The birth date and sex recorded are those the identity number states (GB 11643):
    filled from it when not given, a contradiction refused naming its rule, nothing stored."""
    number = identity_number(birth="19780921", seq=998)  # even sequence: female
    bare = patient("阿依古丽", number=number)
    del bare["gender"], bare["birthDate"]
    made = create(fhir, bare)
    assert made.status_code == 201, made.text
    assert (made.json()["gender"], made.json()["birthDate"]) == ("female", "1978-09-21")

    other = identity_number(birth="19800315", seq=11)  # odd: male
    before = fhir.get("/fhir/Patient", params={"_summary": "count"}).json()["total"]
    wrong_date = patient("王建国", number=other, birthDate="1980-05-13")
    assert_outcome(create(fhir, wrong_date), 422, text="[identity-birth-date]")
    wrong_sex = patient("王建国", number=other, gender="female")
    body = assert_outcome(create(fhir, wrong_sex), 422, text="[identity-sex]")
    assert body["issue"][0]["expression"] == ["Patient.gender"]
    assert fhir.get("/fhir/Patient", params={"_summary": "count"}).json()["total"] == before
    # An update cannot bring the contradiction in either.
    kept = made.json()
    assert_outcome(
        fhir.put(f"/fhir/Patient/{kept['id']}", json={**kept, "gender": "male"}),
        422,
        text="[identity-sex]",
    )
