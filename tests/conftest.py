"""Test fixtures: every database test runs on SQLite and, when ALLIANCE_TEST_DATABASE_URL names
a PostgreSQL database, on PostgreSQL too. Each test gets a fresh, migrated database (copied
from a template migrated once per run), a fresh blob folder, and the app over it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
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
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from alliance.config import Settings
from imaging.scp import StorageSCP
from server.app import create_app
from server.demo import seed_demo
from server.migrate import upgrade
from tests.s3server import S3Server, WeedNotFound, find_weed, seaweedfs_s3

PG_URL = os.environ.get("ALLIANCE_TEST_DATABASE_URL", "")

#: The generated tests (test_api_fuzz.py, test_fhir_fuzz.py) run under a Hypothesis profile:
#: `ci` (the default, `make test`) replays a fixed seed with a few examples per route, type
#: and parameter, so the generated part stays within a few minutes on two cores and a
#: failure is the same on every run; `fuzz` (`make fuzz`, HYPOTHESIS_PROFILE=fuzz) draws
#: many more at random. Examples share the test's app and database, hence the health check.
FUZZ_SEED = 20261201
_SHARED_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
hypothesis_settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("ALLIANCE_FUZZ_EXAMPLES", "6")),
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=_SHARED_FIXTURES,
)
hypothesis_settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("ALLIANCE_FUZZ_EXAMPLES", "100")),
    deadline=None,
    print_blob=True,
    suppress_health_check=_SHARED_FIXTURES,
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
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
        # Tests that deliver notifications run the worker themselves, with a moved clock.
        notify_worker=False,
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


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of this test's own for the spool files of this process (STOW-RS
    parts, C-STORE data sets), so a test can see that none is left behind."""
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


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
        # A browser's open notice stream would hold a graceful stop until join() gives up.
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
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


@pytest.fixture
def scp(settings: Settings) -> Iterator[StorageSCP]:
    """The C-STORE receiver on a free port of this process, storing for the calling AE title
    XYPEOPLE_CT (xy-people)."""
    from server.dicom import build_scp

    configured = settings.model_copy(update={"dicom_calling_aes": "XYPEOPLE_CT=xy-people"})
    receiver = build_scp(configured)
    receiver.start("127.0.0.1", 0)
    yield receiver
    receiver.stop()
    receiver.imaging.db.dispose()


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


def peak_memory(pid: int) -> int:
    """The process's peak resident set so far, in bytes (VmHWM in /proc/<pid>/status): what a
    memory test bounds, since it cannot miss a peak between two samples."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")
