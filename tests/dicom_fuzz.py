"""A corpus of hostile DICOM input, made by code (issue 11 section 2): PS3.10 files for STOW-RS
and C-STORE, and broken multipart/related bodies for STOW-RS, each with the exact answer the
service must give.

A file case names the STOW-RS FailureReason of its one part (PS3.18 10.5.3; the request then
answers 409) and the C-STORE status (PS3.4 B.2.3), or None when it cannot be sent over C-STORE
(its file meta, which C-STORE does not carry, is what is wrong; or its transfer syntax is
refused when the association is negotiated). A C-STORE SCU sends the bytes after the file meta
exactly as they are on disk, under the presentation context of the file meta's transfer syntax,
so a data set that contradicts its transfer syntax reaches the receiver as it is.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.imaging_data import ct_series, encode, relabel

CANNOT_UNDERSTAND, DOES_NOT_MATCH, SYNTAX_NOT_SUPPORTED = 0xC000, 0xA900, 0xC122

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: The transfer syntaxes the corpus sends C-STORE under, one presentation context each.
CSTORE_SYNTAXES = [IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, JPEG_BASELINE]
#: What the deflate bomb expands to.
BOMB_BYTES = 4 * 1024**3

_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class FuzzFile:
    name: str
    data: bytes
    #: FailureReason of the part in STOW-RS's FailedSOPSequence.
    stow: int
    #: C-STORE response status; None: not sent over C-STORE (see the module docstring).
    cstore: int | None


@dataclass(frozen=True)
class FuzzBody:
    """A STOW-RS request body (and its Content-Type) broken as a whole."""

    name: str
    content_type: str
    body: bytes
    #: The HTTP status: 400 malformed, 413 too large, 415 not multipart/related DICOM.
    status: int


# ---- building blocks -------------------------------------------------------------------------


def base() -> bytes:
    """A small valid CT slice, Explicit VR Little Endian, PixelData last."""
    return ct_series(1, rows=16, columns=16)[0]


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _meta_end(data: bytes) -> int:
    """Where the data set starts: after the preamble, the magic and the file meta group."""
    (group_length,) = struct.unpack_from("<I", data, 132 + 8)
    return int(132 + 12 + group_length)


def _find(data: bytes, tag: int, vr: bytes = b"") -> int:
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    at = data.find(needle, _meta_end(data))
    assert at > 0, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the file"
    return at


def _with_meta(data: bytes, syntax: str | None = None, **values: str) -> bytes:
    """The file with its file meta naming `syntax` and holding `values`, the data set's bytes
    left as they were."""
    ds = _read(data)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    for keyword, value in values.items():
        setattr(ds.file_meta, keyword, value)
    head = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(head, ds.file_meta)
    return b"\x00" * 128 + b"DICM" + head.getvalue() + data[_meta_end(data) :]


def _encoded_as(data: bytes, syntax: str) -> bytes:
    """The data set encoded in `syntax` (an uncompressed one)."""
    ds = _read(data)
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    little, implicit = syntax != EXPLICIT_VR_BE, syntax == IMPLICIT_VR_LE
    ds.save_as(out, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return out.getvalue()


def _element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; `length` overrides the declared length."""
    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + struct.pack("<HI", 0, size) + value
    return head + struct.pack("<H", size) + value


def _insert(data: bytes, tag: int, element: bytes) -> bytes:
    """`element` put before the first top-level element whose tag is above `tag`, keeping the
    data set in tag order (an Explicit VR Little Endian file of defined lengths)."""
    pos = _meta_end(data)
    while pos < len(data):
        group, number = struct.unpack_from("<HH", data, pos)
        if (group << 16 | number) > tag:
            break
        if data[pos + 4 : pos + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return data[:pos] + element + data[pos:]


def _meta(data: bytes) -> bytes:
    return data[: _meta_end(data)]


def _set_u32(data: bytes, at: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, at, value)
    return bytes(out)


def _set_u16(data: bytes, at: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<H", out, at, value)
    return bytes(out)


def _nested(depth: int, *, defined: bool) -> bytes:
    """ContentSequence (0040,A730) with `depth` sequences nested in one another, each holding
    one item; the innermost item holds a CodeValue. Built by hand: pydicom's own writer
    recurses once per level and cannot write 1000."""
    inner = _element(0x00080100, b"SH", b"X1")
    for _ in range(depth):
        if defined:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
            inner = _element(0x0040A730, b"SQ", item)
        else:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED) + inner
            item += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            seq = item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
            inner = _element(0x0040A730, b"SQ", seq, length=_UNDEFINED)
    return inner


@cache
def deflate_bomb() -> bytes:
    """A Deflated Explicit VR Little Endian file (PS3.5 A.5) of 4 MB whose data set inflates
    to 4.2 GB: a SOP Instance UID, then a private OB element declaring the rest of
    `BOMB_BYTES`, its value zeros. The compressed zeros are made once and repeated: a full
    flush ends each copy on a byte boundary with an empty history, so the copies concatenate
    into one valid stream (inflated by hand: 4,227,858,517 bytes, the stream complete)."""
    ds = _read(base())
    prefix = _element(0x00080018, b"UI", ds.SOPInstanceUID.encode() + b"\x00")
    prefix += _element(0x00091010, b"OB", b"", length=BOMB_BYTES - len(prefix) - 12)
    chunk = 64 * 1024 * 1024
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = squeeze.compress(bytes(chunk)) + squeeze.flush(zlib.Z_FULL_FLUSH)
    start = squeeze.compress(prefix) + squeeze.flush(zlib.Z_FULL_FLUSH)
    ending = squeeze.flush(zlib.Z_FINISH)
    body = start + zeros * ((BOMB_BYTES - len(prefix)) // chunk) + ending
    return _meta(_with_meta(base(), DEFLATED_EXPLICIT_VR_LE)) + body


def _deflated_under_explicit() -> bytes:
    """The deflate bomb's compressed bytes under a file meta saying Explicit VR Little Endian:
    the transfer syntax contradicts the data."""
    bomb = deflate_bomb()
    return _meta(base()) + bomb[_meta_end(bomb) :]


def _truncations(data: bytes) -> Iterator[tuple[str, bytes, bool]]:
    """The file cut inside every element (in its header and in its value), inside the file
    meta and inside the preamble: never on an element boundary, where a shorter file could
    still be a whole one. Yields (where, bytes, whether C-STORE can send it: the cut is in the
    data set)."""
    yield "preamble", data[:100], False
    yield "magic", data[:130], False
    ds_start = _meta_end(data)
    for tag, value_at, length in _elements(data, 132, len(data))[0]:
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        cuts = {value_at - 3}  # inside the element's header
        if 1 < length < _UNDEFINED:
            cuts.add(value_at + length // 2)  # inside its value
        for cut in sorted(cuts):
            # pynetdicom sends no data set shorter than an element header: not sent then.
            yield f"{name}@{cut}", data[:cut], cut >= ds_start + 8


_LONG = (b"OB", b"OW", b"SQ", b"UN", b"UT")


def _elements(data: bytes, pos: int, end: int) -> tuple[list[tuple[int, int, int]], int]:
    """(tag, where its value starts, its declared length) of the elements of an Explicit VR
    Little Endian data set from `pos` (sequences of undefined length skipped whole), and where
    the data set ends: at `end`, or past the delimiter of the item it is in."""
    found = []
    while pos < end:
        group, number = struct.unpack_from("<HH", data, pos)
        tag, vr = group << 16 | number, data[pos + 4 : pos + 6]
        if tag == _ITEM_END:
            return found, pos + 8
        if vr in _LONG:
            length, pos = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        else:
            length, pos = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        found.append((tag, pos, length))
        pos = _skip_items(data, pos) if length == _UNDEFINED else pos + length
    return found, pos


def _skip_items(data: bytes, pos: int) -> int:
    """Past the delimiter of an undefined-length sequence whose items start at `pos`."""
    while True:
        tag, length = struct.unpack_from("<II", data, pos)
        pos += 8
        if tag == 0xE0DDFFFE:  # (FFFE,E0DD) read as one little-endian number
            return pos
        pos = _elements(data, pos, len(data))[1] if length == _UNDEFINED else pos + length


# ---- the corpus ----------------------------------------------------------------------------


def files() -> list[FuzzFile]:
    good = base()
    ds = _read(good)
    cases: list[FuzzFile] = []
    real = relabel("CT_small.dcm")  # a real file shipped with pydicom
    for where, cut, in_data_set in _truncations(real):
        cases.append(
            FuzzFile(
                f"truncated {where}",
                cut,
                CANNOT_UNDERSTAND,
                CANNOT_UNDERSTAND if in_data_set else None,
            )
        )
    private_ob = _insert(good, 0x00091010, _element(0x00091010, b"OB", b"\x00" * 8))
    at_ob = _find(private_ob, 0x00091010, b"OB")
    at_lo = _find(good, 0x00081030, b"LO")
    at_pixels = _find(good, 0x7FE00010, b"OW")
    implicit = _encoded_as(good, IMPLICIT_VR_LE)
    at_implicit = implicit.find(b"\x08\x00\x30\x10", _meta_end(implicit))  # StudyDescription
    with_item = _insert(good, 0x0040A730, _nested(1, defined=True))
    # The item's length: after the sequence's 12-byte header and the item tag.
    item_length = _set_u32(with_item, _find(with_item, 0x0040A730, b"SQ") + 16, 0xFFFFFFFE)
    cases += [
        FuzzFile(
            "OB length 0xFFFFFFFE",
            _set_u32(private_ob, at_ob + 8, 0xFFFFFFFE),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile(
            "OB length undefined",
            _set_u32(private_ob, at_ob + 8, _UNDEFINED),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile(
            "LO length past the end", _set_u16(good, at_lo + 6, 0xFFFF), *[CANNOT_UNDERSTAND] * 2
        ),
        FuzzFile(
            "PixelData length past the end",
            _set_u32(good, at_pixels + 8, 0xFFFFFFF0),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile(
            "implicit VR length 0xFFFFFFFE",
            _set_u32(implicit, at_implicit + 4, 0xFFFFFFFE),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile("item length 0xFFFFFFFE", item_length, *[CANNOT_UNDERSTAND] * 2),
        FuzzFile(
            "sequences 1000 deep, undefined lengths",
            _insert(good, 0x0040A730, _nested(1000, defined=False)),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile(
            "sequences 1000 deep, defined lengths",
            _insert(good, 0x0040A730, _nested(1000, defined=True)),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile("deflate bomb", deflate_bomb(), SYNTAX_NOT_SUPPORTED, None),
        FuzzFile(
            "deflated data, explicit VR meta", _deflated_under_explicit(), *[CANNOT_UNDERSTAND] * 2
        ),
        FuzzFile(
            "implicit VR data, explicit VR meta",
            _with_meta(implicit, EXPLICIT_VR_LE),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile(
            "explicit VR data, implicit VR meta",
            _with_meta(good, IMPLICIT_VR_LE),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile(
            "little endian data, big endian meta",
            _with_meta(good, EXPLICIT_VR_BE),
            *[CANNOT_UNDERSTAND] * 2,
        ),
        FuzzFile(
            "native pixels, JPEG Baseline meta",
            _with_meta(good, JPEG_BASELINE),
            *[DOES_NOT_MATCH] * 2,
        ),
        FuzzFile(
            "encapsulated pixels, explicit VR meta",
            _with_meta(relabel("MR_small_RLE.dcm"), EXPLICIT_VR_LE),
            *[DOES_NOT_MATCH] * 2,
        ),
        FuzzFile(
            "unknown transfer syntax", _with_meta(good, "1.2.3.4.5.6"), SYNTAX_NOT_SUPPORTED, None
        ),
        FuzzFile(
            "file meta names another instance", _other_instance_in_meta(good), *[DOES_NOT_MATCH] * 2
        ),
        FuzzFile(
            "DICM magic, then noise",
            b"\x00" * 128 + b"DICM" + _noise(4096),
            CANNOT_UNDERSTAND,
            None,
        ),
        FuzzFile(
            "a good file meta, then noise", _meta(good) + _noise(4096), *[CANNOT_UNDERSTAND] * 2
        ),
        FuzzFile("pixel data shorter than its image", _rows(good, 512), *[DOES_NOT_MATCH] * 2),
        FuzzFile("SOP Instance UID twice", _duplicated(good, ds), *[CANNOT_UNDERSTAND] * 2),
        FuzzFile("elements out of order", _out_of_order(good), *[CANNOT_UNDERSTAND] * 2),
    ]
    return cases


def _other_instance_in_meta(data: bytes) -> bytes:
    return _with_meta(data, MediaStorageSOPInstanceUID=generate_uid())


def _noise(size: int) -> bytes:
    """Bytes that are no DICOM, the same every run."""
    return bytes((i * 7919 + (i >> 3) * 104729) % 251 for i in range(size))


def _rows(data: bytes, rows: int) -> bytes:
    ds = _read(data)
    ds.Rows = rows
    return encode(ds)


def _duplicated(data: bytes, ds: Dataset) -> bytes:
    """A second SOP Instance UID element right after the first: parsers that keep the first
    and those that keep the last would see different instances."""
    at = _find(data, 0x00080018, b"UI")
    (length,) = struct.unpack_from("<H", data, at + 6)
    other = _element(0x00080018, b"UI", (generate_uid() + "\x00").encode()[:64])
    end = at + 8 + length
    return data[:end] + other + data[end:]


def _out_of_order(data: bytes) -> bytes:
    """StudyDescription (0008,1030) moved after PatientName (0010,0010)."""
    at = _find(data, 0x00081030, b"LO")
    (length,) = struct.unpack_from("<H", data, at + 6)
    element = data[at : at + 8 + length]
    rest = data[:at] + data[at + 8 + length :]
    name = _find(rest, 0x00100010, b"PN")
    (name_length,) = struct.unpack_from("<H", rest, name + 6)
    after = name + 8 + name_length
    return rest[:after] + element + rest[after:]


# ---- broken bodies ---------------------------------------------------------------------------

BOUNDARY = "fuzz-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _part(data: bytes, headers: str = "Content-Type: application/dicom\r\n") -> bytes:
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + b"\r\n"


def _closing() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def bodies(max_parts: int) -> list[FuzzBody]:
    """Broken STOW-RS bodies; `max_parts` is the server's limit on parts per request."""
    good = base()
    whole = _part(good) + _closing()
    empty_parts = _part(b"", "") * (max_parts + 1) + _closing()
    return [
        FuzzBody(
            "no boundary parameter", 'multipart/related; type="application/dicom"', whole, 400
        ),
        FuzzBody("another boundary in the body", STOW_TYPE, whole.replace(b"fuzz-", b"zzuf-"), 400),
        FuzzBody("boundary of 71 characters", STOW_TYPE.replace(BOUNDARY, "b" * 71), whole, 400),
        FuzzBody("no closing boundary", STOW_TYPE, _part(good), 400),
        FuzzBody("closing boundary only", STOW_TYPE, _closing(), 400),
        FuzzBody("empty body", STOW_TYPE, b"", 400),
        FuzzBody("garbage before the first boundary", STOW_TYPE, b"xx" + whole, 400),
        FuzzBody(
            "boundary line duplicated",
            STOW_TYPE,
            f"--{BOUNDARY}\r\n".encode() + whole,
            400,
        ),
        FuzzBody(
            "a header line without a colon",
            STOW_TYPE,
            _part(good, "Content-Type application/dicom\r\n") + _closing(),
            400,
        ),
        FuzzBody(
            "a header line of 64 KiB",
            STOW_TYPE,
            _part(good, "X-Junk: " + "j" * 65536 + "\r\n") + _closing(),
            400,
        ),
        FuzzBody(
            "100 header lines",
            STOW_TYPE,
            _part(good, "".join(f"X-H{i}: v\r\n" for i in range(100))) + _closing(),
            400,
        ),
        FuzzBody(
            "headers never end", STOW_TYPE, f"--{BOUNDARY}\r\nContent-Type: app".encode(), 400
        ),
        FuzzBody(f"{max_parts + 1} parts", STOW_TYPE, empty_parts, 413),
        FuzzBody("application/dicom, not multipart", "application/dicom", good, 415),
        FuzzBody(
            "parts of type application/dicom+json",
            STOW_TYPE.replace('"application/dicom"', '"application/dicom+json"'),
            whole,
            415,
        ),
    ]


def refused_parts() -> list[tuple[str, bytes, bytes, int]]:
    """Well-framed bodies whose one part is refused: (name, Content-Type header line, part,
    FailureReason)."""
    return [
        ("a part with no Content-Type, not DICOM", b"", _noise(512), CANNOT_UNDERSTAND),
        (
            "a part of type text/plain",
            b"Content-Type: text/plain\r\n",
            base(),
            CANNOT_UNDERSTAND,
        ),
        ("an empty part", b"Content-Type: application/dicom\r\n", b"", CANNOT_UNDERSTAND),
    ]
