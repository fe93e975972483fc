"""DICOM test data: the files that ship in pydicom and pydicom-data, given fresh UIDs and a demo
patient's identifiers so each test owns its studies, and studies synthesised here (a GBK-named
CT, a 16-bit CT series of any size)."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from server.demo import identity_number

#: Resident identity numbers of demo patients (server.demo), as PACS put them in PatientID.
AYGUL = identity_number("654025", "19780921", "024")  # demo-aygul at xy-people
MA_XIULAN = identity_number("654025", "19700130", "042")  # demo-ma-xiulan at xy-tcm
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def testfile(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"{name} is in neither pydicom nor pydicom-data")
    return Path(str(found))


def encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def relabel(
    name: str,
    *,
    patient_id: str = AYGUL,
    study_uid: str | None = None,
    patient_name: str | None = None,
    study_date: str | None = None,
) -> bytes:
    """A shipped test file as a new instance of a new (or the given) study of a patient;
    everything else, pixel data and transfer syntax included, kept as it was."""
    ds = pydicom.dcmread(str(testfile(name)))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    if "IssuerOfPatientID" in ds:
        del ds.IssuerOfPatientID
    if patient_name is not None:
        ds.PatientName = patient_name
    if study_date is not None:
        ds.StudyDate = study_date
    return encode(ds)


def ct_slice(
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    patient_id: str = AYGUL,
    patient_name: str = "Aygul^Nurlan",
    rows: int = 64,
    columns: int = 64,
    charset: str | None = None,
    study_date: str = "20261101",
    seed: int | None = None,
) -> Dataset:
    """One slice of a synthetic 16-bit CT, Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + study_uid[-8:]
    ds.Modality = "CT"
    ds.StudyDescription = "CT chest"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0, 0, number * 1.25]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    rng = np.random.default_rng(seed if seed is not None else number)
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    return ds


def ct_series(count: int, **kwargs: object) -> list[bytes]:
    study, series = generate_uid(), generate_uid()
    return [
        encode(ct_slice(study_uid=study, series_uid=series, number=i + 1, **kwargs))  # type: ignore[arg-type]
        for i in range(count)
    ]


def large_ct_file(path: Path, frames: int, *, rows: int = 512, columns: int = 512) -> Dataset:
    """A multi-frame 16-bit CT of `frames` frames (512 KiB each at 512x512) written to `path`
    without its pixel data ever in memory: the header by pydicom, then PixelData's element
    header and its value, in chunks. Returns the header."""
    ds = ct_slice(
        study_uid=generate_uid(), series_uid=generate_uid(), number=1, rows=rows, columns=columns
    )
    del ds.PixelData
    ds.NumberOfFrames = frames
    frame = rows * columns * 2
    with path.open("wb") as out:
        ds.save_as(out, enforce_file_format=True)
        # (7FE0,0010) OW in Explicit VR Little Endian: tag, VR, two reserved bytes, 4-byte length.
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frame * frames))
        chunk = np.arange(frame // 2, dtype=np.uint16).tobytes()
        for _ in range(frames):
            out.write(chunk)
    return ds


def multipart(parts: Iterable[bytes], boundary: str = "alliance-test-boundary") -> bytes:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def part_start(body: bytes, index: int, boundary: str = "alliance-test-boundary") -> int:
    """Where the bytes of part `index` (from 0) of a `multipart` body begin: a body cut there
    holds the parts before it whole."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    at = -1
    for _ in range(index + 1):
        at = body.index(head, at + 1)
    return at + len(head)


def stow_headers(boundary: str = "alliance-test-boundary") -> dict[str, str]:
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related response, byte-exact."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    delimiter = b"--" + boundary.encode()
    chunks = body.split(b"\r\n" + delimiter)
    first = chunks[0]
    assert first.startswith(delimiter), "the body must start with the boundary"
    chunks[0] = first[len(delimiter) :]
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts
