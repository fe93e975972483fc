"""Helpers of the account tests: logging in over the token endpoint and the portal, reading
with a token, and the `cli` fixture (the `alliance` command as the operator runs it)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from alliance.config import Settings, get_settings
from server.cli import main

PATIENT = "/fhir/Patient/demo-aygul"  # kept by xy-people


def login(client: TestClient, username: str, password: str = "alliance-demo") -> Any:
    return client.post(
        "/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )


def token_of(client: TestClient, username: str) -> str:
    r = login(client, username)
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def read(client: TestClient, token: str, path: str = PATIENT) -> int:
    status: int = client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code
    return status


def portal(client: httpx.Client, username: str) -> str:
    """Sign `client` in to the portal; returns the session's CSRF token."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    r = client.post(
        "/login",
        data={"username": username, "password": "alliance-demo", "csrf": csrf.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    home = client.get("/", follow_redirects=True)
    token = re.search(r'name="csrf-token" content="([^"]*)"', home.text)
    assert token is not None
    return token.group(1)


@pytest.fixture(name="cli")
def cli_fixture(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`alliance ...` as the operator runs it, over the test's database."""
    monkeypatch.setenv("ALLIANCE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ALLIANCE_STORAGE_URL", settings.storage_url)
    monkeypatch.setenv("ALLIANCE_BASE_URL", settings.base_url)
    monkeypatch.setenv("ALLIANCE_DEMO", "true")
    get_settings.cache_clear()

    def run(*argv: str, stdin: str | None = None) -> int:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(list(argv))

    yield run
    get_settings.cache_clear()
