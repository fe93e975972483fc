"""The API docs (FastAPI's /docs over /openapi.json) list every face, the mounted DICOMweb
application's routes included."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_openapi_lists_fhir_dicomweb_and_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}/metadata", "/readyz"):
        assert path in paths, path
    assert any(p.startswith("/fhir/") for p in paths)
    assert client.get("/docs").status_code == 200
