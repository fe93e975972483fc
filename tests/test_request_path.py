"""What the request path keeps between requests does not weaken it (issue 12): a token ended
is refused by every worker at its very next request, whatever the workers kept of it; and a
database connection the server ended is replaced, not handed to the next request."""

from __future__ import annotations

import http.client
import os
import signal
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text

from alliance.audit.models import AuditRecord
from alliance.audit.service import verify
from alliance.config import Settings
from alliance.db import Database
from tests.conftest import bearer, mint_token, serving


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (uvicorn's workers of `alliance serve`)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def _holder(server_port: int, client_port: int, workers: set[int]) -> int | None:
    """Which worker process holds the server's end of the TCP connection from `client_port`
    (the socket's inode in /proc/net/tcp, found among the worker's open files)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            inode = fields[9]
    if inode is None:
        return None
    for pid in workers:
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            return pid
    return None


def test_a_token_ended_is_refused_by_every_worker_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """`alliance serve --workers 2`: a kept-alive connection to each worker (which worker
    holds a connection is read from /proc) reads with the same token, so each worker has
    verified it and made its principal; the token is ended through one worker (POST
    /auth/logout); the very next request on each connection, the other worker's first, is
    401 invalid_token."""
    token = mint_token(settings, "dr.xinyuan.people")
    headers = {"Authorization": f"Bearer {token}"}
    with serving(settings, tmp_path / "serve.log", "--workers", "2") as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        opened: list[http.client.HTTPConnection] = []

        def connect() -> tuple[http.client.HTTPConnection, int]:
            """A new connection, kept alive, and the worker that accepted it."""
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            opened.append(conn)
            conn.connect()
            client_port = conn.sock.getsockname()[1]
            deadline = time.monotonic() + 10
            while (worker := _holder(port, client_port, _children(proc.pid))) is None:
                assert time.monotonic() < deadline, "no worker accepted the connection"
                time.sleep(0.01)
            return conn, worker

        def read(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
            conn.request("GET", "/fhir/Patient/demo-aygul", headers=headers)
            answer = conn.getresponse()
            answer.read()
            return answer

        try:
            first, one = connect()
            # An idle worker accepts every connection waiting (asyncio accepts all it can at
            # once): stopped for a moment, it leaves the next connection to the other worker.
            # (Only for a moment: uvicorn's supervisor restarts a worker silent for long.)
            os.kill(one, signal.SIGSTOP)
            try:
                second, other = connect()
            finally:
                os.kill(one, signal.SIGCONT)
            assert other != one
            for conn in (first, second, first, second):
                # Each worker verifies the token and makes its principal, then serves it
                # again from what it kept.
                assert read(conn).status == 200
            first.request("POST", "/auth/logout", headers=headers)
            ended = first.getresponse()
            ended.read()
            assert ended.status == 204
            for conn in (second, first):  # the other worker first
                answer = read(conn)
                assert answer.status == 401
                assert 'error="invalid_token"' in (answer.getheader("www-authenticate") or "")
        finally:
            for conn in opened:
                conn.close()


def test_a_database_connection_ended_by_the_server_is_replaced(
    settings: Settings, client: TestClient
) -> None:
    """PostgreSQL ends every connection the app holds (pg_terminate_backend, as a restart or
    an administrator does): the next read is answered (the pool replaces what the server
    closed, without a round trip per checkout) and audited, and the chain verifies."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    headers = bearer(settings, "dr.xinyuan.people")
    assert client.get("/fhir/Patient/demo-aygul", headers=headers).status_code == 200
    admin = create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            app_connections = conn.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            ).all()
            assert app_connections  # the app's pooled connections
            for pid in app_connections:  # each ended, and waited for (up to 5 s)
                conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        r = client.get("/fhir/Patient/demo-aygul", headers={**headers, "X-Request-ID": "after"})
        assert r.status_code == 200
    finally:
        admin.dispose()
    db = Database(settings.database_url)
    try:
        with db.transaction(read_only=True) as s:
            audited = s.scalar(
                select(func.count())
                .select_from(AuditRecord)
                .where(AuditRecord.content.contains('"value":"after"'))
            )
            assert audited == 1
            assert verify(s).ok
    finally:
        db.dispose()
