"""Test fixtures: every database test runs on SQLite and, when ALLIANCE_TEST_DATABASE_URL names
a PostgreSQL database, on PostgreSQL too. Each test gets a fresh, migrated database (copied
from a template migrated once per run), a fresh blob folder, and the app over it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alliance.config import Settings
from server.app import create_app
from server.demo import seed_demo
from server.migrate import upgrade
from tests.s3server import S3Server, WeedNotFound, find_weed, seaweedfs_s3

PG_URL = os.environ.get("ALLIANCE_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", "postgresql"]


def _migrate_and_seed(url: str) -> None:
    """The template every test database is copied from: migrated, with the demo alliance."""
    settings = Settings(database_url=url, base_url="http://testserver", demo=True)
    upgrade(url, settings=settings)
    seed_demo(settings)


class _Templates:
    """Migrated template databases, made once per run and copied for each test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sqlite_template: Path | None = None
        self.pg_template: str | None = None
        self.pg_made: list[str] = []

    def sqlite(self) -> str:
        if self.sqlite_template is None:
            self.sqlite_template = self.workdir / "template.db"
            _migrate_and_seed(f"sqlite:///{self.sqlite_template}")
        target = self.workdir / f"{uuid.uuid4().hex}.db"
        shutil.copyfile(self.sqlite_template, target)
        return f"sqlite:///{target}"

    def _admin(self):  # type: ignore[no-untyped-def]
        return create_engine(PG_URL, isolation_level="AUTOCOMMIT")

    def postgresql(self) -> str:
        base = make_url(PG_URL)
        engine = self._admin()
        try:
            with engine.connect() as conn:
                if self.pg_template is None:
                    self.pg_template = f"alliance_tpl_{os.getpid()}"
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self.pg_template}"'))
                    conn.execute(text(f'CREATE DATABASE "{self.pg_template}"'))
                    _migrate_and_seed(base.set(database=self.pg_template).render_as_string(False))
                name = f"alliance_t_{uuid.uuid4().hex[:12]}"
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_template}"'))
                self.pg_made.append(name)
        finally:
            engine.dispose()
        return base.set(database=name).render_as_string(False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        engine = self._admin()
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()

    def cleanup(self) -> None:
        if self.pg_template:
            self.drop(make_url(PG_URL).set(database=self.pg_template).render_as_string(False))


@pytest.fixture(autouse=True)
def _system_clock() -> Iterator[None]:
    """Every test starts on the system clock, whatever the previous one moved."""
    from alliance import clock

    clock.reset()
    yield
    clock.reset()


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Templates]:
    t = _Templates(tmp_path_factory.mktemp("db"))
    yield t
    t.cleanup()


REQUIRE_ALL = os.environ.get("ALLIANCE_REQUIRE_ALL_BACKENDS") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip a part this machine cannot run; in CI (ALLIANCE_REQUIRE_ALL_BACKENDS=1) fail."""
    if REQUIRE_ALL:
        pytest.fail(f"CI must run every part: {reason}")
    pytest.skip(reason)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, templates: _Templates) -> Iterator[str]:
    if request.param == "postgresql":
        if not PG_URL:
            skip_or_fail("PostgreSQL: set ALLIANCE_TEST_DATABASE_URL to run (CI does)")
        url = templates.postgresql()
        yield url
        templates.drop(url)
    else:
        yield templates.sqlite()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        storage_url=(tmp_path / "blobs").as_uri(),
        base_url="http://testserver",
        demo=True,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.services.db.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """The app served by uvicorn on a free port, in a thread of this process."""

    def __init__(self, database_url: str, storage_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(
            database_url=database_url, storage_url=storage_url, base_url=self.url, demo=True
        )
        self.app = create_app(self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.services.db.dispose()


@pytest.fixture
def live_server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(database_url, (tmp_path / "blobs").as_uri()) as server:
        yield server


def mint_token(settings: Settings, username: str, scope: str = "") -> str:
    """A real signed token for a demo account, minted without the (slow, argon2) password
    check; the token endpoint itself is tested in test_security.py."""
    from alliance.db import Database
    from alliance.security.service import get_user, token_claims
    from alliance.security.tokens import issue_token

    db = Database(settings.database_url)
    try:
        with db.transaction() as session:
            claims = token_claims(get_user(session=session, username=username), scope)
    finally:
        db.dispose()
    return issue_token(settings, claims)[0]


def bearer(settings: Settings, username: str, scope: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, username, scope)}"}


@pytest.fixture
def as_user(app: FastAPI, settings: Settings) -> Iterator[Callable[[str], TestClient]]:
    """A client of the app signed in as a demo account: `as_user("sp.subei")`."""
    clients: list[TestClient] = []

    def make(username: str, scope: str = "") -> TestClient:
        c = TestClient(app, headers=bearer(settings, username, scope))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) for the module's tests."""
    try:
        find_weed()
    except WeedNotFound as exc:
        skip_or_fail(f"S3 backend not tested: {exc}")
    with seaweedfs_s3() as server:
        yield server


@contextmanager
def serving(
    settings: Settings, log: Path, *args: str, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`alliance serve [args]` in a process of its own on the test database (tokens minted for
    the test settings are valid there), until it answers /healthz; killed at the end if still
    running (stopped with SIGTERM, killed if it does not stop). Yields its URL and the process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ,
        "ALLIANCE_DATABASE_URL": settings.database_url,
        "ALLIANCE_STORAGE_URL": settings.storage_url,
        "ALLIANCE_BASE_URL": "http://testserver",
        "ALLIANCE_DEMO": "true",
        **env,
    }
    with open(log, "wb") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port), *args],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(log.read_text())
                time.sleep(0.1)
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(20)
