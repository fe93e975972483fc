"""The audit trail: what is recorded, that it is tamper-evident, and that it holds under load."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from alliance.audit.models import AuditRecord
from alliance.audit.service import (
    SERVER_NAME,
    AuditActor,
    AuditInput,
    VerifyResult,
    append,
    build_event,
    canonical,
    verify,
)
from alliance.config import Settings
from alliance.db import Database, WriteAttempted
from alliance.security.models import User
from server.cli import main
from tests.conftest import mint_token, serving
from tests.factories import patient
from tests.referrals import send_referral


def events(auditor: TestClient, **params: str) -> list[dict]:
    r = auditor.get("/fhir/AuditEvent", params={**params, "_count": "200"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_a_read_is_found_by_patient_with_user_action_and_outcome(
    as_user: Callable[[str], TestClient],
) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    assert doctor.get("/fhir/Patient/demo-aygul").status_code == 200
    found = events(auditor, patient="Patient/demo-aygul", subtype="read")
    assert len(found) == 1
    event = found[0]
    AuditEvent.model_validate(event)  # a valid FHIR AuditEvent
    assert event["type"]["code"] == "rest" and event["action"] == "R" and event["outcome"] == "0"
    user = event["agent"][0]
    assert user["requestor"] is True
    assert user["who"]["identifier"]["value"] == "dr.xinyuan.people"
    assert user["who"]["reference"] == "Practitioner/dr-xinyuan-people"
    assert user["role"][0]["coding"][0]["code"] == "county-doctor"
    assert user["extension"][0]["valueReference"]["reference"] == "Organization/xy-people"
    assert user["network"]["address"]
    assert event["agent"][1]["requestor"] is False  # the server
    assert {"what": {"reference": "Patient/demo-aygul"}}.items() <= event["entity"][0].items()


def test_a_denied_read_is_recorded_as_a_failure(as_user: Callable[[str], TestClient]) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    assert doctor.get("/fhir/Patient/demo-ma-xiulan").status_code == 404
    found = events(auditor, entity="Patient/demo-ma-xiulan", altid="dr.xinyuan.people")
    assert [e["outcome"] for e in found] == ["4"]
    assert "not known" in found[0]["outcomeDesc"]
    # So is an attempt without a token.
    doctor.get("/fhir/Patient/demo-aygul", headers={"Authorization": ""})
    anonymous = events(auditor, entity="Patient/demo-aygul", outcome="4")
    assert anonymous and anonymous[0]["agent"][0]["who"]["display"] == "anonymous"


def test_a_search_records_one_event_per_patient(as_user: Callable[[str], TestClient]) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    bundle = doctor.get("/fhir/Patient", params={"organization": "xy-people"}).json()
    returned = {e["resource"]["id"] for e in bundle["entry"]}
    assert len(returned) >= 3
    searches = events(auditor, subtype="search", altid="dr.xinyuan.people")
    assert {e["entity"][0]["what"]["reference"] for e in searches} == {
        f"Patient/{p}" for p in returned
    }
    query = next(e for e in searches[0]["entity"] if e["role"]["code"] == "24")["query"]
    assert "organization=xy-people" in base64.b64decode(query).decode()


def test_a_batch_stores_each_event_as_its_canonical_json(settings: Settings) -> None:
    """The chain writes what callers of one batch share (agents, source) once; each row's
    content is still exactly canonical(build_event(...)) of its own event, whoever asked."""
    doctor = AuditActor("dr.xinyuan.people", "xy-people", "county-doctor", "prac-1")
    events = [
        AuditInput("rest", "search", "E", "0", doctor, "10.0.0.1", f"Patient/p{i}", f"p{i}")
        for i in range(3)
    ] + [
        AuditInput("rest", "read", "R", "4", None, "10.0.0.2", "Task/t1", description="no\n"),
        AuditInput(
            "login", "login", "E", "0", AuditActor("x\x00" * 40), user_agent="ua\r", query="q"
        ),
        AuditInput("rest", "read", "R", "0", doctor, "10.0.0.1", "Patient/p1", "p1"),
        # Alike but for what they touch and the request: one shape, each its own entities.
        AuditInput(
            "rest", "search", "E", "0", doctor, "10.0.0.1", "Patient/p2", "p2", query="name=张"
        ),
        AuditInput(
            "rest",
            "search",
            "E",
            "0",
            doctor,
            "10.0.0.1",
            None,
            None,
            query="name=张",
            extra_entities=["Task/t2", "Patient/p9", "x\n" * 90],
            request_id="req-1",
        ),
        AuditInput(
            "transfer", "retrieve", "R", "0", doctor, "10.0.0.1", "ImagingStudy/s1", "p\x7f3"
        ),
    ]
    db = Database(settings.database_url)
    try:
        with db.transaction(write=True) as s:
            last = append(s, events)
        with db.transaction(read_only=True) as s:
            rows = s.scalars(
                select(AuditRecord)
                .where(AuditRecord.seq > last - len(events))
                .order_by(AuditRecord.seq)
            ).all()
            assert [
                canonical(build_event(e, event_id=r.id, recorded=r.recorded, server=SERVER_NAME))
                for e, r in zip(events, rows, strict=True)
            ] == [r.content for r in rows]
            assert verify(s).ok
    finally:
        db.dispose()


def test_a_write_and_its_audit_commit_together(as_user: Callable[[str], TestClient]) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    created = doctor.post("/fhir/Patient", json=patient("审计测试")).json()
    found = events(auditor, entity=f"Patient/{created['id']}", subtype="create")
    assert len(found) == 1 and found[0]["action"] == "C"
    refused = doctor.post("/fhir/Patient", json=patient(number="654125199001010016"))
    assert refused.status_code == 422
    failed = events(auditor, subtype="create", outcome="4")
    assert failed and "checksum" in failed[0]["outcomeDesc"]


def test_no_audit_no_interaction(settings: Settings, as_user: Callable[[str], TestClient]) -> None:
    """When the trail cannot be written, the interaction fails with 503 and changes nothing."""
    doctor = as_user("dr.xinyuan.people")
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:  # a real fault: the audit table is gone
        conn.execute(text("ALTER TABLE audit_event RENAME TO audit_event_away"))
    try:
        r = doctor.post("/fhir/Patient", json=patient("不应保存"))
        assert r.status_code == 503, r.text
        assert doctor.get("/fhir/Patient/demo-aygul").status_code == 503
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_event_away RENAME TO audit_event"))
        engine.dispose()
    assert doctor.get("/fhir/Patient", params={"name": "不应保存"}).json().get("entry") == []


def test_verify_finds_the_altered_row(
    settings: Settings, as_user: Callable[[str], TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    for _ in range(3):
        doctor.get("/fhir/Patient/demo-aygul")
    assert auditor.get("/api/audit/verify").json()["ok"] is True
    monkeypatch.setenv("ALLIANCE_DATABASE_URL", settings.database_url)
    from alliance.config import get_settings

    get_settings.cache_clear()
    try:
        assert main(["audit", "verify"]) == 0
        tamper(
            settings.database_url,
            "UPDATE audit_event SET content = replace(content, 'demo-aygul', 'x') WHERE seq = 2",
        )
        assert main(["audit", "verify"]) == 1
    finally:
        get_settings.cache_clear()
    db = Database(settings.database_url)
    with db.transaction() as s:
        result = verify(s)
    db.dispose()
    assert not result.ok and result.first_bad_seq == 2 and result.checked == 1
    answer = auditor.get("/api/audit/verify").json()
    assert answer["ok"] is False and answer["first_bad_seq"] == 2


def tamper(url: str, statement: str) -> None:
    """What a database administrator with the power to lift the append-only guard could do."""
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
            conn.execute(text(statement))
            conn.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
        else:
            triggers = conn.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'audit_event' "
                    "AND type = 'trigger'"
                )
            ).all()
            for name, _ in triggers:
                conn.execute(text(f"DROP TRIGGER {name}"))
            conn.execute(text(statement))
            for _, sql in triggers:
                conn.execute(text(sql))
    engine.dispose()


def test_the_database_refuses_changes_to_the_trail(
    settings: Settings, as_user: Callable[[str], TestClient]
) -> None:
    as_user("dr.xinyuan.people").get("/fhir/Patient/demo-aygul")
    engine = create_engine(settings.database_url)
    statements = ["UPDATE audit_event SET outcome = '0'", "DELETE FROM audit_event"]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_event")  # SQLite has no TRUNCATE
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()


def test_csv_export_for_auditors_only(as_user: Callable[[str], TestClient]) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    doctor.get("/fhir/Patient/demo-memet")
    r = auditor.get("/api/audit/events.csv", params={"patient": "demo-memet"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    lines = r.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("seq,recorded,type,subtype")
    assert len(lines) == 2 and "dr.xinyuan.people" in lines[1] and "demo-memet" in lines[1]
    assert doctor.get("/api/audit/events.csv").status_code == 403
    assert doctor.get("/api/audit/verify").status_code == 403


# ---- reads in a read transaction, their audit in a batch of its own ---------------------------


@pytest.fixture
def units(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """The units of work the app opens, in order: ("read-only", "write", "one-statement write"
    or "read", the exception that ended it or None)."""
    db = app.state.services.db
    opened: list[tuple[str, str | None]] = []
    real = db.transaction

    @contextmanager
    def spied(
        *, write: bool = False, read_only: bool = False, one_statement: bool = False
    ) -> Iterator[Session]:
        kind = "write" if write else "read-only" if read_only else "read"
        if one_statement:
            kind = f"one-statement {kind}"
        try:
            with real(write=write, read_only=read_only, one_statement=one_statement) as session:
                yield session
        except BaseException as exc:
            opened.append((kind, type(exc).__name__))
            raise
        opened.append((kind, None))

    monkeypatch.setattr(db, "transaction", spied)
    return opened


def test_a_read_holds_no_lock_and_its_audit_is_one_short_write(
    as_user: Callable[[str], TestClient], units: list[tuple[str, str | None]]
) -> None:
    """The read's work runs read-only (no writer lock, no chain lock); the only write is the
    audit batch, one statement (on PostgreSQL committed as it ends). A search of several
    patients is one read and one batch too."""
    doctor = as_user("dr.xinyuan.people")
    units.clear()  # the start-up sweep
    assert doctor.get("/fhir/Patient/demo-aygul").status_code == 200
    assert units == [("read-only", None), ("one-statement write", None)]
    units.clear()
    found = doctor.get("/fhir/Patient")
    assert found.status_code == 200 and len(found.json()["entry"]) == 3
    assert units == [("read-only", None), ("one-statement write", None)]


def test_a_read_that_writes_runs_again_as_a_write_with_its_audit_inside(
    as_user: Callable[[str], TestClient], units: list[tuple[str, str | None]]
) -> None:
    """The owner opening a requested referral marks it received: the read-only attempt stops
    at its first write and the whole read runs again as one write unit of work, the AuditEvent
    committed with the change."""
    _, task = send_referral(as_user("dr.xinyuan.people"))
    specialist, auditor = as_user("sp.subei"), as_user("auditor")
    units.clear()
    opened = specialist.get(f"/fhir/Task/{task['id']}")
    assert opened.status_code == 200 and opened.json()["status"] == "received"
    assert units == [("read-only", "WriteAttempted"), ("write", None)]
    reads = events(auditor, entity=f"Task/{task['id']}", subtype="read")
    assert [(e["outcome"], e["agent"][0]["who"]["display"]) for e in reads] == [("0", "sp.subei")]


def test_a_read_only_unit_of_work_refuses_to_write(settings: Settings) -> None:
    db = Database(settings.database_url)
    try:
        with pytest.raises(WriteAttempted), db.transaction(read_only=True) as s:
            s.execute(text("UPDATE security_user SET token_epoch = token_epoch + 1"))
        with pytest.raises(WriteAttempted), db.transaction(read_only=True) as s:
            user = s.scalars(select(User).where(User.username == "auditor")).one()
            user.token_epoch += 1
            s.flush()
        with db.transaction(read_only=True) as s:
            assert s.scalars(select(User.token_epoch).where(User.username == "auditor")).one() == 0
    finally:
        db.dispose()


# ---- concurrency: several API workers, several client processes -------------------------------

CLIENT_PROCESSES = 4
READS_EACH = 200


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`alliance serve --workers 2` in a process of its own, on the test database."""
    with serving(settings, tmp_path / "serve.log", "--workers", "2") as (url, _proc):
        yield url


def _reads(url: str, token: str, count: int, tag: str) -> list[tuple[str, int | None]]:
    """`count` reads of one patient from 8 threads, each with a request id of its own; returns
    (request id, status), status None when no answer came (the server was killed)."""
    headers = {"Authorization": f"Bearer {token}"}

    def read(i: int) -> tuple[str, int | None]:
        request_id = f"{tag}-{i}"
        try:
            r = client.get(f"{url}/fhir/Patient/demo-aygul", headers={"X-Request-ID": request_id})
        except httpx.TransportError:
            return request_id, None
        assert r.headers["X-Request-ID"] == request_id
        return request_id, r.status_code

    with httpx.Client(headers=headers, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        return list(pool.map(read, range(count)))


def _audited_reads(database_url: str) -> tuple[list[str], VerifyResult]:
    """The request id of every successful read in the trail, and the trail verified."""
    db = Database(database_url)
    try:
        with db.transaction() as s:
            contents = s.scalars(
                select(AuditRecord.content).where(
                    AuditRecord.subtype == "read", AuditRecord.outcome == "0"
                )
            ).all()
            result = verify(s)
    finally:
        db.dispose()
    ids = []
    for content in contents:
        for entity in json.loads(content).get("entity", []):
            if entity.get("type", {}).get("code") == "XrequestId":
                ids.append(entity["what"]["identifier"]["value"])
    return ids, result


def _burst(url: str, token: str, tag: str) -> list[tuple[str, int | None]]:
    with get_context("spawn").Pool(CLIENT_PROCESSES) as pool:
        batches = pool.starmap(
            _reads,
            [(url, token, READS_EACH, f"{tag}{p}") for p in range(CLIENT_PROCESSES)],
        )
    return [answer for batch in batches for answer in batch]


def test_concurrent_audited_reads_keep_the_chain(settings: Settings, served: str) -> None:
    """4 client processes x 200 reads against 2 workers: every read answered 200, each has
    exactly one AuditEvent carrying its request id, and the chain verifies."""
    token = mint_token(settings, "dr.xinyuan.people")
    answers = _burst(served, token, "load")
    assert [status for _, status in answers] == [200] * (CLIENT_PROCESSES * READS_EACH)
    audited, result = _audited_reads(settings.database_url)
    assert sorted(audited) == sorted(request_id for request_id, _ in answers)
    assert result.ok, result


def _processes_of(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's supervisor and its worker processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in _processes_of(int(child)))]


def test_a_killed_server_loses_no_record_of_an_answered_read(
    settings: Settings, tmp_path: Path
) -> None:
    """kill -9 of every process of `alliance serve --workers 2` in the middle of a burst of
    reads: `alliance audit verify` passes, and every read that was answered 200 has its
    AuditEvent (a response never leaves before its record is committed)."""
    token = mint_token(settings, "dr.xinyuan.people")
    with (
        serving(settings, tmp_path / "serve.log", "--workers", "2") as (url, proc),
        ThreadPoolExecutor(1) as clients,
    ):
        burst = clients.submit(_burst, url, token, "crash")
        db = Database(settings.database_url)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the burst is well under way
                with db.transaction() as s:
                    if (s.scalar(select(func.count()).select_from(AuditRecord)) or 0) > 200:
                        break
                time.sleep(0.05)
        finally:
            db.dispose()
        for pid in reversed(_processes_of(proc.pid)):
            os.kill(pid, signal.SIGKILL)
        answers = burst.result(timeout=120)
    answered = {request_id for request_id, status in answers if status == 200}
    assert {status for _, status in answers} == {200, None}  # killed in the middle
    audited, _ = _audited_reads(settings.database_url)
    assert answered <= set(audited)
    verified = subprocess.run(
        [sys.executable, "-m", "server.cli", "audit", "verify"],
        env={
            **os.environ,
            "ALLIANCE_DATABASE_URL": settings.database_url,
            "ALLIANCE_STORAGE_URL": settings.storage_url,
            "ALLIANCE_DEMO": "true",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
