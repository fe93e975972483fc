"""Operations: health, readiness, metrics, the demo seed and the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alliance.config import Settings
from server.app import create_app
from server.cli import main
from server.demo import PATIENTS, demo_resources, seed_demo


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}


def test_readyz_answers_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        demo=True,
        storage_url=(tmp_path / "blobs").as_uri(),
    )
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] != "ok"
    assert r.json()["checks"]["storage"] == "ok"


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    client.get("/fhir/Patient/nobody")
    client.get("/fhir/metadata")
    text = client.get("/metrics").text
    assert (
        'alliance_http_requests_total{method="GET",route="/fhir/{rtype}/{rid}",status="401"} 1.0'
        in text
    )
    assert 'route="/fhir/metadata",status="200"' in text
    assert "alliance_http_request_seconds_bucket" in text


def test_demo_alliance_is_searchable(
    settings: Settings, as_user: Callable[[str], TestClient]
) -> None:
    # Every test database is a copy of a migrated, seeded template; seeding again adds nothing.
    assert seed_demo(settings) == {}
    doctor = as_user("dr.xinyuan.people")
    bundle = doctor.get("/fhir/Patient", params={"name": "努尔兰", "_total": "accurate"}).json()
    assert bundle["total"] == 1
    partners = doctor.get(
        "/fhir/OrganizationAffiliation",
        params={
            "primary-organization": "subei",
            "_include": "OrganizationAffiliation:participating-organization",
        },
    ).json()
    names = {e["resource"].get("name") for e in partners["entry"]}
    assert "新源县人民医院" in names
    roles = doctor.get("/fhir/PractitionerRole", params={"organization": "subei"}).json()
    assert any(e["resource"]["id"] == "sp-subei-role" for e in roles["entry"])


def test_cli_upgrade_and_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alliance.config import get_settings

    monkeypatch.setenv("ALLIANCE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("ALLIANCE_STORAGE_URL", (tmp_path / "blobs").as_uri())
    get_settings.cache_clear()
    try:
        assert main(["db", "upgrade"]) == 0
        settings = get_settings()
        first = seed_demo(settings)
        assert first["Organization"] == 6 + 2 * (6 + 3 + 4)  # hospitals, departments per kind
        assert first["Patient"] == len(PATIENTS)
        assert first["OrganizationAffiliation"] == 3
        assert first["account"] == 9
        assert sum(first.values()) == len(demo_resources()) + 9
        assert main(["seed-demo"]) == 0  # idempotent
        assert seed_demo(settings) == {}
    finally:
        get_settings.cache_clear()
