"""The audit trail anchored outside the database: signed checkpoints in the blob store, and
verification that holds the database to them (records deleted from the end, or the chain
rewritten, by someone who holds the database and drops its triggers)."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alliance.audit.anchor import PREFIX, checkpoint_key
from alliance.audit.service import chain_hash
from alliance.config import Settings, get_settings
from alliance.storage import BlobStore, open_blob_store
from server.app import create_app
from server.cli import main
from tests.conftest import PG_URL, bearer, mint_token, serving
from tests.s3server import S3Server

EVERY = 10


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def anchored(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test settings with a checkpoint every EVERY records, on either blob backend."""
    update: dict[str, object] = {"audit_checkpoint_every": EVERY}
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3")
        update["storage_url"] = server.url_for(f"anchor-{uuid.uuid4().hex[:16]}")
    return settings.model_copy(update=update)


@dataclass
class Cli:
    """`alliance ...` run in-process with the environment of given settings."""

    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    def __call__(self, settings: Settings, *args: str) -> tuple[int, str, str]:
        self.monkeypatch.setenv("ALLIANCE_DATABASE_URL", settings.database_url)
        self.monkeypatch.setenv("ALLIANCE_STORAGE_URL", settings.storage_url)
        self.monkeypatch.setenv("ALLIANCE_DEMO", "true")
        self.monkeypatch.setenv(
            "ALLIANCE_AUDIT_CHECKPOINT_EVERY", str(settings.audit_checkpoint_every)
        )
        get_settings.cache_clear()
        self.capsys.readouterr()
        try:
            status = main(list(args))
        finally:
            get_settings.cache_clear()
        out, err = self.capsys.readouterr()
        return status, out, err


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(monkeypatch, capsys)


def reads(settings: Settings, count: int) -> int:
    """`count` audited reads by a county doctor through the app (its lifespan included: the
    app writes a checkpoint of the head as it stops); the position of the newest record."""
    app = create_app(settings)
    try:
        with TestClient(app, headers=bearer(settings, "dr.xinyuan.people")) as doctor:
            for _ in range(count):
                assert doctor.get("/fhir/Patient/demo-aygul").status_code == 200
    finally:
        app.state.services.db.dispose()
    return head(settings.database_url)


def head(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        seq = conn.execute(text("SELECT max(seq) FROM audit_event")).scalar_one()
    engine.dispose()
    return int(seq or 0)


def checkpoint_seqs(blobs: BlobStore) -> list[int]:
    return sorted(
        int(k.removeprefix(PREFIX).removesuffix(".json")) for k in blobs.list_keys(PREFIX)
    )


def checkpoint(blobs: BlobStore, seq: int) -> dict[str, object]:
    document: dict[str, object] = json.loads(blobs.read(checkpoint_key(seq)))
    return document


@pytest.fixture
def copies() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for url in made:
        if url.startswith("postgresql"):
            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                name = make_url(url).database
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def copy_database(url: str, copies: list[str]) -> str:
    """What someone who takes the database away has: a full copy of it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database
        target = Path(parsed.database).with_name(f"copy-{uuid.uuid4().hex[:8]}.db")
        source, copy = sqlite3.connect(parsed.database), sqlite3.connect(target)
        source.backup(copy)  # WAL included
        source.close()
        copy.close()
        return f"sqlite:///{target}"
    name = f"alliance_copy_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{parsed.database}"'))
    admin.dispose()
    copied = parsed.set(database=name).render_as_string(False)
    copies.append(copied)
    return copied


def drop_triggers_and(url: str, *statements: str) -> None:
    """Lift the append-only guard for good, as the holder of a database copy can, and tamper."""
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER audit_event_no_update_delete ON audit_event"))
            conn.execute(text("DROP TRIGGER audit_event_no_truncate ON audit_event"))
        else:
            conn.execute(text("DROP TRIGGER audit_event_no_update"))
            conn.execute(text("DROP TRIGGER audit_event_no_delete"))
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def rewrite_chain_from(url: str, first: int) -> None:
    """Change record `first` and recompute every hash after it: a chain that verifies on its
    own, which only a checkpoint can show is not the one that was written."""
    drop_triggers_and(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        prev = conn.execute(
            text("SELECT hash FROM audit_event WHERE seq = :s"), {"s": first - 1}
        ).scalar_one()
        rows = conn.execute(
            text("SELECT seq, content FROM audit_event WHERE seq >= :s ORDER BY seq"),
            {"s": first},
        ).all()
        for seq, content in rows:
            if seq == first:
                resource = json.loads(content)
                resource["recorded"] = "2020-01-01T00:00:00Z"  # the read "happened" elsewhen
                content = json.dumps(
                    resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                )
            digest = chain_hash(seq, prev, content)
            conn.execute(
                text(
                    "UPDATE audit_event SET content = :c, prev_hash = :p, hash = :h WHERE seq = :s"
                ),
                {"c": content, "p": prev, "h": digest, "s": seq},
            )
            prev = digest
    engine.dispose()


# ---- writing checkpoints ------------------------------------------------------------------------


def test_each_nth_record_and_the_stop_are_checkpointed(anchored: Settings) -> None:
    start = head(anchored.database_url)
    end = reads(anchored, 25)
    assert end == start + 25
    blobs = open_blob_store(anchored.storage_url)
    multiples = [n for n in range(start + 1, end + 1) if n % EVERY == 0]
    assert len(multiples) >= 2
    # Each multiple of N the appends reached, and the head when the app stopped.
    expected = sorted({*multiples, end})
    assert checkpoint_seqs(blobs) == expected
    csv_rows = _csv_hashes(anchored)
    for seq in expected:
        document = checkpoint(blobs, seq)
        assert document["seq"] == seq
        assert document["hash"] == csv_rows[seq]  # the hash the trail itself shows auditors
        assert document["kid"] == "demo-ed25519"
        # The readable fields are what the JWS signs.
        _header, payload, _sig = str(document["jws"]).split(".")
        signed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert signed == {
            "typ": "alliance-audit-checkpoint",
            "seq": seq,
            "hash": document["hash"],
            "time": document["time"],
        }


def _csv_hashes(settings: Settings) -> dict[int, str]:
    app = create_app(settings.model_copy(update={"audit_checkpoint_every": 0}))
    try:
        auditor = TestClient(app, headers=bearer(settings, "auditor"))  # no lifespan: no stop
        r = auditor.get("/api/audit/events.csv")
        assert r.status_code == 200
    finally:
        app.state.services.db.dispose()
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    return {int(row["seq"]): row["hash"] for row in rows}


def test_a_checkpoint_on_demand_prints_what_to_keep_offline(settings: Settings, cli: Cli) -> None:
    assert cli(settings, "audit", "checkpoint")[:2] == (1, "")  # nothing recorded yet
    end = reads(settings.model_copy(update={"audit_checkpoint_every": 0}), 3)
    status, out, err = cli(settings, "audit", "checkpoint")
    assert status == 0, err
    document = json.loads(out)
    assert document["seq"] == end and f"record {end}" in err
    stored = checkpoint(open_blob_store(settings.storage_url), end)
    assert stored == document


def test_without_a_signature_key_the_request_still_succeeds(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside demo mode without ALLIANCE_SIGNATURE_KEYS a worker cannot sign: the record that
    reached a multiple is committed and answered; the missing checkpoint is logged."""
    production = settings.model_copy(
        update={
            "demo": False,
            "jwt_keys": "k1:" + "s" * 40,
            "signature_keys": "",
            "audit_checkpoint_every": 1,
        }
    )
    app = create_app(production)
    try:
        doctor = TestClient(app, headers=bearer(production, "dr.xinyuan.people"))
        with caplog.at_level(logging.WARNING, logger="alliance.audit"):
            assert doctor.get("/fhir/Patient/demo-aygul").status_code == 200
    finally:
        app.state.services.db.dispose()
    assert "checkpoint" in caplog.text and "signature key" in caplog.text
    assert checkpoint_seqs(open_blob_store(production.storage_url)) == []


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with serving(settings, tmp_path / "serve.log", ALLIANCE_AUDIT_CHECKPOINT_EVERY="0") as running:
        yield running


def test_alliance_serve_checkpoints_the_head_when_it_stops(
    settings: Settings, served: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = served
    token = mint_token(settings, "dr.xinyuan.people")
    r = httpx.get(f"{url}/fhir/Patient/demo-aygul", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    blobs = open_blob_store(settings.storage_url)
    assert checkpoint_seqs(blobs) == []  # N is 0: nothing periodic
    proc.send_signal(signal.SIGTERM)
    # uvicorn stops gracefully (the app's lifespan ends), then dies of the signal it caught.
    assert proc.wait(30) == -signal.SIGTERM
    end = head(settings.database_url)
    assert checkpoint_seqs(blobs) == [end]


# ---- verifying against them ---------------------------------------------------------------------


def test_an_intact_trail_with_checkpoints_verifies(anchored: Settings, cli: Cli) -> None:
    end = reads(anchored, 12)
    status, out, err = cli(anchored, "audit", "verify")
    assert status == 0, err
    assert f"record {end}, signed by demo-ed25519" in out
    assert f"audit trail intact: {end} records verified" in out
    app = create_app(anchored.model_copy(update={"audit_checkpoint_every": 0}))
    try:
        answer = TestClient(app, headers=bearer(anchored, "auditor")).get("/api/audit/verify")
    finally:
        app.state.services.db.dispose()
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True and body["checked"] == end and body["problem"] is None
    assert body["checkpoints"]["latest"]["seq"] == end
    assert body["checkpoints"]["confirmed_seq"] == end
    assert body["checkpoints"]["read"] == 1  # the newest checkpoint covers all before it


def test_deleting_the_newest_records_is_found(
    anchored: Settings, cli: Cli, copies: list[str]
) -> None:
    """The acceptance test: a copy of the database, its audit triggers dropped and its newest
    records deleted, still forms a valid chain; the checkpoint says what is missing."""
    end = reads(anchored, 25)
    kept = end - 15
    stolen = anchored.model_copy(
        update={"database_url": copy_database(anchored.database_url, copies)}
    )
    drop_triggers_and(stolen.database_url, f"DELETE FROM audit_event WHERE seq > {kept}")
    seen = checkpoint(open_blob_store(anchored.storage_url), end)

    status, out, err = cli(stolen, "audit", "verify")
    assert status == 1
    assert f"hash chain intact: {kept} records verified" in out  # the chain alone is fooled
    assert (
        f"records {kept + 1}–{end} are missing: the checkpoint of {seen['time']} saw the chain "
        f"at {end}, the database ends at {kept}"
    ) in err

    app = create_app(stolen.model_copy(update={"audit_checkpoint_every": 0}))
    try:
        answer = TestClient(app, headers=bearer(stolen, "auditor")).get("/api/audit/verify")
    finally:
        app.state.services.db.dispose()
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is False and body["first_bad_seq"] == kept + 1
    assert body["checkpoints"]["missing"] == [kept + 1, end]
    assert f"records {kept + 1}–{end} are missing" in body["problem"]
    # The untouched original still verifies against the same checkpoints.
    assert cli(anchored, "audit", "verify")[0] == 0


def test_a_rewritten_chain_is_found_between_two_checkpoints(
    anchored: Settings, cli: Cli, copies: list[str]
) -> None:
    end = reads(anchored, 25)
    multiples = [n for n in range(end - 24, end + 1) if n % EVERY == 0]
    before, after = multiples[0], multiples[1]
    stolen = anchored.model_copy(
        update={"database_url": copy_database(anchored.database_url, copies)}
    )
    rewrite_chain_from(stolen.database_url, before + 3)

    status, out, err = cli(stolen, "audit", "verify")
    assert status == 1
    assert f"hash chain intact: {end} records verified" in out
    blobs = open_blob_store(anchored.storage_url)
    newest, confirmed = checkpoint(blobs, end), checkpoint(blobs, before)
    assert (
        f"records {before + 1}–{end} were altered or replaced (at least one of them): the "
        f"checkpoint of {newest['time']} saw record {end} with hash {newest['hash']}"
    ) in err
    assert f"the checkpoint of {confirmed['time']} at record {before} still matches" in err
    assert after < end  # the middle checkpoint was read and did not match either

    app = create_app(stolen.model_copy(update={"audit_checkpoint_every": 0}))
    try:
        body = TestClient(app, headers=bearer(stolen, "auditor")).get("/api/audit/verify").json()
    finally:
        app.state.services.db.dispose()
    assert body["ok"] is False and body["checked"] == end
    assert body["checkpoints"]["altered"] == [before + 1, end]
    assert body["checkpoints"]["confirmed_seq"] == before


def test_a_forged_checkpoint_fails_verification(settings: Settings, cli: Cli) -> None:
    end = reads(settings, 2)
    assert cli(settings, "audit", "checkpoint")[0] == 0
    blobs = open_blob_store(settings.storage_url)
    genuine = checkpoint(blobs, end)
    # Signed with another key that claims the demo key's kid.
    forged = jwt.encode(
        {"typ": "alliance-audit-checkpoint", "seq": end + 50, "hash": "0" * 64, "time": "x"},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": "demo-ed25519"},
    )
    fake = {**genuine, "seq": end + 50, "hash": "0" * 64, "jws": forged}
    blobs.put(io.BytesIO(json.dumps(fake).encode()), key=checkpoint_key(end + 50))
    status, _out, err = cli(settings, "audit", "verify")
    assert status == 1
    assert f"checkpoint {checkpoint_key(end + 50)} cannot be trusted" in err
    assert "does not verify" in err
    # A genuine signature with readable fields edited to say something else.
    blobs.delete(checkpoint_key(end + 50))
    edited = {**genuine, "seq": end + 1}
    blobs.put(io.BytesIO(json.dumps(edited).encode()), key=checkpoint_key(end + 1))
    status, _out, err = cli(settings, "audit", "verify")
    assert status == 1 and "readable fields differ from what was signed" in err


def test_checkpoints_kept_offline_and_the_offline_key_set(
    settings: Settings, cli: Cli, copies: list[str], tmp_path: Path
) -> None:
    """The holder of the database who also empties the blob store is still found out by the
    checkpoint and the public keys an operator kept offline."""
    end = reads(settings, 5)
    status, out, _err = cli(settings, "audit", "checkpoint")
    assert status == 0
    offline = tmp_path / "checkpoint.json"
    offline.write_text(out)
    app = create_app(settings)
    try:
        jwks = TestClient(app).get("/auth/jwks.json")
    finally:
        app.state.services.db.dispose()
    assert jwks.status_code == 200
    keys = tmp_path / "jwks.json"
    keys.write_text(jwks.text)

    stolen = settings.model_copy(
        update={
            "database_url": copy_database(settings.database_url, copies),
            "storage_url": (tmp_path / "emptied").as_uri(),
        }
    )
    drop_triggers_and(stolen.database_url, f"DELETE FROM audit_event WHERE seq > {end - 3}")
    status, out, _err = cli(stolen, "audit", "verify")
    assert status == 0 and "no checkpoint found" in out  # the blob store alone was emptied
    args = ["audit", "verify", "--checkpoint", str(offline), "--jwks", str(keys)]
    status, _out, err = cli(stolen, *args)
    assert status == 1
    assert f"records {end - 2}–{end} are missing" in err
    # The intact trail passes the same offline check.
    status, out, err = cli(settings, *args, "--no-blob-store")
    assert status == 0, err
    # A key set without the signing key does not vouch for the checkpoint.
    other = tmp_path / "other-jwks.json"
    stranger = jwt.algorithms.OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate().public_key())
    other.write_text(json.dumps({"keys": [json.loads(stranger) | {"kid": "stranger"}]}))
    status, _out, err = cli(
        settings, "audit", "verify", "--checkpoint", str(offline), "--jwks", str(other)
    )
    assert status == 1 and "'demo-ed25519' is not in the key set given" in err


def test_without_checkpoints_verify_says_so(settings: Settings, cli: Cli) -> None:
    status, out, _err = cli(settings, "audit", "verify")
    assert status == 0
    assert "no checkpoint found" in out
