"""Every bad input is a 4xx with an OperationOutcome (or DICOMweb's status), never a 500
(issue 11 section 1). Each case asserts one exact status, on SQLite and PostgreSQL: several of
these were PostgreSQL-only 500s (NUL characters, an over-long identifier system)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from alliance.codes import RESIDENT_ID
from alliance.config import Settings
from alliance.fhir.search import COMMON_PARAMS, MAX_SEARCH_PARAMS, MAX_SEARCH_VALUES
from fhir_mappings import build_registry
from tests.accounts import portal
from tests.imaging_data import ct_series, multipart, stow_headers

REGISTRY = build_registry(Settings(demo=True))
SEARCHABLE = [d.type for d in REGISTRY.definitions() if "search-type" in d.interactions]
CREATABLE = [d.type for d in REGISTRY.definitions() if "create" in d.interactions]
HUGE = "99999999999999999999"
DOCTOR = "dr.xinyuan.people"
PATIENT = {
    "resourceType": "Patient",
    "managingOrganization": {"reference": "Organization/xy-people"},
    "name": [{"text": "Aygul Nurlan"}],
}


def _is_outcome(r: Any) -> bool:
    return bool(r.json().get("resourceType") == "OperationOutcome")


def _user_for(rtype: str, as_user: Callable[[str], TestClient]) -> TestClient:
    return as_user("auditor" if rtype == "AuditEvent" else DOCTOR)


# ---- dates outside the representable range ----------------------------------------------------


@pytest.mark.parametrize("value", ["ge0001-01-01", "eq9999-12-31", "ap0001", "0001", "9999-12-31"])
def test_dates_beyond_the_range_are_400_on_every_date_parameter(
    as_user: Callable[[str], TestClient], value: str
) -> None:
    got = []
    for rtype in SEARCHABLE:
        user = _user_for(rtype, as_user)
        params = [*COMMON_PARAMS, *REGISTRY.get(rtype).search_params]
        for p in params:
            if p.type == "date" and p.condition is None:
                r = user.get(f"/fhir/{rtype}", params={p.name: value})
                got.append((rtype, p.name, r.status_code, _is_outcome(r)))
    assert got
    assert [g for g in got if g[2:] != (400, True)] == []


def test_ap_near_the_ends_of_time_reaches_them(as_user: Callable[[str], TestClient]) -> None:
    user = as_user(DOCTOR)
    for value in ("ap0002", "ap9998", "ap0002-01-01T00:00:00Z"):
        assert user.get("/fhir/Patient", params={"birthdate": value}).status_code == 200


def test_a_stored_date_beyond_the_range_is_400(as_user: Callable[[str], TestClient]) -> None:
    r = as_user(DOCTOR).post("/fhir/Patient", json={**PATIENT, "birthDate": "0001-01-01"})
    assert r.status_code == 400, r.text
    assert _is_outcome(r)


def test_referral_figures_from_year_one_are_400(as_user: Callable[[str], TestClient]) -> None:
    auditor = as_user("auditor")
    assert auditor.get("/api/stats/referrals", params={"from": "0001-01-01"}).status_code == 400
    assert auditor.get("/api/stats/referrals", params={"to": "9999-12-31"}).status_code == 400


# ---- integers too large -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["_count", "_page_offset"])
def test_search_integers_too_large_are_400(as_user: Callable[[str], TestClient], name: str) -> None:
    r = as_user(DOCTOR).get("/fhir/Patient", params={name: HUGE})
    assert r.status_code == 400, r.text
    assert _is_outcome(r)


def test_history_integers_too_large_are_400(as_user: Callable[[str], TestClient]) -> None:
    user = as_user(DOCTOR)
    pid = user.post("/fhir/Patient", json=PATIENT).json()["id"]
    for name in ("_page_before", "_count"):
        r = user.get(f"/fhir/Patient/{pid}/_history", params={name: HUGE})
        assert (name, r.status_code, _is_outcome(r)) == (name, 400, True)


@pytest.mark.parametrize("key", ["offset", "limit", "SeriesNumber", "includefield"])
@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_qido_integers_too_large_are_400(
    as_user: Callable[[str], TestClient], key: str, level: str
) -> None:
    assert as_user(DOCTOR).get(f"/dicomweb/{level}", params={key: HUGE}).status_code == 400


# ---- FHIR bodies --------------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return '{"resourceType": "Patient", "x": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize(
    "body",
    [
        _nested(1000),
        _nested(100),
        '{"resourceType": "Patient", "multipleBirthInteger": ' + "9" * 5000 + "}",
        '{"resourceType": "Patient", "x": 1e400}',
        json.dumps({**PATIENT, "name": [{"text": "Ayg\x00ul"}]}),
        json.dumps({**PATIENT, "gender\x00": "female"}),
    ],
    ids=["nested-1000", "nested-100", "integer-5000-digits", "inf", "nul-value", "nul-key"],
)
def test_bodies_no_resource_holds_are_400(as_user: Callable[[str], TestClient], body: str) -> None:
    r = as_user(DOCTOR).post(
        "/fhir/Patient", content=body, headers={"Content-Type": "application/fhir+json"}
    )
    assert r.status_code == 400, r.text
    assert _is_outcome(r)


@pytest.mark.parametrize("meta", [7, [None], "x", None], ids=["int", "list", "string", "null"])
def test_meta_that_is_not_an_object_is_400_on_every_type(
    as_user: Callable[[str], TestClient], meta: object
) -> None:
    user = as_user(DOCTOR)
    got = {}
    for rtype in CREATABLE:
        r = user.post(f"/fhir/{rtype}", json={"resourceType": rtype, "meta": meta})
        got[rtype] = (r.status_code, _is_outcome(r))
    assert {t: s for t, s in got.items() if s != (400, True)} == {}
    pid = user.post("/fhir/Patient", json=PATIENT).json()["id"]
    r = user.put(f"/fhir/Patient/{pid}", json={**PATIENT, "id": pid, "meta": meta})
    assert (r.status_code, _is_outcome(r)) == (400, True)


def test_an_identifier_system_over_255_characters_is_400(
    as_user: Callable[[str], TestClient],
) -> None:
    system = "urn:x-" + "s" * 300
    body = {**PATIENT, "identifier": [{"system": system, "value": "1"}]}
    r = as_user(DOCTOR).post("/fhir/Patient", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["Patient.identifier"]
    ok = {**PATIENT, "identifier": [{"system": "urn:x-" + "s" * 249, "value": "1"}]}
    assert as_user(DOCTOR).post("/fhir/Patient", json=ok).status_code == 201


# ---- NUL characters (PostgreSQL cannot compare text holding one) -------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Patient?name=a%00b",
        "/fhir/Patient?identifier=a%00|b",
        "/fhir/Patient?_id=a%00",
        "/fhir/Patient?organization=Organization/a%00",
        "/fhir/Patient?birthdate=2020%00",
        "/fhir/Patient/a%00b",
        "/fhir/Patient/a%00b/_history",
        "/fhir/AuditEvent?entity-id=a%00",
        "/dicomweb/studies?PatientID=a%00",
        "/dicomweb/studies?PatientName=a%00*",
        "/dicomweb/studies/1.2%00/series",
        "/dicomweb/series?Modality=C%00",
    ],
)
def test_nul_in_an_address_is_400(as_user: Callable[[str], TestClient], url: str) -> None:
    user = as_user("auditor" if "AuditEvent" in url else DOCTOR)
    r = user.get(url)
    assert r.status_code == 400, r.text
    if url.startswith("/fhir"):
        assert _is_outcome(r)


def test_nul_in_an_attachment_title_is_400(as_user: Callable[[str], TestClient]) -> None:
    r = as_user(DOCTOR).post(
        "/api/attachments?title=a%00b", content=b"text", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 400, r.text


def test_nul_in_a_username_is_400(client: TestClient) -> None:
    data = {"grant_type": "password", "username": "sp.subei\x00", "password": "alliance-demo"}
    r = client.post("/auth/token", data=data)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"


# ---- too many search parameters ----------------------------------------------------------------


def test_too_many_search_parameters_are_400(as_user: Callable[[str], TestClient]) -> None:
    user = as_user(DOCTOR)
    many = [("name", "a")] * 1000
    r = user.get("/fhir/Patient", params=many)
    assert (r.status_code, _is_outcome(r)) == (400, True), r.text
    r = user.get("/fhir/Patient", params={"name": ",".join(["a"] * 1000)})
    assert (r.status_code, _is_outcome(r)) == (400, True), r.text
    assert user.get("/fhir/Patient", params=[("name", "a")] * MAX_SEARCH_PARAMS).status_code == 200
    alternatives = ",".join(["a"] * MAX_SEARCH_VALUES)
    assert user.get("/fhir/Patient", params={"name": alternatives}).status_code == 200
    auditor = as_user("auditor")
    assert auditor.get("/fhir/AuditEvent", params=[("entity-id", "a")] * 1000).status_code == 400


# ---- ModalitiesInStudy at every QIDO level ---------------------------------------------------


def _store(user: TestClient, parts: list[bytes]) -> tuple[str, str, str]:
    r = user.post("/dicomweb/studies", content=multipart(parts), headers=stow_headers())
    assert r.status_code == 200, r.text
    ds = pydicom.dcmread(io.BytesIO(parts[0]))
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_modalities_in_study_matches_at_every_level(as_user: Callable[[str], TestClient]) -> None:
    user = as_user(DOCTOR)
    study, _series, _sop = _store(user, ct_series(2))
    for level, count in (("studies", 1), ("series", 1), ("instances", 2)):
        hit = user.get(
            f"/dicomweb/{level}", params={"ModalitiesInStudy": "CT", "StudyInstanceUID": study}
        )
        assert (level, hit.status_code, len(hit.json())) == (level, 200, count)
        miss = user.get(
            f"/dicomweb/{level}", params={"ModalitiesInStudy": "MR", "StudyInstanceUID": study}
        )
        assert (level, miss.status_code, miss.json()) == (level, 200, [])


# ---- rendered viewport --------------------------------------------------------------------------


def test_rendered_viewport_is_capped(as_user: Callable[[str], TestClient]) -> None:
    user = as_user(DOCTOR)
    study, series, sop = _store(user, ct_series(1))
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered"
    png = {"Accept": "image/png"}
    for viewport, status in [
        ("4096,4096", 200),
        ("4097,64", 400),
        ("8192,8192", 400),
        ("20000,20000", 400),
        ("64,64,0,0,20000,20000", 200),
        ("64,64,-20000,-20000,-20000,20000", 400),
        ("64,64,20000,20000,64,64", 400),
    ]:
        r = user.get(url, params={"viewport": viewport}, headers=png)
        assert (viewport, r.status_code) == (viewport, status)


# ---- stock clients: a Patient without managingOrganization --------------------------------------


def test_a_patient_without_managing_organization_is_kept_by_the_writers_hospital(
    as_user: Callable[[str], TestClient],
) -> None:
    user = as_user(DOCTOR)
    r = user.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"text": "A B"}]})
    assert r.status_code == 201, r.text
    assert r.json()["managingOrganization"] == {"reference": "Organization/xy-people"}
    pid = r.json()["id"]
    # An update without it keeps the hospital that keeps the record.
    r = user.put(
        f"/fhir/Patient/{pid}",
        json={"resourceType": "Patient", "id": pid, "name": [{"text": "A C"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["managingOrganization"] == {"reference": "Organization/xy-people"}
    # Naming another hospital is still refused.
    other = {**PATIENT, "managingOrganization": {"reference": "Organization/subei"}}
    assert user.post("/fhir/Patient", json=other).status_code == 403


# ---- digits int() refuses: "²" passes str.isdigit, and int() reads at most 4300 digits ------
# (found by the generated tests, test_fhir_fuzz.py)

SUPERSCRIPT_TWO = "\u00b2"
FIVE_THOUSAND_DIGITS = "9" * 5000


@pytest.mark.parametrize("value", [SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS])
@pytest.mark.parametrize("name", ["_count", "_page_offset"])
def test_search_integers_int_cannot_read_are_400(
    as_user: Callable[[str], TestClient], name: str, value: str
) -> None:
    r = as_user(DOCTOR).get("/fhir/Patient", params={name: value})
    assert (r.status_code, _is_outcome(r)) == (400, True), r.text


@pytest.mark.parametrize("value", [SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS])
def test_history_integers_int_cannot_read_are_400(
    as_user: Callable[[str], TestClient], value: str
) -> None:
    user = as_user(DOCTOR)
    pid = user.post("/fhir/Patient", json=PATIENT).json()["id"]
    for name in ("_page_before", "_count"):
        r = user.get(f"/fhir/Patient/{pid}/_history", params={name: value})
        assert (name, r.status_code, _is_outcome(r)) == (name, 400, True)


@pytest.mark.parametrize("version", [SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS, HUGE])
def test_a_version_that_is_no_number_the_database_holds_is_404(
    as_user: Callable[[str], TestClient], version: str
) -> None:
    user = as_user(DOCTOR)
    pid = user.post("/fhir/Patient", json=PATIENT).json()["id"]
    r = user.get(f"/fhir/Patient/{pid}/_history/{version}")
    assert (r.status_code, _is_outcome(r)) == (404, True), r.text


@pytest.mark.parametrize("value", [SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS])
def test_upcoming_hours_int_cannot_read_are_400(
    as_user: Callable[[str], TestClient], value: str
) -> None:
    r = as_user(DOCTOR).get("/fhir/Appointment", params={"upcoming": value, "actor": "x"})
    assert (r.status_code, _is_outcome(r)) == (400, True), r.text


@pytest.mark.parametrize("value", [SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS, HUGE])
def test_find_minutes_that_are_no_duration_are_400(
    as_user: Callable[[str], TestClient], value: str
) -> None:
    r = as_user(DOCTOR).get("/fhir/Appointment/$find", params={"minutes-duration": value})
    assert (r.status_code, _is_outcome(r)) == (400, True), r.text


@pytest.mark.parametrize("key", ["limit", "offset"])
def test_qido_integers_int_cannot_read_are_400(
    as_user: Callable[[str], TestClient], key: str
) -> None:
    for value in (SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS):
        r = as_user(DOCTOR).get("/dicomweb/studies", params={key: value})
        assert r.status_code == 400, r.text


def test_frames_and_quality_int_cannot_read_are_400(
    as_user: Callable[[str], TestClient],
) -> None:
    user = as_user(DOCTOR)
    study, series, sop = _store(user, ct_series(1))
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    png = {"Accept": "image/png"}
    for value in (SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS):
        assert user.get(f"{url}/frames/{value}").status_code == 400
        assert user.get(f"{url}/frames/{value}/rendered", headers=png).status_code == 400
        r = user.get(f"{url}/rendered", params={"quality": value}, headers=png)
        assert r.status_code == 400


def test_an_identity_number_with_other_digits_is_422(
    as_user: Callable[[str], TestClient],
) -> None:
    number = "6541251990010100" + SUPERSCRIPT_TWO + "5"
    body = {**PATIENT, "identifier": [{"system": RESIDENT_ID, "value": number}]}
    r = as_user(DOCTOR).post("/fhir/Patient", json=body)
    assert (r.status_code, _is_outcome(r)) == (422, True), r.text


@pytest.mark.parametrize("index", [SUPERSCRIPT_TWO, FIVE_THOUSAND_DIGITS])
def test_a_closure_index_that_is_no_number_is_refused_on_the_calendar_page(
    client: TestClient, index: str
) -> None:
    """It names no closure: the not-found page (404), not a 500, and nothing changes."""
    csrf = portal(client, "admin.xinyuan.people")
    r = client.post(f"/admin/calendar/closures/{index}/remove", data={"csrf": csrf})
    assert (r.status_code, "未找到" in r.text) == (404, True)
    assert "元旦" in client.get("/admin/calendar").text  # the closure is still there


@pytest.mark.parametrize("length", [SUPERSCRIPT_TWO.encode("latin-1"), b"9" * 5000, b"-1"])
def test_a_content_length_that_is_no_number_is_400(
    as_user: Callable[[str], TestClient], length: bytes
) -> None:
    r = as_user(DOCTOR).post(
        "/fhir/Patient",
        content=json.dumps(PATIENT).encode(),
        headers={"Content-Type": "application/fhir+json", "Content-Length": length},
    )
    assert (r.status_code, _is_outcome(r)) == (400, True), r.text


@pytest.mark.parametrize(
    "form",
    [{"_page_after": "\x00"}, {"name": "a\x00b"}, {"identifier": "a|\x00"}, {"name\x00": "a"}],
    ids=["page-after", "string", "token", "name"],
)
def test_nul_in_a_posted_search_is_400(
    as_user: Callable[[str], TestClient], form: dict[str, str]
) -> None:
    r = as_user(DOCTOR).post("/fhir/Patient/_search", data=form)
    assert (r.status_code, _is_outcome(r)) == (400, True), r.text
