"""Pixel data for WADO-RS: frames (PS3.18 10.4.1.1.4, 8.7.3), rendered images and thumbnails
(PS3.18 10.4.1.1.5-6, 8.3.5), bulk data (10.4.1.1.3) and transcoding to Explicit VR Little
Endian. Decoding uses pydicom's pixel backends (numpy, and pylibjpeg with its libjpeg,
openjpeg and RLE plugins for compressed transfer syntaxes); images are encoded with Pillow.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from alliance.errors import BadRequest, NotAcceptable, NotFound
from alliance.numbers import whole_number
from imaging.dicom import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE

UNCOMPRESSED = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE})

#: Media type of each compressed transfer syntax (PS3.18 Table 8.7.3-5 and 8.7.4-1).
TS_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
RENDERED_TYPES = ("image/jpeg", "image/png")


def media_type_of(transfer_syntax: str) -> str:
    """The media type of a frame stored in `transfer_syntax` (octet-stream when native)."""
    return TS_MEDIA_TYPES.get(transfer_syntax, "application/octet-stream")


def read(path: Path) -> Dataset:
    return pydicom.dcmread(str(path))


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def check_frames(ds: Dataset, frames: list[int]) -> None:
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    count = number_of_frames(ds)
    bad = [f for f in frames if f < 1 or f > count]
    if bad:
        raise NotFound(f"frame {bad[0]} does not exist; the instance has {count} frame(s)")


def stored_frame(ds: Dataset, path: Path, number: int) -> bytes:
    """Frame `number` (1-based) as stored: the compressed bitstream, or native pixels (LE)."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    count = number_of_frames(ds)
    if UID(ts).is_compressed:
        return bytes(get_frame(ds.PixelData, number - 1, number_of_frames=count))
    bits = int(ds.BitsAllocated)
    if ts in UNCOMPRESSED and bits >= 8 and _packed_samples(ds) == 0:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        data = ds.PixelData
        return bytes(data[(number - 1) * size : number * size])
    return decoded_frame(path, number)


def _packed_samples(ds: Dataset) -> int:
    """Non-zero for native layouts that are not one sample per pixel per channel (YBR 4:2:2)."""
    photometric = str(ds.get("PhotometricInterpretation", ""))
    return 1 if photometric in ("YBR_FULL_422", "YBR_PARTIAL_422") else 0


def decoded_frame(path: Path, number: int) -> bytes:
    """Frame `number` decoded to native little-endian pixels (for Explicit VR Little Endian);
    406 when no decoder for its transfer syntax is installed."""
    arr = _decode(path, number - 1)
    return bytes(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes())


def _decode(path: Path, index: int) -> np.ndarray:
    try:
        return pixel_array(str(path), index=index)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        raise NotAcceptable(f"the frame cannot be decompressed here: {exc}") from None


def explicit_little_endian(path: Path) -> bytes:
    """The instance re-encoded in Explicit VR Little Endian (PS3.18 8.7.3.5.2's default),
    decompressed when stored compressed; 406 when that is not possible."""
    ds = pydicom.dcmread(str(path))
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts == EXPLICIT_VR_BE:
        raise NotAcceptable("big-endian instances are served only as stored (transfer-syntax=*)")
    try:
        if UID(ts).is_compressed:
            ds.decompress(generate_instance_uid=False)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        raise NotAcceptable(f"the instance cannot be decompressed here: {exc}") from None
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


# ---- rendered (PS3.18 8.3.5.1) ---------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None
    #: (vw, vh, sx, sy, sw, sh); the source rectangle is optional.
    viewport: tuple[int, int, int | None, int | None, int | None, int | None] | None = None
    quality: int = 90


_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
#: The largest rendered image, per side: a viewport is a display's, and beyond this a request
#: costs seconds and hundreds of megabytes (PS3.18 8.3.5.1.3 lets the origin server refuse).
MAX_RENDERED = 4096


def render_options(
    params: dict[str, str], media_type: str, thumbnail: bool = False
) -> RenderOptions:
    """Parse `window`, `viewport` and `quality` (PS3.18 8.3.5.1.2-4); 400 when malformed."""
    window = None
    if params.get("window"):
        parts = [p.strip() for p in params["window"].split(",")]
        if len(parts) not in (2, 3):
            raise BadRequest("window is center,width[,function]")
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise BadRequest("window center and width must be numbers") from None
        function = parts[2].lower() if len(parts) == 3 else "linear"
        if function not in _FUNCTIONS or width <= 0 or (function == "linear" and width < 1):
            raise BadRequest("window function is linear, linear-exact or sigmoid, width > 0")
        window = (center, width, function)
    viewport = None
    raw = params.get("viewport") or ("128,128" if thumbnail else "")
    if raw:
        parts = [p.strip() for p in raw.split(",")]
        if len(parts) not in (2, 6) or not all(re.fullmatch(r"-?\d+", p) for p in parts if p):
            raise BadRequest("viewport is vw,vh[,sx,sy,sw,sh] in whole pixels")
        nums = [int(p) if p else None for p in parts]
        if not nums[0] or not nums[1] or nums[0] <= 0 or nums[1] <= 0:
            raise BadRequest("viewport width and height must be positive")
        if nums[0] > MAX_RENDERED or nums[1] > MAX_RENDERED:
            raise BadRequest(f"viewport is at most {MAX_RENDERED}x{MAX_RENDERED}")
        rest = nums[2:] if len(nums) == 6 else [None, None, None, None]
        viewport = (nums[0], nums[1], rest[0], rest[1], rest[2], rest[3])
    quality = 90
    if params.get("quality"):
        number = whole_number(params["quality"], 100)
        if not number:  # None (not a number up to 100) or 0
            raise BadRequest("quality is an integer from 1 to 100")
        quality = number
    return RenderOptions(media_type, window, viewport, quality)


@dataclass(frozen=True)
class Decoded:
    """A frame decoded for display, before the choices of a request (window, viewport,
    format): color as 8-bit RGB, or grayscale after the modality LUT (PS3.3 C.11.1) with the
    instance's own window and whether it is MONOCHROME1."""

    rgb: np.ndarray | None
    values: np.ndarray | None
    own_window: tuple[float, float, str] | None
    inverted: bool

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.rgb, self.values) if a is not None))


def decode_for_display(path: Path, number: int) -> Decoded:
    """Frame `number` of the file at `path`, decoded once for any number of renderings."""
    header = pydicom.dcmread(str(path), stop_before_pixels=True)
    arr = _decode(path, number - 1)
    samples = int(header.get("SamplesPerPixel", 1))
    photometric = str(header.get("PhotometricInterpretation", ""))
    if samples == 1 and photometric == "PALETTE COLOR":
        full = pydicom.dcmread(str(path))
        return Decoded(_to_uint8_color(apply_color_lut(arr, full)), None, None, False)
    if samples == 1:
        values = np.asarray(apply_modality_lut(arr, header), dtype=np.float64)
        return Decoded(None, values, _own_window(header), photometric == "MONOCHROME1")
    return Decoded(_to_uint8_color(arr), None, None, False)


def render(path: Path, number: int, options: RenderOptions) -> bytes:
    """Frame `number` as a JPEG or PNG for display (see `render_decoded`)."""
    return render_decoded(decode_for_display(path, number), options)


def render_decoded(decoded: Decoded, options: RenderOptions) -> bytes:
    """A decoded frame as a JPEG or PNG for display: the VOI window asked for (or the
    instance's own, or its full range) over the modality LUT's values, MONOCHROME1 inverted,
    then the viewport (PS3.18 8.3.5.1)."""
    if decoded.values is not None:
        gray = _window(decoded.values, options.window or decoded.own_window)
        if decoded.inverted:
            gray = 255 - gray
        image = Image.fromarray(gray, "L")
    else:
        assert decoded.rgb is not None
        image = Image.fromarray(decoded.rgb, "RGB")
    image = _viewport(image, options.viewport)
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=options.quality)
    return out.getvalue()


def _own_window(ds: Dataset) -> tuple[float, float, str] | None:
    try:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is None or width is None:
            return None
        c = float(center[0] if isinstance(center, list | pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, list | pydicom.multival.MultiValue) else width)
        function = str(ds.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-")
        if w <= 0:
            return None
        return (c, w, function if function in _FUNCTIONS else "linear")
    except (TypeError, ValueError, IndexError):
        return None


def _window(values: np.ndarray, window: tuple[float, float, str] | None) -> np.ndarray:
    """VOI windowing to 0..255 (PS3.3 C.11.2.1.2-3)."""
    if window is None:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    else:
        c, w, function = window
        if function == "linear":
            scaled = (values - (c - 0.5)) / (w - 1) + 0.5
        elif function == "linear-exact":
            scaled = (values - c) / w + 0.5
        else:  # sigmoid
            scaled = 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    return np.asarray(np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5, dtype=np.uint8)


def _to_uint8_color(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    top = float(arr.max()) or 1.0
    return np.asarray(np.clip(arr / top * 255.0, 0, 255), dtype=np.uint8)


def _viewport(image: Image.Image, viewport: Any) -> Image.Image:
    if viewport is None:
        return image
    vw, vh, sx, sy, sw, sh = viewport
    if sw is not None and sh is not None:
        left, top = sx or 0, sy or 0
        right, bottom = left + abs(sw), top + abs(sh)
        # Only the part of the region inside the image holds pixels: cropping a region far
        # larger than the image would allocate it all (a 20000x20000 region of a 64x64 image).
        box = (
            min(max(left, 0), image.width),
            min(max(top, 0), image.height),
            min(max(right, 0), image.width),
            min(max(bottom, 0), image.height),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            raise BadRequest("the viewport's source region lies outside the image")
        image = image.crop(box)
        if sw < 0:
            image = ImageOps.mirror(image)
        if sh < 0:
            image = ImageOps.flip(image)
    image = image.copy()
    if image.width > vw or image.height > vh:
        image.thumbnail((vw, vh), Image.Resampling.LANCZOS)
    elif image.width < vw and image.height < vh:
        ratio = min(vw / image.width, vh / image.height)
        size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


# ---- bulk data (PS3.18 10.4.1.1.3) -----------------------------------------------------------


def bulk_value(path: Path, element_path: str) -> tuple[bytes, str]:
    """The value of the element at `tag[/item/tag...]` and its VR."""
    parts = element_path.strip("/").split("/")
    if len(parts) % 2 != 1 or not all(re.fullmatch(r"[0-9A-Fa-f]{8}", p) for p in parts[::2]):
        raise NotFound(f"no bulk data at {element_path}")
    ds: Any = pydicom.dcmread(str(path))
    for i, part in enumerate(parts):
        if i % 2:
            index = whole_number(part)
            if index is None:
                raise NotFound(f"no bulk data at {element_path}")
            try:
                ds = ds[index]
            except IndexError:
                raise NotFound(f"no bulk data at {element_path}") from None
            continue
        tag = int(part, 16)
        if tag not in ds:
            raise NotFound(f"no bulk data at {element_path}")
        elem = ds[tag]
        if i == len(parts) - 1:
            value = elem.value
            if not isinstance(value, bytes | bytearray):
                raise NotFound(f"the element at {element_path} holds no binary value")
            return bytes(value), str(elem.VR)
        ds = elem.value
    raise NotFound(f"no bulk data at {element_path}")
