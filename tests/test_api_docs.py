"""The API docs (FastAPI's /docs over /openapi.json) list every face, the mounted DICOMweb
application's routes included."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient


def test_openapi_lists_fhir_dicomweb_and_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}/metadata", "/readyz"):
        assert path in paths, path
    assert any(p.startswith("/fhir/") for p in paths)
    assert client.get("/docs").status_code == 200


# ---- a 405 says what the path supports (RFC 9110 15.5.6) ----------------------------------

ALLOW_CASES = [
    # FHIR: the methods of the path, less the interactions the type does not support
    ("PATCH", "/fhir/Patient/p1", "GET, PUT"),
    ("DELETE", "/fhir/Patient/p1", "GET, PUT"),
    ("PATCH", "/fhir/PractitionerRole/r1", "DELETE, GET, PUT"),
    ("PUT", "/fhir/AuditEvent/a1", "GET"),
    ("POST", "/fhir/AuditEvent", "GET"),
    ("PUT", "/fhir/Patient", "GET, POST"),
    ("DELETE", "/fhir/Patient/p1/_history", "GET"),
    ("GET", "/fhir/Appointment/$hold", "POST"),
    # DICOMweb
    ("PUT", "/dicomweb/studies", "GET, POST"),
    ("DELETE", "/dicomweb/studies/1.2.3", "GET, POST"),
    ("DELETE", "/dicomweb/studies/1.2.3/series/4.5", "GET"),
    ("POST", "/dicomweb/series", "GET"),
    # the other APIs and operations
    ("PUT", "/api/attachments", "POST"),
    ("GET", "/auth/token", "POST"),
    ("POST", "/api/stats/referrals", "GET"),
    ("DELETE", "/healthz", "GET"),
    # the portal
    ("PUT", "/patients/new", "GET, POST"),
    ("DELETE", "/login", "GET, POST"),
]


@pytest.mark.parametrize(("method", "path", "allow"), ALLOW_CASES)
def test_a_405_lists_the_methods_its_path_supports(
    as_user: Callable[[str], TestClient], method: str, path: str, allow: str
) -> None:
    user = as_user("auditor" if "AuditEvent" in path else "dr.xinyuan.people")
    r = user.request(method, path)
    assert (r.status_code, r.headers.get("allow")) == (405, allow), r.text
    if path.startswith("/fhir"):
        assert r.headers["content-type"] == "application/fhir+json; charset=utf-8"
        assert r.json()["resourceType"] == "OperationOutcome"
    # What Allow lists is served: none of those methods answers 405 there.
    for listed in allow.split(", "):
        assert user.request(listed, path).status_code != 405, (listed, path)
