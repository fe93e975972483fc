"""The blob store contract, run against both backends: a directory and a real S3 server.

One suite for both, because callers only see `BlobStore`: whatever holds on the embedded default
must hold on production's S3, and the other way round. The S3 side talks to SeaweedFS over HTTP
with signatures checked (tests/s3server.py), so signing, multipart uploads and error mapping are
exercised for real.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tracemalloc
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alliance.errors import Invalid, NotFound, PayloadTooLarge, Unavailable
from alliance.storage import (
    CHUNK_SIZE,
    BlobStore,
    FileBlobStore,
    S3BlobStore,
    StoredBlob,
    content_key,
    open_blob_store,
)

try:
    from tests.s3server import S3Server, WeedNotFound, find_weed, seaweedfs_s3
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less "prepend" import mode)
    from s3server import S3Server, WeedNotFound, find_weed, seaweedfs_s3  # type: ignore[no-redef]

MiB = 1024 * 1024


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS for the whole session: starting it costs seconds, a bucket costs little."""
    try:
        find_weed()
    except WeedNotFound as exc:
        pytest.skip(f"S3 backend not tested: {exc}")
    with seaweedfs_s3() as server:
        yield server


def _fresh_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:20]}"


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """A fresh, empty store: a new directory, or a new bucket on the session's S3 server."""
    if request.param == "file":
        return open_blob_store((tmp_path / "blobs").as_uri())
    server: S3Server = request.getfixturevalue("s3_server")
    return open_blob_store(server.url_for(_fresh_bucket()))


class GeneratedStream(io.RawIOBase):
    """A read-only stream fed by a generator, so its bytes never exist all at once.

    Records the largest read asked of it (the store must read in chunks) and can fail midway,
    like a client that disconnects during an upload.
    """

    def __init__(self, total: int, *, fail_after: int | None = None) -> None:
        self._blocks = _blocks(total)
        self._pending = b""
        self._fail_after = fail_after
        self.produced = 0
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        self.largest_read = max(self.largest_read, len(view))
        if not self._pending:
            self._pending = next(self._blocks, b"")
        count = min(len(view), len(self._pending))
        if self._fail_after is not None and self.produced + count > self._fail_after:
            raise ConnectionResetError("client went away mid-upload")
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self.produced += count
        return count


def _blocks(total: int, block: int = 64 * 1024) -> Iterator[bytes]:
    """Deterministic, non-repeating content (each block depends on its index)."""
    index = 0
    while total > 0:
        seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
        data = (seed * (block // len(seed) + 1))[: min(block, total)]
        yield data
        total -= len(data)
        index += 1


def _sha256_of(chunks: Iterator[bytes]) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _hidden_leftovers(store: BlobStore) -> list[Path]:
    """Temp files a file-backend put left behind (none may survive a failed put)."""
    if not isinstance(store, FileBlobStore):
        return []
    return [p for p in store.root.rglob("*") if p.is_file() and p.name.startswith(".")]


# --- the contract, on both backends -------------------------------------------------------------


def test_put_read_roundtrip_reports_size_and_sha256(store: BlobStore) -> None:
    data = os.urandom(2 * MiB + 12345)
    stored = store.put(io.BytesIO(data), key="docs/report-1.pdf", content_type="application/pdf")

    assert stored == StoredBlob("docs/report-1.pdf", len(data), hashlib.sha256(data).hexdigest())
    assert store.read("docs/report-1.pdf") == data
    assert store.size("docs/report-1.pdf") == len(data)
    assert store.exists("docs/report-1.pdf")
    with store.open("docs/report-1.pdf") as chunks:
        parts = list(chunks)
    assert b"".join(parts) == data
    assert len(parts) > 1 and all(len(part) <= CHUNK_SIZE for part in parts)


def test_compressible_content_round_trips_byte_exact(store: BlobStore) -> None:
    # Some S3 servers compress text-like types internally; size and bytes must still be ours.
    data = b'{"resourceType": "Bundle", "entry": []}\n' * 50_000
    stored = store.put(io.BytesIO(data), key="fhir/bundle.json", content_type="application/json")
    assert store.size(stored.key) == len(data) == stored.size
    assert store.read(stored.key) == data


def test_put_with_a_key_replaces_the_blob(store: BlobStore) -> None:
    store.put(io.BytesIO(b"first version"), key="notes/n1")
    store.put(io.BytesIO(b"second"), key="notes/n1")
    assert store.read("notes/n1") == b"second"
    assert store.size("notes/n1") == len(b"second")


def test_empty_blob(store: BlobStore) -> None:
    stored = store.put(io.BytesIO(b""))
    assert stored.size == 0
    assert stored.sha256 == hashlib.sha256(b"").hexdigest()
    assert store.read(stored.key) == b""


def test_content_addressed_key_format(store: BlobStore) -> None:
    data = b"Patient/xinyuan-people-0001 referral letter"
    digest = hashlib.sha256(data).hexdigest()

    stored = store.put(io.BytesIO(data))

    assert stored.key == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}" == content_key(digest)
    assert stored.sha256 == digest
    assert store.read(stored.key) == data


def test_same_content_addressed_blob_twice_is_a_cheap_success(store: BlobStore) -> None:
    data = os.urandom(100_000)
    first = store.put(io.BytesIO(data))
    if isinstance(store, FileBlobStore):
        before = (store.root / first.key).stat()

    second = store.put(io.BytesIO(data))

    assert second == first
    assert list(store.list_keys()) == [first.key]
    assert store.read(first.key) == data
    if isinstance(store, FileBlobStore):
        after = (store.root / first.key).stat()
        # Not rewritten (same file), but touched: a sweep of old orphans must see it as new.
        assert after.st_ino == before.st_ino
        assert after.st_mtime_ns >= before.st_mtime_ns
    assert _hidden_leftovers(store) == []


def test_large_put_is_streamed_in_chunks(store: BlobStore) -> None:
    total = 20 * MiB
    stream = GeneratedStream(total)
    expected = _sha256_of(_blocks(total))

    tracemalloc.start()
    try:
        stored = store.put(stream)  # type: ignore[arg-type]  # RawIOBase reads bytes like BinaryIO
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (stored.size, stored.sha256) == expected
    assert stream.largest_read <= CHUNK_SIZE
    # Never the whole input at once: at most the S3 spool's 8 MiB or one 5 MiB multipart part
    # (with its request copy); the file backend about one chunk.
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB for a {total // MiB} MiB put"
    assert store.size(stored.key) == total
    with store.open(stored.key) as chunks:
        assert _sha256_of(chunks) == expected


@pytest.mark.parametrize("key", ["uploads/too-big", None])
def test_max_bytes_exceeded_stores_nothing(store: BlobStore, key: str | None) -> None:
    store.put(io.BytesIO(b"already here"), key="uploads/kept")
    before = set(store.list_keys())
    stream = GeneratedStream(3 * MiB)

    with pytest.raises(PayloadTooLarge):
        store.put(stream, key=key, max_bytes=1 * MiB)  # type: ignore[arg-type]

    # Refused as soon as the limit is passed, not after reading everything.
    assert stream.produced <= 1 * MiB + CHUNK_SIZE
    assert set(store.list_keys()) == before
    assert not store.exists("uploads/too-big")
    assert _hidden_leftovers(store) == []


def test_max_bytes_is_inclusive(store: BlobStore) -> None:
    stored = store.put(io.BytesIO(b"x" * 1000), key="limits/exact", max_bytes=1000)
    assert stored.size == 1000


@pytest.mark.parametrize("key", ["uploads/broken", None])
def test_input_failing_midway_leaves_no_object(store: BlobStore, key: str | None) -> None:
    before = set(store.list_keys())
    stream = GeneratedStream(3 * MiB, fail_after=int(1.5 * MiB))

    # The caller's own error comes through unchanged.
    with pytest.raises(ConnectionResetError, match="went away"):
        store.put(stream, key=key)  # type: ignore[arg-type]

    assert set(store.list_keys()) == before
    assert not store.exists("uploads/broken")
    assert _hidden_leftovers(store) == []


def test_failed_replacement_keeps_the_old_blob(store: BlobStore) -> None:
    store.put(io.BytesIO(b"version 1"), key="docs/consent")
    with pytest.raises(ConnectionResetError):
        store.put(GeneratedStream(2 * MiB, fail_after=MiB), key="docs/consent")  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge):
        store.put(io.BytesIO(b"much too long"), key="docs/consent", max_bytes=4)
    assert store.read("docs/consent") == b"version 1"


def test_exists_and_delete_are_idempotent(store: BlobStore) -> None:
    stored = store.put(io.BytesIO(b"to be swept"))
    assert store.exists(stored.key)

    store.delete(stored.key)
    assert not store.exists(stored.key)
    store.delete(stored.key)  # again: still fine
    store.delete("never/was/here")
    assert not store.exists(stored.key)
    assert list(store.list_keys()) == []


def test_missing_key_is_not_found(store: BlobStore) -> None:
    store.put(io.BytesIO(b"x"), key="present/a")
    for missing in ["missing/blob", "present", "present/a/deeper"]:
        assert not store.exists(missing)
        with pytest.raises(NotFound):
            store.open(missing)  # raised by open itself, before any chunk
        with pytest.raises(NotFound):
            store.read(missing)
        with pytest.raises(NotFound):
            store.size(missing)


def test_read_range_reads_only_the_range(store: BlobStore) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 17)
    key = store.put(io.BytesIO(data)).key
    for offset, length in [(0, 1), (5, 100), (CHUNK_SIZE - 3, 9), (len(data) - 17, 17), (7, 0)]:
        assert store.read_range(key, offset, length) == data[offset : offset + length]
    with pytest.raises(Unavailable):
        store.read_range(key, len(data) - 10, 11)  # the index says more than the blob holds
    with pytest.raises(NotFound):
        store.read_range("missing/blob", 0, 1)
    with pytest.raises(Invalid):
        store.read_range(key, -1, 1)


def test_writer_stores_what_it_was_given_in_pieces(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)
    before = set(store.list_keys())
    writer = store.writer(spool_prefix="alliance-stow-")
    for start in range(0, len(data), 70_000):
        writer.write(data[start : start + 70_000])
    writer.finish()
    assert writer.path is not None and writer.path.read_bytes() == data
    assert bytes(writer.head) == data[: writer.HEAD]
    stored = writer.commit()
    writer.discard()  # after the commit: nothing to drop
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    assert store.read(stored.key) == data
    assert set(store.list_keys()) == before | {stored.key}
    # The same bytes again: a cheap success under the same key.
    again = store.writer(spool_prefix="alliance-stow-")
    again.write(data)
    assert again.commit() == stored
    # Discarded, or over its limit: nothing is stored and nothing is left behind.
    dropped = store.writer(spool_prefix="alliance-stow-")
    dropped.write(b"not stored")
    dropped.finish()
    dropped.discard()
    over = store.writer(spool_prefix="alliance-stow-", max_bytes=4)
    over.write(b"12345")
    with pytest.raises(PayloadTooLarge):
        over.commit()
    assert set(store.list_keys()) == before | {stored.key}
    assert store.remove_partials(datetime.now(UTC) + timedelta(days=1), dry_run=True) == []


@pytest.mark.parametrize(
    "bad_key",
    [
        "../x",
        "a/../../x",
        "/abs",
        "a\\b",
        "",
        "a//b",
        "a/",
        "./a",
        ".hidden",
        "a/..",
        "nul\x00byte",
        "with space",
        "ünïcode",
        "a?b",
        "x" * 1025,
    ],
)
def test_invalid_keys_are_refused(store: BlobStore, bad_key: str) -> None:
    stream = io.BytesIO(b"payload")
    with pytest.raises(Invalid):
        store.put(stream, key=bad_key)
    assert stream.tell() == 0, "the key is checked before the input is read"
    for operation in (store.open, store.read, store.size, store.exists, store.delete):
        with pytest.raises(Invalid):
            operation(bad_key)
    with pytest.raises(Invalid):
        store.presigned_url(bad_key, timedelta(minutes=5))
    assert list(store.list_keys()) == []


def test_list_keys_by_prefix(store: BlobStore) -> None:
    keys = ["p/a/1", "p/a/2", "p/b/1", "pa/1", "q/1", "p/a.dcm"]
    for key in keys:
        store.put(io.BytesIO(key.encode()), key=key)

    assert set(store.list_keys()) == set(keys)
    assert set(store.list_keys("")) == set(keys)
    assert set(store.list_keys("p/")) == {"p/a/1", "p/a/2", "p/b/1", "p/a.dcm"}
    assert set(store.list_keys("p/a")) == {"p/a/1", "p/a/2", "p/a.dcm"}
    assert set(store.list_keys("p/a/")) == {"p/a/1", "p/a/2"}
    assert set(store.list_keys("p")) == {"p/a/1", "p/a/2", "p/b/1", "p/a.dcm", "pa/1"}
    assert set(store.list_keys("p/a/1")) == {"p/a/1"}
    assert set(store.list_keys("zzz")) == set()
    assert set(store.list_keys("q/1/deeper")) == set()
    for bad in ["../", "/p", "p//", "a\\b"]:
        with pytest.raises(Invalid):
            list(store.list_keys(bad))


def test_ping(store: BlobStore) -> None:
    store.ping()


def test_presigned_url(store: BlobStore) -> None:
    data = os.urandom(50_000)
    stored = store.put(io.BytesIO(data), content_type="application/dicom")

    url = store.presigned_url(stored.key, timedelta(minutes=5))

    if isinstance(store, FileBlobStore):
        assert url is None
        return
    assert url is not None
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data
        assert response.headers["Content-Type"] == "application/dicom"
    # Without the signature the same object is refused: the URL is what grants access.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.split("?", 1)[0], timeout=10)
    assert refused.value.code == 403
    with pytest.raises(Invalid):
        store.presigned_url(stored.key, timedelta(days=8))


# --- backend specifics --------------------------------------------------------------------------


def test_file_store_never_leaves_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not a blob")
    store = open_blob_store((tmp_path / "root").as_uri())
    assert isinstance(store, FileBlobStore)
    (store.root / "link").symlink_to(outside, target_is_directory=True)

    for operation in (store.read, store.size, store.exists, store.delete):
        with pytest.raises(Invalid):
            operation("link/secret")
    with pytest.raises(Invalid):
        store.put(io.BytesIO(b"escape"), key="link/planted")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert list(store.list_keys()) == []


def test_file_store_ping_fails_when_root_is_gone(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "root").as_uri())
    (tmp_path / "root").rmdir()
    with pytest.raises(Unavailable):
        store.ping()


@pytest.mark.s3
def test_s3_wrong_secret_is_refused(s3_server: S3Server) -> None:
    wrong = "wrong-" + s3_server.secret_key
    url = s3_server.url_for(_fresh_bucket()).replace(s3_server.secret_key, wrong)

    with pytest.raises(Unavailable) as refused:
        open_blob_store(url)

    message = str(refused.value)
    assert "SignatureDoesNotMatch" in message and "credentials refused" in message
    assert wrong not in message and s3_server.secret_key not in message


@pytest.mark.s3
def test_s3_secret_stays_out_of_repr_and_errors(s3_server: S3Server) -> None:
    bucket = _fresh_bucket()
    store = open_blob_store(s3_server.url_for(bucket))
    assert isinstance(store, S3BlobStore)
    assert s3_server.secret_key not in repr(store)
    assert bucket in repr(store)

    # The bucket vanishing under a running store is an outage, reported without the secret.
    admin = s3_server.client()
    admin.remove_bucket(bucket)
    with pytest.raises(Unavailable) as gone:
        store.ping()
    with pytest.raises(Unavailable) as failed:
        store.put(io.BytesIO(b"x"), key="k")
    for error in (gone.value, failed.value):
        assert s3_server.secret_key not in str(error)
        assert s3_server.secret_key not in repr(error)


def test_s3_unreachable_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Unavailable) as refused:
        open_blob_store(f"s3://AKID:hunter2-secret@127.0.0.1:{port}/alliance?secure=false")
    assert "unreachable" in str(refused.value)
    assert "hunter2" not in str(refused.value)


# --- URLs ---------------------------------------------------------------------------------------


def test_file_url_creates_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "a dir with spaces" / "blobs"
    store = open_blob_store(root.as_uri())  # as_uri percent-encodes the spaces
    assert isinstance(store, FileBlobStore)
    assert root.is_dir() and store.root == root.resolve()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "var/blobs",
        "/absolute/but/no/scheme",
        "ftp://host/bucket",
        "http://127.0.0.1:9000/bucket",
        "file://relative/path",
        "file:///abs?x=1",
        "s3://127.0.0.1:9000/bucket",
        "s3://AK@127.0.0.1:9000/bucket",
        "s3://AK:hunter2-secret@127.0.0.1:9000/",
        "s3://AK:hunter2-secret@127.0.0.1:9000/bucket/extra",
        "s3://AK:hunter2-secret@127.0.0.1:9000/Bad_Bucket",
        "s3://AK:hunter2-secret@127.0.0.1:notaport/bucket",
        "s3://AK:hunter2-secret@127.0.0.1:9000/bucket?secure=maybe",
        "s3://AK:hunter2-secret@127.0.0.1:9000/bucket?tls=off",
        "s3://AK:hunter2-secret@127.0.0.1:9000/bucket?secure=true&secure=false",
        "s3://AK:hunter2-secret@:9000/bucket",
    ],
)
def test_bad_storage_urls_are_invalid(url: str) -> None:
    with pytest.raises(Invalid) as refused:
        open_blob_store(url)
    assert "hunter2" not in str(refused.value)
