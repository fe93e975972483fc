"""HTTP details of DICOMweb that are not routing: Accept negotiation (RFC 9110 12.5.1 with the
`type` and `transfer-syntax` parameters of PS3.18 8.7), a streaming multipart/related reader
for STOW-RS bodies (RFC 2387; a part is written to disk as it arrives, into a temporary file
or straight into the blob store, so a study of any size is never held in memory), and
multipart/related response framing.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from alliance.errors import BadRequest, PayloadTooLarge
from alliance.sweep import SPOOL_PREFIXES

_TOKEN_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_PARAM_SPLIT = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header (or a Content-Type), parameters lower-cased."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def param(self, name: str) -> str | None:
        return self.params.get(name)


def parse_media_type(text: str) -> MediaRange:
    parts = _PARAM_SPLIT.split(text)
    media = parts[0].strip().lower()
    params: dict[str, str] = {}
    q = 1.0
    for part in parts[1:]:
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip().strip('"')
        if key == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
            continue
        params[key] = value if key == "boundary" else value.lower() if key == "type" else value
    return MediaRange(media, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges in order of preference (q, then as written); `*/*` when absent."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(t) for t in _TOKEN_SPLIT.split(header) if t.strip()]
    ordered = sorted(enumerate(ranges), key=lambda p: (-p[1].q, p[0]))
    return [r for _, r in ordered if r.q > 0]


# ---- multipart/related request bodies ------------------------------------------------------


class Sink(Protocol):
    """Where a part's bytes go as they arrive: a spool file, or straight into the blob store
    (`alliance.storage.BlobWriter`)."""

    path: Path | None

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...


class SpoolFile:
    """A part spooled to a temporary file of its own."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIXES[0], suffix=".dcm")
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self.path: Path | None = Path(name)

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def finish(self) -> None:
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


@dataclass
class Part:
    headers: dict[str, str]
    sink: Sink
    size: int

    @property
    def path(self) -> Path | None:
        return self.sink.path

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return parse_media_type(value).type if value else None

    def discard(self) -> None:
        self.sink.discard()


class MultipartReader:
    """Feed it the body in chunks; it returns each part once its closing boundary is seen.

    A body that does not start with the boundary, breaks its framing, or ends before the
    closing boundary is a 400 (`BadRequest`); a part beyond `max_parts` is a 413
    (`PayloadTooLarge`). Every part's temporary file belongs to the caller once returned;
    `discard` removes the one still being written.
    """

    def __init__(
        self,
        boundary: str,
        *,
        max_parts: int,
        max_part_headers: int = 32,
        sink: Callable[[], Sink] = SpoolFile,
    ) -> None:
        if not boundary or len(boundary) > 70:
            raise BadRequest("a multipart body needs a boundary of 1 to 70 characters")
        self.max_parts = max_parts
        self._new_sink = sink
        self._done: list[Part] = []
        self._sink: Sink | None = None
        self._size = 0
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self.ended = False
        self.parts_seen = 0
        callbacks: Any = {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_end": self._on_end,
        }
        self._parser = MultipartParser(
            boundary.encode("latin-1"), callbacks, max_header_count=max_part_headers
        )

    def _begin(self) -> None:
        if self.parts_seen >= self.max_parts:
            raise PayloadTooLarge(f"a STOW-RS request holds at most {self.max_parts} parts")
        self._headers = {}
        self._size = 0
        self.parts_seen += 1

    def _data(self, data: bytes, start: int, end: int) -> None:
        # Made at the part's first byte, not at its boundary: between parts nothing is open.
        if self._sink is None:
            self._sink = self._new_sink()
        self._sink.write(data[start:end])
        self._size += end - start

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        if self._sink is None:
            self._sink = self._new_sink()
        self._sink.finish()
        self._done.append(Part(self._headers, self._sink, self._size))
        self._sink = None

    def _on_end(self) -> None:
        self.ended = True

    def feed(self, chunk: bytes) -> list[Part]:
        if self.ended:
            return []  # an epilogue after the closing boundary is ignored (RFC 2046 5.1.1)
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadRequest(f"the multipart body is malformed: {exc}") from None
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        if not self.ended:
            raise BadRequest("the multipart body ends without its closing boundary")

    def discard(self) -> None:
        for part in self._done:
            part.discard()
        self._done = []
        if self._sink is not None:
            self._sink.discard()
        self._sink = None


# ---- multipart/related responses -----------------------------------------------------------


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    extra = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"{extra}; boundary={boundary}'


def part_head(boundary: str, content_type: str, first: bool, location: str | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return (b"" if first else b"\r\n") + ("\r\n".join(lines) + "\r\n\r\n").encode()


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def multipart_bytes(boundary: str, parts: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """Frame (content type, body) pairs already in memory."""
    first = True
    for content_type, body in parts:
        yield part_head(boundary, content_type, first)
        yield body
        first = False
    yield closing(boundary)
