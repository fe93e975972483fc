"""WADO-RS (PS3.18 10.4): what a retrieve sends, decided from the index and the blob store.

Media negotiation for instances, frames, rendered images and bulk data (PS3.18 8.7), the
metadata of a study, series or instance assembled from the per-series cache (rebuilt when it
is missing or was built for another base URL), and the parts of multipart responses built from
the stored file. Nothing here knows HTTP beyond the parsed Accept header; the router streams.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from alliance.errors import BadRequest, NotAcceptable, NotFound, Unavailable
from alliance.numbers import whole_number
from alliance.storage import BlobStore
from alliance.sweep import SPOOL_PREFIXES
from imaging import dicom, pixels
from imaging.access import find_instances
from imaging.dicom import resolve_base
from imaging.models import Instance, Series, Study
from imaging.service import Imaging
from imaging.web import MediaRange, closing, part_head

log = logging.getLogger("alliance.imaging")

#: (content type of a part, its bytes)
Parts = list[tuple[str, bytes]]

# ---- negotiation (PS3.18 8.7) ----------------------------------------------------------------


def accepts_json(accept: list[MediaRange]) -> None:
    """Searches and metadata are DICOM JSON (PS3.18 F.2); 406 when the client wants neither."""
    if not any(
        r.type in ("*/*", "application/*", "application/dicom+json", "application/json")
        for r in accept
    ):
        raise NotAcceptable("this server answers searches and metadata in application/dicom+json")


def instance_syntax(accept: list[MediaRange]) -> str | None:
    """The transfer syntax asked for instances: None (as stored), "*", or a UID; 406 when
    the Accept header allows no multipart/related application/dicom."""
    for r in accept:
        if r.type in ("*/*", "multipart/*"):
            return None
        if r.type == "multipart/related" and (r.param("type") or dicom.MEDIA_TYPE) in (
            dicom.MEDIA_TYPE,
            "*/*",
        ):
            ts = r.param("transfer-syntax")
            if ts in (None, "*") or dicom.valid_uid(ts):
                return ts
    raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')


def check_syntax(rows: list[Instance], wanted: str | None) -> None:
    """Instances are served as stored or transcoded to Explicit VR Little Endian only."""
    if wanted in (None, "*"):
        return
    for row in rows:
        if row.transfer_syntax_uid != wanted and wanted != dicom.EXPLICIT_VR_LE:
            raise NotAcceptable(
                f"instances are available as stored ({row.transfer_syntax_uid}) "
                f"or in {dicom.EXPLICIT_VR_LE}, not {wanted}"
            )


def frame_numbers(text: str | None) -> list[int]:
    numbers = [whole_number(p.strip()) for p in (text or "").split(",")]
    if not all(numbers):  # None (not a number) or 0
        raise BadRequest("frame numbers are positive integers separated by commas")
    return [n for n in numbers if n]


def frame_choice(accept: list[MediaRange], stored: str) -> tuple[bool, str]:
    """(decode to uncompressed?, part media type) for frames (PS3.18 8.7.3.3.2)."""
    native = stored in pixels.UNCOMPRESSED
    own = pixels.media_type_of(stored)
    for r in accept:
        part = r.param("type") if r.type == "multipart/related" else None
        ts = r.param("transfer-syntax")
        if r.type == "*/*" and r.param("type") is None:
            return True, "application/octet-stream"  # the default: uncompressed (8.7.3.5)
        if r.type not in ("multipart/related", "multipart/*"):
            continue
        part = part or "application/octet-stream"
        if part in ("*/*", "*"):
            return native, own if not native else "application/octet-stream"
        if part == "application/octet-stream":
            if ts in (None, dicom.EXPLICIT_VR_LE):
                return True, part
            if ts == "*":
                return native, "application/octet-stream" if native else own
            if ts == stored:
                return False, part
            continue
        if part == own and ts in (None, "*", stored):
            return False, own
    raise NotAcceptable(
        f"frames of this instance are available as {own} ({stored}) or as "
        "application/octet-stream (uncompressed)"
    )


def rendered_type(accept: list[MediaRange]) -> str:
    for r in accept:
        if r.type in ("*/*", "image/*", "image/jpeg"):
            return "image/jpeg"
        if r.type == "image/png":
            return "image/png"
    raise NotAcceptable("rendered images are served as image/jpeg or image/png")


def accepts_bulk(accept: list[MediaRange]) -> None:
    if not any(
        r.type in ("*/*", "multipart/*")
        or (
            r.type == "multipart/related"
            and (r.param("type") or "application/octet-stream")
            in ("application/octet-stream", "*/*")
        )
        or r.type == "application/octet-stream"
        for r in accept
    ):
        raise NotAcceptable(
            'bulk data is served as multipart/related; type="application/octet-stream"'
        )


# ---- metadata (PS3.18 10.4.1.1.2) ------------------------------------------------------------


def metadata(
    session: Session,
    imaging: Imaging,
    study: Study,
    series_uid: str | None,
    instance_uid: str | None,
) -> tuple[str, bytes]:
    """(ETag, gzip DICOM JSON array) of a study's, series' or instance's metadata.

    A series' metadata is cached, gzip'd, on its row; one missing (new instances were
    indexed since) or built for another base URL is rebuilt here, in the request's
    transaction (the read then runs as a write: alliance.security.guard).
    """
    base = imaging.base
    if instance_uid is not None:
        one = find_instances(session, study, series_uid, instance_uid)[0]
        text = resolve_base(b"[" + dicom.decompress_json(one.metadata_z) + b"]", base)
        return hashlib.sha256(text).hexdigest()[:32], gzip.compress(text, 6, mtime=0)
    query = select(Series).where(Series.study_uid == study.study_uid)
    if series_uid is not None:
        query = query.where(Series.series_uid == series_uid)
    rows = list(session.scalars(query.order_by(Series.series_number, Series.series_uid)))
    if not rows:
        raise NotFound(f"{series_uid or study.study_uid} is not known")
    for row in rows:
        if row.metadata_gz is None or row.metadata_base != base:
            imaging.build_series_metadata(session, row)
    if len(rows) == 1:
        assert rows[0].metadata_gz is not None and rows[0].metadata_etag is not None
        return rows[0].metadata_etag, rows[0].metadata_gz
    arrays = [gzip.decompress(r.metadata_gz or b"")[1:-1] for r in rows]
    text = b"[" + b",".join(a for a in arrays if a) + b"]"
    joined = hashlib.sha256("".join(r.metadata_etag or "" for r in rows).encode())
    return joined.hexdigest()[:32], gzip.compress(text, 6, mtime=0)


# ---- instances, frames, rendered, thumbnails, bulk data --------------------------------------


@contextlib.contextmanager
def stored(key: str) -> Iterator[None]:
    """The blob store's errors as a client may see them: which instance is missing is logged,
    never the store's keys, paths or endpoints."""
    try:
        yield
    except NotFound:
        log.error("an indexed instance's blob %s is missing from the blob store", key)
        raise NotFound("a stored instance is missing from the image store") from None
    except Unavailable as exc:
        log.error("the blob store failed reading %s: %s", key, exc.message)
        raise Unavailable("the image store is unavailable; try again later") from None


def check_stored(blobs: BlobStore, rows: list[Instance]) -> None:
    """Every instance's bytes are there, before a retrieve answers 200: afterwards a missing
    blob could only cut the body short (PS3.18 10.4: a retrieve sends all or fails)."""
    for row in rows:
        with stored(row.blob_key):
            if not blobs.exists(row.blob_key):
                raise NotFound(row.blob_key)


@contextlib.contextmanager
def local_copy(blobs: BlobStore, key: str) -> Iterator[Path]:
    """The blob copied to a temporary file (pydicom reads files; the blob may be in S3)."""
    with tempfile.NamedTemporaryFile(prefix=SPOOL_PREFIXES[2], suffix=".dcm") as handle:
        with stored(key), blobs.open(key) as chunks:
            for chunk in chunks:
                handle.write(chunk)
        handle.flush()
        yield Path(handle.name)


def try_transcode(blobs: BlobStore, rows: list[Instance], wanted: str | None) -> None:
    """Transcoding can fail (no decoder): try the first instance before the 200 is sent."""
    if wanted not in (None, "*") and any(r.transfer_syntax_uid != wanted for r in rows):
        with local_copy(blobs, rows[0].blob_key) as path:
            pixels.explicit_little_endian(path)


def instances_body(
    blobs: BlobStore, rows: list[Instance], wanted: str | None, boundary: str
) -> Iterator[bytes]:
    """The multipart/related body of a retrieve, each instance streamed from the blob store
    as stored, or transcoded to `wanted` (Explicit VR Little Endian)."""
    first = True
    for row in rows:
        if wanted in (None, "*") or row.transfer_syntax_uid == wanted:
            ts = row.transfer_syntax_uid
            yield part_head(boundary, f"application/dicom; transfer-syntax={ts}", first)
            with blobs.open(row.blob_key) as chunks:
                yield from chunks
        else:
            with local_copy(blobs, row.blob_key) as path:
                data = pixels.explicit_little_endian(path)
            yield part_head(boundary, f"application/dicom; transfer-syntax={wanted}", first)
            yield data
        first = False
    yield closing(boundary)


def frames(
    blobs: BlobStore, row: Instance, numbers: list[int], decode: bool, part_type: str
) -> Parts:
    """The frames asked for, decoded to uncompressed or as stored (PS3.18 10.4.1.1.3).

    A frame sent as stored (or native, which is its own uncompressed form) is read from the
    byte ranges recorded at ingest: a file seek or an S3 ranged GET of that frame alone. Only
    what must be decoded, and instances indexed before the ranges were recorded, are read from
    a local copy of the whole file.
    """
    syntax = row.transfer_syntax_uid
    ranges = dicom.ranges_of(row.frame_ranges)
    if ranges is not None and (not decode or syntax in pixels.UNCOMPRESSED):
        bad = [n for n in numbers if n < 1 or n > len(ranges)]
        if bad:
            raise NotFound(
                f"frame {bad[0]} does not exist; the instance has {len(ranges)} frame(s)"
            )
        if decode:
            ctype = f"application/octet-stream; transfer-syntax={dicom.EXPLICIT_VR_LE}"
        else:
            ctype = f"{part_type}; transfer-syntax={syntax}"
        with stored(row.blob_key):
            return [(ctype, frame_bytes(blobs, row.blob_key, ranges[n - 1])) for n in numbers]
    with local_copy(blobs, row.blob_key) as path:
        ds = pixels.read(path)
        pixels.check_frames(ds, numbers)
        parts = []
        for n in numbers:
            if decode:
                data = (
                    pixels.stored_frame(ds, path, n)
                    if syntax in pixels.UNCOMPRESSED
                    else pixels.decoded_frame(path, n)
                )
                ctype = f"application/octet-stream; transfer-syntax={dicom.EXPLICIT_VR_LE}"
            else:
                data = pixels.stored_frame(ds, path, n)
                ctype = f"{part_type}; transfer-syntax={syntax}"
            parts.append((ctype, data))
        return parts


def frame_bytes(blobs: BlobStore, key: str, ranges: list[tuple[int, int]]) -> bytes:
    """One frame's bytes: each of its ranges read from the blob, joined."""
    return b"".join(blobs.read_range(key, at, size) for at, size in ranges)


class DecodedFrames:
    """The frames last decoded for display, most recent last, up to `max_bytes` in all: a
    viewer asks for the same image again with another window or size, and a series is paged
    through back and forth; those renderings skip copying and decoding the instance. Keys are
    (content-addressed blob key, frame number), whose pixels never change, so nothing here can
    disagree with another worker's copy (ARCHITECTURE.md: no caches that must agree)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[tuple[str, int], pixels.Decoded] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> pixels.Decoded | None:
        with self._lock:
            found = self._frames.get(key)
            if found is not None:
                self._frames.move_to_end(key)
            return found

    def put(self, key: tuple[str, int], decoded: pixels.Decoded) -> None:
        if decoded.nbytes > self.max_bytes:
            return
        for array in (decoded.rgb, decoded.values):
            if array is not None:
                array.setflags(write=False)  # shared by every rendering of the frame
        with self._lock:
            old = self._frames.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._frames[key] = decoded
            self._bytes += decoded.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._frames.popitem(last=False)
                self._bytes -= dropped.nbytes


#: 32 MB: about fifteen 512x512 CT slices after the modality LUT.
DECODED = DecodedFrames(32 * 1024 * 1024)


def render(blobs: BlobStore, row: Instance, number: int, options: pixels.RenderOptions) -> bytes:
    """One frame rendered as an image (PS3.18 10.4.1.1.5), decoded once for as long as it
    stays among the `DECODED` frames."""
    key = (row.blob_key, number)
    decoded = DECODED.get(key)
    if decoded is None:
        with local_copy(blobs, row.blob_key) as path:
            ds = pixels.read(path)
            pixels.check_frames(ds, [number])
            decoded = pixels.decode_for_display(path, number)
        DECODED.put(key, decoded)
    return pixels.render_decoded(decoded, options)


def thumbnail_source(rows: list[Instance], instance_uid: str | None) -> Instance:
    """The instance a thumbnail shows: the middle image (of the first series, for a study or
    a series; the instance itself when one is named)."""
    images = [r for r in rows if r.rows]
    if not images:
        raise NotFound("no image to make a thumbnail of")
    if instance_uid is None:
        first = images[0].series_uid
        images = [r for r in images if r.series_uid == first]
    return images[len(images) // 2]


def bulk(blobs: BlobStore, row: Instance, path: str) -> Parts:
    """A bulk data value (PS3.18 10.4.1.1.4): the pixel data, frame by frame when
    encapsulated, or another large value by its attribute path."""
    key = path.strip("/").upper()
    with local_copy(blobs, row.blob_key) as local:
        if key == "7FE00010":
            ds = pixels.read(local)
            pixels.check_frames(ds, [1])
            ts = row.transfer_syntax_uid
            if ts in pixels.UNCOMPRESSED:
                return [("application/octet-stream", bytes(ds.PixelData))]
            count = pixels.number_of_frames(ds)
            media = pixels.media_type_of(ts)
            return [
                (f"{media}; transfer-syntax={ts}", pixels.stored_frame(ds, local, n))
                for n in range(1, count + 1)
            ]
        value, _vr = pixels.bulk_value(local, path)
        return [("application/octet-stream", value)]
