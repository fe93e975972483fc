"""The blob store: DICOM instances, attachments and rendered images live here, not in the database.

One interface, two backends chosen by `ALLIANCE_STORAGE_URL`:

- `file:///absolute/path`: a directory (the embedded default under `./var/`);
- `s3://ACCESS:SECRET@host:port/bucket?secure=false&region=...`: any S3 server via the minio
  SDK (MinIO in production, SeaweedFS in the tests). ACCESS and SECRET are percent-encoded.

Rules every backend keeps, because the rest of the service relies on them (ARCHITECTURE.md,
"Storage"): a blob is written completely before the row that points to it commits, so `put` is
atomic (a failed or oversized put leaves no object behind); keys are content-addressed by SHA-256
where that fits, so putting the same bytes twice is cheap; input is streamed in chunks, so a
multi-gigabyte study never sits in memory; and backend failures surface as the errors of
`alliance.errors` (`NotFound`, `Invalid`, `PayloadTooLarge`, `Unavailable`) so every face maps
them the same way. The S3 secret never appears in a message or a repr.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, BinaryIO, cast
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import InvalidResponseError, S3Error, ServerError

from alliance.errors import Conflict, Invalid, NotFound, PayloadTooLarge, Unavailable

__all__ = [
    "CHUNK_SIZE",
    "CONTENT_PREFIX",
    "PROBE_KEY",
    "BlobChunks",
    "BlobInfo",
    "BlobStore",
    "FileBlobStore",
    "S3BlobStore",
    "StoredBlob",
    "content_key",
    "open_blob_store",
    "validate_key",
]

#: Size of the chunks read from a put's input and yielded by `open`.
CHUNK_SIZE = 1024 * 1024
#: How much of an S3 upload is spooled in memory before it spills to a temporary file.
SPOOL_MEMORY = 8 * 1024 * 1024
#: First segment of content-addressed keys: `sha256/ab/cd/abcd...`.
CONTENT_PREFIX = "sha256"
#: S3's own limit on key length, applied to both backends so a key valid on one is valid on both.
MAX_KEY_LENGTH = 1024
#: The object S3's `ping` writes to prove the bucket takes writes (never referenced by a row).
PROBE_KEY = "health/ping"
#: S3 caps presigned URLs at seven days (SigV4).
MAX_PRESIGN = timedelta(days=7)

# A segment may not start with "." : that rules out "." and ".." (no aliasing, no escaping the
# root) and reserves hidden names for the file backend's in-flight temporary files. 255 is the
# usual file-name limit (NAME_MAX).
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
# S3 error codes that mean "these credentials are not accepted", worth saying plainly.
_REFUSED = frozenset({"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"})


@dataclass(frozen=True)
class StoredBlob:
    """What a put wrote: the key, the byte count and the hex SHA-256 of the bytes."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BlobInfo:
    """A listed blob and when it was last written (UTC): how a sweeper tells an orphan left by
    a crash from the blob of an upload still running."""

    key: str
    modified: datetime


def validate_key(key: str) -> str:
    """Return `key` if it is a safe blob key, else raise `Invalid`.

    Keys are relative, `/`-separated, made of `[A-Za-z0-9._-]`, with no empty segment and no
    segment starting with `.`; at most 1024 characters. The same rule on both backends keeps a
    key portable and makes path traversal on the file backend impossible by construction.
    """
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
        raise Invalid(
            f"invalid blob key {str(key)[:120]!r}: use relative '/'-separated segments of "
            "[A-Za-z0-9._-], none empty or starting with '.'"
        )
    return key


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: a key, a key ending in `/`, or a partial key; or empty for everything."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if len(prefix) > MAX_KEY_LENGTH or not _KEY.fullmatch(body):
        raise Invalid(f"invalid blob key prefix {prefix[:120]!r}")
    return prefix


def content_key(sha256_hex: str) -> str:
    """The content-addressed key of bytes with this SHA-256: `sha256/ab/cd/abcd...`.

    Two levels of fan-out keep directories small on the file backend and spread S3 key prefixes.
    """
    if not _SHA256_HEX.fullmatch(sha256_hex):
        raise Invalid("a content key needs a lower-case hex SHA-256 digest")
    return f"{CONTENT_PREFIX}/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"


class BlobChunks(Iterator[bytes]):
    """The chunks of one blob, read lazily; the source is opened before the first chunk.

    Opening eagerly means a missing blob raises `NotFound` from `open()` itself, before a face
    has started a 200 response. The source (file or HTTP response) is released when the chunks
    run out, on `close()`, or on leaving a `with` block, so an abandoned download does not hold a
    pooled connection.
    """

    def __init__(self, chunks: Generator[bytes, None, None], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release = release
        self._closed = False

    def __iter__(self) -> BlobChunks:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:
            # StopIteration included: the source is done either way.
            self.close()
            raise

    def close(self) -> None:
        """Release the source; idempotent."""
        if not self._closed:
            self._closed = True
            try:
                self._chunks.close()
            finally:
                self._release()

    def __enter__(self) -> BlobChunks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlobWriter:
    """A content-addressed blob written as its bytes arrive (a STOW-RS part): each chunk is
    hashed and written once, to a local file (`path`) the caller may read after `finish`,
    before `commit` makes it a blob under its SHA-256 or `discard` drops it. Made by
    `BlobStore.writer`.

    A write the store cannot take (disk full, read-only, over `max_bytes`) is kept as `error`
    and later bytes are dropped, so the caller goes on reading its input and fails this blob
    alone; `commit` then raises it. The first `HEAD` bytes are also kept in memory (`head`),
    so a refused blob can still be named by what it starts with.
    """

    HEAD = 16 * 1024

    def __init__(
        self,
        file: IO[bytes] | None,
        path: Path | None,
        publish: Callable[[BlobWriter], StoredBlob] | None,
        *,
        error: Exception | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.size = 0
        self.head = bytearray()
        self.error = error
        self.max_bytes = max_bytes
        self._file = file
        self._publish = publish
        self._digest = hashlib.sha256()
        self._committed = False

    @classmethod
    def refused(cls, error: Exception) -> BlobWriter:
        """A writer for a blob the store cannot take at all (it raises `error` on commit)."""
        return cls(None, None, None, error=error)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def write(self, data: bytes) -> None:
        if len(self.head) < self.HEAD:
            self.head += data[: self.HEAD - len(self.head)]
        self.size += len(data)
        if self.error is not None:
            return
        if self.max_bytes is not None and self.size > self.max_bytes:
            self._fail(PayloadTooLarge(f"blob larger than the limit of {self.max_bytes} bytes"))
            return
        self._digest.update(data)
        try:
            assert self._file is not None
            self._file.write(data)
        except OSError as exc:
            self._fail(Unavailable(f"blob store cannot write a temporary file: {exc}"))

    def finish(self) -> None:
        """All bytes are written: `path` holds them (unless there is an `error`), and the
        file is closed (nothing stays open for writing while the blob waits for its commit)."""
        if self.error is None and self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError as exc:
                self._fail(Unavailable(f"blob store cannot write a temporary file: {exc}"))

    def commit(self) -> StoredBlob:
        """Make the bytes a blob under `content_key(sha256)`; raise `error` if there is one."""
        self.finish()
        if self.error is not None:
            self.discard()
            raise self.error
        assert self.path is not None and self._publish is not None
        try:
            with _os_errors("blob store cannot write a temporary file"):
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            stored = self._publish(self)
        except BaseException:
            self.discard()
            raise
        self._committed = True
        return stored

    def discard(self) -> None:
        """Drop what was written (nothing once committed); idempotent."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self.path is not None and not self._committed:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None

    def _fail(self, error: Exception) -> None:
        self.error = error
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None


class BlobStore(ABC):
    """Where blobs live. Callers depend on this, never on a backend.

    Errors: `Invalid` for a bad key, `NotFound` for a missing blob, `PayloadTooLarge` when a
    put exceeds `max_bytes`, `Unavailable` when the backend cannot do its part now. Errors
    raised by the input stream of a put propagate unchanged: they are the caller's, not ours.
    """

    @abstractmethod
    def put(
        self,
        stream: BinaryIO,
        *,
        key: str | None = None,
        content_type: str = "application/octet-stream",
        max_bytes: int | None = None,
    ) -> StoredBlob:
        """Store everything `stream` yields, atomically, and say what was stored.

        With `key=None` the key is `content_key(sha256)`, and putting bytes already stored
        under that key again is a cheap success. With a key, an existing blob is replaced.
        Beyond `max_bytes`, raise `PayloadTooLarge` and store nothing. `content_type` is
        recorded where the backend can keep it (S3); callers that need it keep their own copy.
        """

    @abstractmethod
    def writer(
        self,
        *,
        spool_prefix: str,
        content_type: str = "application/octet-stream",
        max_bytes: int | None = None,
    ) -> BlobWriter:
        """A `BlobWriter` for bytes that arrive in pieces, to be stored under their content
        key: one pass over them (hashed as they are written), instead of spooling them and
        then putting the spool. Where the backend keeps bytes outside the store until the
        upload (S3), the local file is made in the temporary folder, its name starting with
        `spool_prefix`; `content_type` is recorded where the backend keeps it. `Unavailable`
        if the store cannot even begin a blob."""

    @abstractmethod
    def open(self, key: str) -> BlobChunks:
        """The blob's bytes as chunks of up to `CHUNK_SIZE`; `NotFound` if there is none."""

    def read(self, key: str) -> bytes:
        """The whole blob in memory: only for blobs known to be small."""
        with self.open(key) as chunks:
            return b"".join(chunks)

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes of the blob from byte `offset` (a file seek, an S3 ranged GET, RFC
        9110 14.1.2), without reading the rest; `NotFound` if there is no blob, `Unavailable`
        if it holds fewer bytes than asked for (the range came from an index that no longer
        describes it)."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The blob's size in bytes; `NotFound` if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; removing a missing blob is a success (sweepers may race)."""

    @abstractmethod
    def presigned_url(self, key: str, expires: timedelta) -> str | None:
        """A URL that lets its holder GET the blob until `expires` passes, or None if the backend
        cannot make one (then the service streams the blob itself)."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (plain string prefix, as S3 means it), in no set order."""

    @abstractmethod
    def list_blobs(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Like `list_keys`, with each blob's last write time. A put of bytes already stored
        under their content key counts as a write, so a blob about to be referenced again is
        never older than the upload that wants it."""

    def remove_partials(self, before: datetime, *, dry_run: bool = False) -> list[str]:
        """Remove what interrupted puts left behind, last written before `before`; return it
        (names for an operator, never blob keys). Backends whose puts are atomic on the server
        side leave nothing."""
        return []

    @abstractmethod
    def ping(self) -> None:
        """Return if the store can take a write now, else raise `Unavailable` (for `/readyz`)."""


def _drain(stream: BinaryIO, sink: IO[bytes], max_bytes: int | None) -> tuple[int, str]:
    """Copy `stream` into `sink` chunk by chunk; return (size, hex SHA-256).

    Errors from `stream` propagate unchanged; errors writing `sink` become `Unavailable`.
    """
    if max_bytes is not None and max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = stream.read(CHUNK_SIZE)
        if not chunk:
            break
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise PayloadTooLarge(f"blob larger than the limit of {max_bytes} bytes")
        digest.update(chunk)
        try:
            sink.write(chunk)
        except OSError as exc:
            raise Unavailable(f"blob store cannot write a temporary file: {exc}") from exc
    return size, digest.hexdigest()


class FileBlobStore(BlobStore):
    """Blobs as files under one root directory: the zero-set-up embedded default.

    A put streams into a hidden temporary file in the target's directory (or, for a content key
    not yet known, in `sha256/`), fsyncs it and renames it into place: readers see the whole blob
    or none, and a crash leaves only a hidden temp file that listings ignore. Blob files are
    readable by the service's user only (mkstemp's 0600): they hold patient data.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root)
        if not path.is_absolute():
            raise Invalid(f"blob store root must be an absolute path, not {str(path)!r}")
        with _os_errors(f"cannot create blob store root {path}"):
            path.mkdir(parents=True, exist_ok=True)
        self._root = path.resolve()

    @property
    def root(self) -> Path:
        """The resolved root directory."""
        return self._root

    def __repr__(self) -> str:
        return f"FileBlobStore(root={str(self._root)!r})"

    def _path(self, key: str) -> Path:
        path = self._root.joinpath(*validate_key(key).split("/"))
        # Valid keys cannot climb out, but a symlink planted inside the root could lead anywhere.
        if not path.resolve().is_relative_to(self._root):
            raise Invalid(f"blob key {key!r} leads outside the blob store")
        return path

    def _makedirs(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise Conflict(f"a blob already occupies part of the path {directory}") from exc
        except OSError as exc:
            raise Unavailable(f"blob store cannot create {directory}: {exc}") from exc

    def put(
        self,
        stream: BinaryIO,
        *,
        key: str | None = None,
        content_type: str = "application/octet-stream",
        max_bytes: int | None = None,
    ) -> StoredBlob:
        target = self._path(key) if key is not None else None
        staging = target.parent if target is not None else self._root / CONTENT_PREFIX
        self._makedirs(staging)
        with _os_errors(f"blob store cannot create a temporary file in {staging}"):
            fd, tmp_name = tempfile.mkstemp(prefix=".put-", suffix=".tmp", dir=staging)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                size, digest = _drain(stream, out, max_bytes)
                with _os_errors(f"blob store cannot write {tmp}"):
                    out.flush()
                    os.fsync(out.fileno())
            if target is None:
                return self._place(tmp, size, digest)
            try:
                os.replace(tmp, target)
            except IsADirectoryError as exc:
                raise Conflict(f"blob key {key!r} names a directory of other blobs") from exc
            except OSError as exc:
                raise Unavailable(f"blob store cannot move a blob into {target}: {exc}") from exc
            _fsync_dir(target.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return StoredBlob(key if key is not None else content_key(digest), size, digest)

    def _place(self, tmp: Path, size: int, digest: str) -> StoredBlob:
        """Move a synced temporary file to its content key (or drop it when those bytes are
        there already)."""
        key = content_key(digest)
        target = self._path(key)
        if _regular_size(target) == size:
            # Same name, same size: same SHA-256, so the very same bytes are there.
            # Touched, so a sweep of old orphans does not take them from under us.
            tmp.unlink()
            with _os_errors(f"blob store cannot touch {target}"):
                os.utime(target)
            return StoredBlob(key, size, digest)
        self._makedirs(target.parent)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise Unavailable(f"blob store cannot move a blob into {target}: {exc}") from exc
        _fsync_dir(target.parent)
        return StoredBlob(key, size, digest)

    def writer(
        self,
        *,
        spool_prefix: str,
        content_type: str = "application/octet-stream",
        max_bytes: int | None = None,
    ) -> BlobWriter:
        # Written where a put stages (`sha256/`, hidden name): the commit is a rename, and a
        # crash leaves a `.put-*.tmp` that `remove_partials` takes.
        staging = self._root / CONTENT_PREFIX
        self._makedirs(staging)
        with _os_errors(f"blob store cannot create a temporary file in {staging}"):
            fd, name = tempfile.mkstemp(prefix=".put-", suffix=".tmp", dir=staging)

        def publish(w: BlobWriter) -> StoredBlob:
            assert w.path is not None
            return self._place(w.path, w.size, w.sha256)

        return BlobWriter(os.fdopen(fd, "wb"), Path(name), publish, max_bytes=max_bytes)

    def open(self, key: str) -> BlobChunks:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"blob {key!r} not found") from None
        except OSError as exc:
            raise Unavailable(f"blob store cannot open {key!r}: {exc}") from exc

        def chunks() -> Generator[bytes, None, None]:
            try:
                while chunk := handle.read(CHUNK_SIZE):
                    yield chunk
            except OSError as exc:
                raise Unavailable(f"blob store cannot read {key!r}: {exc}") from exc

        return BlobChunks(chunks(), handle.close)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"blob {key!r} not found") from None
        except OSError as exc:
            raise Unavailable(f"blob store cannot read {key!r}: {exc}") from exc
        return _whole_range(key, data, length)

    def size(self, key: str) -> int:
        found = _regular_size(self._path(key))
        if found is None:
            raise NotFound(f"blob {key!r} not found")
        return found

    def exists(self, key: str) -> bool:
        return _regular_size(self._path(key)) is not None

    def delete(self, key: str) -> None:
        path = self._path(key)
        # Empty parent directories stay: removing them would race with a concurrent put into them.
        try:
            path.unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            if _regular_size(path) is not None:  # a real blob we failed to remove
                raise Unavailable(f"blob store cannot delete {key!r}: {exc}") from exc
        except OSError as exc:
            raise Unavailable(f"blob store cannot delete {key!r}: {exc}") from exc

    def presigned_url(self, key: str, expires: timedelta) -> str | None:
        validate_key(key)
        return None

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        for path, _info in self._walk(prefix):
            yield path

    def list_blobs(self, prefix: str = "") -> Iterator[BlobInfo]:
        for key, info in self._walk(prefix):
            yield BlobInfo(key, datetime.fromtimestamp(info.st_mtime, UTC))

    def _walk(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        prefix = _validate_prefix(prefix)
        # Start at the deepest directory the prefix fully names; prune the rest as we go.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._root.joinpath(*base.split("/")) if base else self._root

        def fail(exc: OSError) -> None:
            # A prefix through a missing directory, or through a blob, simply matches nothing.
            if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                raise Unavailable(f"blob store cannot list {prefix!r}: {exc}") from exc

        for dirpath, dirnames, filenames in os.walk(start, onerror=fail):
            rel = Path(dirpath).relative_to(self._root).as_posix()
            here = "" if rel == "." else rel + "/"
            dirnames[:] = sorted(
                name
                for name in dirnames
                if not name.startswith(".")
                and ((here + name).startswith(prefix) or prefix.startswith(here + name + "/"))
            )
            for name in sorted(filenames):
                blob_key = here + name
                if name.startswith(".") or not blob_key.startswith(prefix):
                    continue
                if not _KEY.fullmatch(blob_key):
                    continue
                try:
                    info = os.stat(os.path.join(dirpath, name))
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed while we walked
                except OSError as exc:
                    raise Unavailable(f"blob store cannot stat a blob: {exc}") from exc
                if stat.S_ISREG(info.st_mode):
                    yield blob_key, info

    def remove_partials(self, before: datetime, *, dry_run: bool = False) -> list[str]:
        """The hidden `.put-*.tmp` files of puts a crash interrupted."""
        found = []
        cutoff = before.timestamp()
        for dirpath, dirnames, filenames in os.walk(self._root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not (name.startswith(".put-") and name.endswith(".tmp")):
                    continue
                path = Path(dirpath, name)
                try:
                    if path.stat().st_mtime >= cutoff:
                        continue
                    if not dry_run:
                        path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise Unavailable(f"blob store cannot remove {path}: {exc}") from exc
                found.append(path.relative_to(self._root).as_posix())
        return sorted(found)

    def ping(self) -> None:
        if not self._root.is_dir():
            raise Unavailable("blob store root is missing")
        # A real write: permission bits say nothing to root, nor about a full or read-only disk.
        try:
            fd, name = tempfile.mkstemp(prefix=".ping-", dir=self._root)
            try:
                os.write(fd, b"ping")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            raise Unavailable(f"blob store cannot take a write: {exc.strerror}") from None


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise Invalid("a blob range needs a non-negative offset and length")


def _whole_range(key: str, data: bytes, length: int) -> bytes:
    if len(data) != length:
        raise Unavailable(f"blob {key!r} holds {len(data)} of the {length} bytes asked for")
    return data


def _regular_size(path: Path) -> int | None:
    """Size of the regular file at `path`, or None if there is none."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Unavailable(f"blob store cannot stat {path}: {exc}") from exc
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: POSIX keeps directory entries in the directory's own data."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:  # not POSIX; the rename is as durable as the platform makes it
        return
    with _os_errors(f"blob store cannot sync {directory}"):
        fd = os.open(directory, os.O_RDONLY | flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _os_errors(message: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise Unavailable(f"{message}: {exc}") from exc


class S3BlobStore(BlobStore):
    """Blobs as objects in one S3 bucket, through the minio SDK: production's MinIO.

    A put spools the input to a temporary file (memory up to `SPOOL_MEMORY`, disk beyond) while
    hashing it, so the length and content key are known before the upload starts, an oversized
    input is refused before anything is sent, and a failing input never reaches the bucket. A
    single PUT or a multipart upload only becomes visible when complete, which makes the put
    atomic; minio aborts a failed multipart upload. Peak memory per put is about the spool's
    8 MiB or one 5 MiB multipart part, whichever phase is running, independent of blob size.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = True,
        region: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        """Connect and create `bucket` if missing; `Unavailable` if the server says no."""
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise Invalid(f"invalid S3 bucket name {bucket!r}")
        self._endpoint = endpoint
        self._bucket = bucket
        self._secure = secure
        self._secret = secret_key
        # minio's default waits 5 minutes per connect and retries 5 times: a readiness probe
        # against a dead server would hang. Short connects, a few quick retries.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        try:
            self._client = Minio(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,
                http_client=http,
            )
        except ValueError as exc:
            raise Invalid(self._redact(f"invalid S3 endpoint {endpoint!r}: {exc}")) from None
        self._ensure_bucket(region)

    def __repr__(self) -> str:
        return (
            f"S3BlobStore(endpoint={self._endpoint!r}, bucket={self._bucket!r}, "
            f"secure={self._secure})"
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def _ensure_bucket(self, region: str | None) -> None:
        with self._errors("create bucket"):
            if self._client.bucket_exists(self._bucket):
                return
            try:
                self._client.make_bucket(self._bucket, location=region)
            except S3Error as exc:
                # Another worker may have created it between our check and our request.
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def _redact(self, message: str) -> str:
        return message.replace(self._secret, "***") if self._secret else message

    def _unavailable(self, action: str, detail: str) -> Unavailable:
        where = f"{'https' if self._secure else 'http'}://{self._endpoint}/{self._bucket}"
        return Unavailable(self._redact(f"S3 blob store {where}: {action} failed: {detail}"))

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Map minio and transport errors; `NoSuchKey` is `NotFound` only where a key is read."""
        try:
            yield
        except S3Error as exc:
            if key is not None and exc.code == "NoSuchKey":
                raise NotFound(f"blob {key!r} not found") from None
            hint = " (credentials refused)" if exc.code in _REFUSED else ""
            raise self._unavailable(action, f"{exc.code}: {exc.message}{hint}") from exc
        except (ServerError, InvalidResponseError) as exc:
            raise self._unavailable(action, str(exc)) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            raise self._unavailable(action, f"server unreachable ({exc.reason})") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unavailable(action, f"{type(exc).__name__}: {exc}") from exc

    def _stat_size(self, key: str) -> int | None:
        """The object's size, or None if there is none."""
        try:
            with self._errors("stat", key):
                info = self._client.stat_object(self._bucket, key)
        except NotFound:
            return None
        return int(info.size or 0)

    def put(
        self,
        stream: BinaryIO,
        *,
        key: str | None = None,
        content_type: str = "application/octet-stream",
        max_bytes: int | None = None,
    ) -> StoredBlob:
        if key is not None:
            validate_key(key)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, mode="w+b") as spool:
            size, digest = _drain(stream, spool, max_bytes)
            # Typeshed's SpooledTemporaryFile is an IO[bytes] but not a BinaryIO.
            return self._upload(cast(BinaryIO, spool), size, digest, key, content_type)

    def writer(
        self,
        *,
        spool_prefix: str,
        content_type: str = "application/octet-stream",
        max_bytes: int | None = None,
    ) -> BlobWriter:
        try:
            fd, name = tempfile.mkstemp(prefix=spool_prefix, suffix=".dcm")
        except OSError as exc:
            raise Unavailable(f"cannot create a temporary file: {exc}") from exc
        path = Path(name)

        def publish(w: BlobWriter) -> StoredBlob:
            try:
                with path.open("rb") as handle:
                    return self._upload(handle, w.size, w.sha256, None, content_type)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()

        return BlobWriter(os.fdopen(fd, "wb"), path, publish, max_bytes=max_bytes)

    def _upload(
        self, spool: BinaryIO, size: int, digest: str, key: str | None, content_type: str
    ) -> StoredBlob:
        """Upload `size` bytes with this SHA-256 (under `key`, or their content key)."""
        final_key = key if key is not None else content_key(digest)
        if key is None and self._stat_size(final_key) == size:
            # Copied onto itself (server side, no bytes sent) so its age restarts: a sweep
            # of old orphans does not take it from under the upload that wants it now.
            with self._errors("refresh"):
                self._client.copy_object(
                    self._bucket,
                    final_key,
                    CopySource(self._bucket, final_key),
                    metadata={"sha256": digest},
                    metadata_directive=REPLACE,
                )
            return StoredBlob(final_key, size, digest)
        spool.seek(0)
        with self._errors("upload"):
            self._client.put_object(
                self._bucket,
                final_key,
                spool,
                length=size,
                content_type=content_type,
                # Lets an operator or a sweeper check an object without reading its key.
                metadata={"sha256": digest},
                # One part in flight: memory stays at one part (5 MiB) however large the
                # blob; minio's default of 3 holds ~30 MiB per concurrent upload.
                num_parallel_uploads=1,
            )
        return StoredBlob(final_key, size, digest)

    def open(self, key: str) -> BlobChunks:
        validate_key(key)
        with self._errors("read", key):
            response = self._client.get_object(self._bucket, key)

        def chunks() -> Generator[bytes, None, None]:
            with self._errors("read"):
                yield from response.stream(CHUNK_SIZE)

        def release() -> None:
            response.close()
            response.release_conn()

        return BlobChunks(chunks(), release)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        validate_key(key)
        _check_range(offset, length)
        if length == 0:
            return b""
        with self._errors("read", key):
            response = self._client.get_object(self._bucket, key, offset=offset, length=length)
            try:
                data = response.read()
            finally:
                response.close()
                response.release_conn()
        return _whole_range(key, bytes(data), length)

    def size(self, key: str) -> int:
        found = self._stat_size(validate_key(key))
        if found is None:
            raise NotFound(f"blob {key!r} not found")
        return found

    def exists(self, key: str) -> bool:
        return self._stat_size(validate_key(key)) is not None

    def delete(self, key: str) -> None:
        validate_key(key)
        with contextlib.suppress(NotFound), self._errors("delete", key):
            self._client.remove_object(self._bucket, key)

    def presigned_url(self, key: str, expires: timedelta) -> str | None:
        validate_key(key)
        if not timedelta(seconds=1) <= expires <= MAX_PRESIGN:
            raise Invalid("a presigned URL must expire within 1 second to 7 days")
        with self._errors("presign"):
            return str(self._client.presigned_get_object(self._bucket, key, expires=expires))

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        prefix = _validate_prefix(prefix)
        with self._errors("list"):
            for obj in self._client.list_objects(
                self._bucket, prefix=prefix or None, recursive=True
            ):
                if not obj.is_dir and obj.object_name is not None:
                    yield obj.object_name

    def list_blobs(self, prefix: str = "") -> Iterator[BlobInfo]:
        prefix = _validate_prefix(prefix)
        with self._errors("list"):
            for obj in self._client.list_objects(
                self._bucket, prefix=prefix or None, recursive=True
            ):
                if obj.is_dir or obj.object_name is None:
                    continue
                # No time would make the blob look new: it is kept, never wrongly swept.
                modified = obj.last_modified or datetime.max.replace(tzinfo=UTC)
                yield BlobInfo(obj.object_name, modified.astimezone(UTC))

    def ping(self) -> None:
        with self._errors("ping"):
            found = self._client.bucket_exists(self._bucket)
        if not found:
            raise self._unavailable("ping", f"bucket {self._bucket!r} does not exist")
        # Reachable is not enough: a full disk or read-only credentials refuse writes.
        with self._errors("test write"):
            self._client.put_object(self._bucket, PROBE_KEY, io.BytesIO(b"ping"), length=4)


def open_blob_store(url: str) -> BlobStore:
    """The blob store `url` names: `file:///absolute/path` or `s3://AK:SK@host:port/bucket?...`.

    Anything else raises `Invalid`. Messages never repeat the URL's secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise Invalid("storage URL cannot be parsed") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _file_store(parts)
    if scheme == "s3":
        return _s3_store(parts)
    raise Invalid(
        f"unsupported storage URL scheme {scheme!r}: use file:///absolute/path or "
        "s3://ACCESS:SECRET@host:port/bucket?secure=false"
    )


def _file_store(parts: SplitResult) -> FileBlobStore:
    if parts.netloc not in {"", "localhost"} or parts.query or parts.fragment:
        raise Invalid("a file storage URL is file:///absolute/path, with no host or query")
    path = unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise Invalid("a file storage URL needs an absolute path: file:///absolute/path")
    return FileBlobStore(path)


def _s3_store(parts: SplitResult) -> S3BlobStore:
    shown = _redacted(parts)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise Invalid(f"storage URL {shown} has an invalid port") from None
    if not host:
        raise Invalid(f"storage URL {shown} has no host")
    if parts.username is None or parts.password is None:
        raise Invalid(f"storage URL {shown} needs credentials: s3://ACCESS:SECRET@host:port/...")
    access_key, secret_key = unquote(parts.username), unquote(parts.password)
    if not access_key or not secret_key:
        raise Invalid(f"storage URL {shown} has an empty access or secret key")
    bucket = unquote(parts.path).removeprefix("/").removesuffix("/")
    if not bucket or "/" in bucket:
        raise Invalid(f"storage URL {shown} must name exactly one bucket: s3://.../bucket")
    if parts.fragment:
        raise Invalid(f"storage URL {shown} must not have a fragment")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise Invalid(f"storage URL {shown} has a malformed query") from None
    unknown = set(query) - {"secure", "region"}
    if unknown or any(len(values) != 1 for values in query.values()):
        raise Invalid(
            f"storage URL {shown}: only one each of 'secure' and 'region' may be given"
            + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
        )
    secure = True
    if "secure" in query:
        flag = query["secure"][0].lower()
        if flag not in _TRUE | _FALSE:
            raise Invalid(f"storage URL {shown}: secure must be true or false")
        secure = flag in _TRUE
    region = query["region"][0] if "region" in query else None
    if region == "":
        raise Invalid(f"storage URL {shown}: region must not be empty")
    endpoint = f"[{host}]" if ":" in host else host
    if port is not None:
        endpoint += f":{port}"
    return S3BlobStore(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        bucket=bucket,
        secure=secure,
        region=region,
    )


def _redacted(parts: SplitResult) -> str:
    """The URL for messages: the secret replaced, everything else as given."""
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username is not None:
        netloc = f"{parts.username}:***@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"
