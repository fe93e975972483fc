"""The structural scan of a PS3.10 file (PS3.5 section 7), before pydicom sees it.

Input comes from other hospitals' PACS and modalities and from anyone with a token, so it is
treated as hostile. `scan` walks the file's structure reading only tags and lengths: every
declared length must fit in the file, sequences may nest at most `MAX_DEPTH` deep, undefined
lengths are allowed only where PS3.5 7.5 and A.4 allow them, and the file must end exactly where
its last element does; elements come in tag order, each at most once. A truncated file, a huge
declared length, a repeated element or a sequence bomb is refused
there, at the cost of one pass over the headers, with no value read into memory. It also
locates the pixel data, which `imaging.dicom` checks against the image attributes.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

from imaging.dicom import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    EXPLICIT_VR_BE,
    IMPLICIT_VR_LE,
    PIXEL_DATA,
    SYNTAX_NOT_SUPPORTED,
    Rejected,
    valid_uid,
)

#: Deepest sequence nesting accepted. Real objects (SR trees, RT plans) stay well below 16.
MAX_DEPTH = 24
#: Most data elements accepted in one file, counted through every sequence item.
MAX_ELEMENTS = 500_000
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_VR_RE = re.compile(rb"[A-Z]{2}")
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"})
#: What a file is scanned in: its bytes, or the file mapped into memory (`mapped`).
Buffer = bytes | mmap.mmap


@dataclass
class Structure:
    """What the scan found: the transfer syntax, and where the pixel data is."""

    transfer_syntax: str
    dataset_offset: int
    pixel_offset: int | None = None
    #: Length of native pixel data; None when encapsulated or absent.
    pixel_length: int | None = None
    pixel_vr: str = "OW"
    #: Number of fragments of encapsulated pixel data, the Basic Offset Table not counted.
    fragments: int | None = None
    #: (offset of the value, length) of each item of encapsulated pixel data, the Basic Offset
    #: Table first: where each fragment's bytes are, so a frame is read without the rest.
    items: list[tuple[int, int]] = field(default_factory=list)
    elements: int = 0


class _Scanner:
    def __init__(self, buf: Buffer, little: bool, explicit: bool) -> None:
        self.buf = buf
        self.little = little
        self.explicit = explicit
        self.elements = 0
        self.u16 = struct.Struct("<H" if little else ">H").unpack_from
        self.u32 = struct.Struct("<I" if little else ">I").unpack_from
        self.tag = struct.Struct("<HH" if little else ">HH").unpack_from

    def _tag(self, pos: int, end: int) -> int:
        if pos + 8 > end:
            raise Rejected(CANNOT_UNDERSTAND, f"the file is truncated at byte {pos}")
        group, elem = self.tag(self.buf, pos)
        return int((group << 16) | elem)

    def dataset(self, pos: int, end: int, depth: int, in_item: bool, found: Structure) -> int:
        """Scan elements from `pos`; in an undefined-length item, up to its delimiter."""
        previous = -1
        while pos < end:
            tag = self._tag(pos, end)
            if tag == _ITEM_END:
                if not in_item:
                    raise Rejected(CANNOT_UNDERSTAND, f"an item delimiter outside an item at {pos}")
                return pos + 8
            if tag >> 16 == 0xFFFE:
                raise Rejected(CANNOT_UNDERSTAND, f"an unexpected item tag at byte {pos}")
            _ascending(previous, tag, pos)
            previous = tag
            self.elements += 1
            if self.elements > MAX_ELEMENTS:
                raise Rejected(CANNOT_UNDERSTAND, f"more than {MAX_ELEMENTS} data elements")
            vr: bytes | None = None
            if self.explicit:
                vr = bytes(self.buf[pos + 4 : pos + 6])
                if not _VR_RE.fullmatch(vr):
                    raise Rejected(CANNOT_UNDERSTAND, f"no valid VR at byte {pos}")
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise Rejected(CANNOT_UNDERSTAND, f"the file is truncated at byte {pos}")
                    length = self.u32(self.buf, pos + 8)[0]
                    pos += 12
                else:
                    length = self.u16(self.buf, pos + 6)[0]
                    pos += 8
            else:
                length = self.u32(self.buf, pos + 4)[0]
                pos += 8
            if tag == PIXEL_DATA and depth == 0:
                pos = self._pixels(pos, end, length, vr, found)
                continue
            if self._is_sequence(tag, vr, length):
                if depth + 1 > MAX_DEPTH:
                    raise Rejected(
                        CANNOT_UNDERSTAND, f"sequences nest deeper than {MAX_DEPTH} levels"
                    )
                # An undefined-length UN is a sequence in Implicit VR Little Endian (PS3.5 6.2.2).
                inner = self
                if vr == b"UN":
                    inner = _Scanner(self.buf, True, False)
                    inner.elements = self.elements
                if length == _UNDEFINED:
                    pos = inner.items(pos, end, depth + 1, True, found)
                else:
                    stop = self._fits(pos, length, end)
                    if inner.items(pos, stop, depth + 1, False, found) != stop:
                        raise Rejected(
                            CANNOT_UNDERSTAND, f"a sequence overruns its length at {pos}"
                        )
                    pos = stop
                self.elements = inner.elements
                continue
            if length == _UNDEFINED:
                raise Rejected(
                    CANNOT_UNDERSTAND, f"undefined length on a non-sequence element at {pos}"
                )
            pos = self._fits(pos, length, end)
        if in_item:
            raise Rejected(CANNOT_UNDERSTAND, "the file ends inside a sequence item")
        return pos

    def items(self, pos: int, end: int, depth: int, undefined: bool, found: Structure) -> int:
        while True:
            if pos >= end:
                if undefined:
                    raise Rejected(CANNOT_UNDERSTAND, "the file ends inside a sequence")
                return pos
            tag = self._tag(pos, end)
            length = self.u32(self.buf, pos + 4)[0]
            if tag == _SEQ_END:
                if not undefined:
                    raise Rejected(CANNOT_UNDERSTAND, f"a stray sequence delimiter at {pos}")
                return pos + 8
            if tag != _ITEM:
                raise Rejected(CANNOT_UNDERSTAND, f"a sequence holds a non-item at byte {pos}")
            pos += 8
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, True, found)
            else:
                stop = self._fits(pos, length, end)
                if self.dataset(pos, stop, depth, False, found) != stop:
                    raise Rejected(CANNOT_UNDERSTAND, f"an item overruns its length at {pos}")
                pos = stop

    def _pixels(self, pos: int, end: int, length: int, vr: bytes | None, found: Structure) -> int:
        found.pixel_offset = pos
        found.pixel_vr = vr.decode() if vr else "OW"
        if length != _UNDEFINED:
            found.pixel_length = length
            return self._fits(pos, length, end)
        # Encapsulated (PS3.5 A.4): items (the Basic Offset Table, then fragments), then the
        # sequence delimiter; fragments are only located here, never read.
        items = 0
        while True:
            tag = self._tag(pos, end)
            size = self.u32(self.buf, pos + 4)[0]
            pos += 8
            if tag == _SEQ_END:
                break
            if tag != _ITEM or size == _UNDEFINED:
                raise Rejected(CANNOT_UNDERSTAND, "encapsulated pixel data holds a non-fragment")
            found.items.append((pos, size))
            pos = self._fits(pos, size, end)
            items += 1
        found.fragments = max(items - 1, 0)
        return pos

    def _is_sequence(self, tag: int, vr: bytes | None, length: int) -> bool:
        if vr is not None:
            return vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
        if length == _UNDEFINED:
            return True
        try:
            return bool(dictionary_VR(tag) == "SQ")
        except KeyError:
            return False

    def _fits(self, pos: int, length: int, end: int) -> int:
        if pos + length > end:
            raise Rejected(
                CANNOT_UNDERSTAND,
                f"an element at byte {pos} declares {length} bytes; only {end - pos} follow",
            )
        return pos + length


def _ascending(previous: int, tag: int, pos: int) -> None:
    """Elements of a data set come in increasing tag order, each at most once (PS3.5 7.1).
    A repeated element would be read as its first value by some parsers and its last by
    others: a SOP Instance UID indexed as one instance and served as another."""
    if tag <= previous:
        what = "repeated" if tag == previous else "out of order"
        raise Rejected(
            CANNOT_UNDERSTAND,
            f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {pos} is {what}",
        )


def scan(buf: Buffer) -> Structure:
    """Check the structure of a PS3.10 file in `buf` (bytes or mmap); see the module docstring."""
    size = len(buf)
    if size < 132 or bytes(buf[128:132]) != b"DICM":
        raise Rejected(CANNOT_UNDERSTAND, "not a DICOM PS3.10 file (no DICM prefix)")
    meta = _Scanner(buf, True, True)
    pos = 132
    transfer_syntax: str | None = None
    previous = -1
    while pos + 8 <= size and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
        tag = meta._tag(pos, size)
        _ascending(previous, tag, pos)
        previous = tag
        vr = bytes(buf[pos + 4 : pos + 6])
        if not _VR_RE.fullmatch(vr):
            raise Rejected(CANNOT_UNDERSTAND, "the file meta information is malformed")
        if vr in _LONG_VRS:
            if pos + 12 > size:
                raise Rejected(CANNOT_UNDERSTAND, f"the file is truncated at byte {pos}")
            length = struct.unpack_from("<I", buf, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", buf, pos + 6)[0]
            pos += 8
        end = meta._fits(pos, length, size)
        if tag == 0x00020010:
            transfer_syntax = bytes(buf[pos:end]).decode("ascii", "replace").strip("\x00 ")
        pos = end
    if not transfer_syntax:
        raise Rejected(CANNOT_UNDERSTAND, "the file meta information names no transfer syntax")
    if not valid_uid(transfer_syntax):
        raise Rejected(CANNOT_UNDERSTAND, f"malformed Transfer Syntax UID {transfer_syntax!r}")
    uid = UID(transfer_syntax)
    if transfer_syntax in _DEFLATED or not uid.is_transfer_syntax:
        raise Rejected(
            SYNTAX_NOT_SUPPORTED, f"transfer syntax {transfer_syntax} is not supported here"
        )
    found = Structure(transfer_syntax, pos)
    scanner = _Scanner(buf, transfer_syntax != EXPLICIT_VR_BE, transfer_syntax != IMPLICIT_VR_LE)
    end = scanner.dataset(pos, size, 0, False, found)
    if end != size:
        raise Rejected(CANNOT_UNDERSTAND, f"{size - end} unexplained bytes after the data set")
    if found.pixel_offset is not None:
        if uid.is_compressed and found.pixel_length is not None:
            raise Rejected(DOES_NOT_MATCH, "compressed transfer syntax but native pixel data")
        if not uid.is_compressed and found.fragments is not None:
            raise Rejected(DOES_NOT_MATCH, "native transfer syntax but encapsulated pixel data")
    found.elements = scanner.elements
    return found


@contextmanager
def mapped(path: Path) -> Iterator[Buffer]:
    """The file as a read-only buffer, paged in by the OS rather than read into memory."""
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view
