"""Reading DICOM safely (imaging.dicom): character sets as Chinese devices write them, the
structural scan against hostile files, and the metadata built at ingest. No database here."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from imaging import dicom
from imaging.dicom import Rejected
from imaging.structure import MAX_DEPTH, mapped, scan
from tests.imaging_data import ct_slice, encode
from tests.imaging_data import testfile as shipped_file


def parsed(data: bytes, tmp_path: Path) -> dicom.Parsed:
    path = tmp_path / f"{generate_uid()}.dcm"
    path.write_bytes(data)
    with mapped(path) as buf:
        structure = scan(buf)
    return dicom.parse(path, structure)


def named(name: str, charset: str, encoding: str, description: str = "") -> bytes:
    """A CT whose text is written in `encoding` bytes under Specific Character Set `charset`."""
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    ds.SpecificCharacterSet = charset
    data = encode(ds)
    # Replace the patient name value by raw bytes of the chosen encoding, as a device writes it.
    old = b"Aygul^Nurlan"
    at = data.find(old)
    assert at > 0
    new = name.encode(encoding)
    if len(new) % 2:
        new += b" "
    length_at = at - 2
    out = bytearray(data[:length_at])
    out += struct.pack("<H", len(new)) + new + data[at + len(old) :]
    return bytes(out)


@pytest.mark.parametrize(
    ("charset", "encoding", "name"),
    [
        ("GBK", "gbk", "Wang^Jianguo=王^建国"),
        ("GB18030", "gb18030", "Memet^Eli=买买提^艾力"),
        ("GB18030", "gb18030", "帕提古丽·艾合买提=پاتىگۈل"),  # 4-byte GB18030 sequences
        ("ISO_IR 192", "utf-8", "Aygul^Nurlan=阿依古丽·努尔兰=Айгүл"),
        ("GB2312", "gb2312", "Ma^Xiulan=马^秀兰"),  # not a defined term; means GBK's subset
        ("UTF-8", "utf-8", "Ерлан=叶尔兰·哈布都拉"),  # ditto, means ISO_IR 192
    ],
)
def test_names_are_decoded_by_their_character_set(
    charset: str, encoding: str, name: str, tmp_path: Path
) -> None:
    instance = parsed(named(name, charset, encoding), tmp_path)
    assert instance.patient_name == name
    groups = name.split("=")
    assert instance.name_groups[0] == groups[0]
    assert instance.name_groups[1] == (groups[1] if len(groups) > 1 else None)
    assert instance.metadata["00100010"]["Value"][0]["Alphabetic"] == groups[0]
    assert instance.metadata["00080005"]["Value"] == ["ISO_IR 192"]


def test_an_unknown_character_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Rejected) as refused:
        parsed(named("X^Y", "KLINGON", "ascii"), tmp_path)
    assert refused.value.status == dicom.DOES_NOT_MATCH


def test_metadata_keeps_small_values_and_links_bulk_data(tmp_path: Path) -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    item = Dataset()
    item.add_new(0x00091010, "OB", b"\x01" * 5000)  # large binary inside a sequence
    item.add_new(0x00091011, "OB", b"\x02" * 10)  # small binary inline
    ds.ReferencedImageSequence = [item]
    instance = parsed(encode(ds), tmp_path)
    meta = instance.metadata
    prefix = (
        f"{dicom.BASE_MARK}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulkdata"
    )
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{prefix}/7FE00010"}
    nested = meta["00081140"]["Value"][0]
    assert nested["00091010"]["BulkDataURI"] == f"{prefix}/00081140/0/00091010"
    assert nested["00091011"]["InlineBinary"]
    assert meta["00280010"]["Value"] == [64]
    assert list(meta) == sorted(meta)


def test_the_scan_finds_encapsulated_fragments(tmp_path: Path) -> None:
    data = shipped_file("emri_small_RLE.dcm").read_bytes()
    structure = scan(data)
    assert structure.fragments == 10 and structure.pixel_length is None
    assert structure.transfer_syntax == "1.2.840.10008.1.2.5"


def _implicit_nested(depth: int) -> bytes:
    """Defined-length sequences nested `depth` deep, Implicit VR Little Endian."""
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    inner = Dataset()
    inner.CodeValue = "x"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = [inner]
        inner = outer
    ds.ContentSequence = [inner]
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def test_nesting_limits_hold_in_every_encoding(tmp_path: Path) -> None:
    shallow = parsed(_implicit_nested(5), tmp_path)
    assert shallow.transfer_syntax == "1.2.840.10008.1.2"
    with pytest.raises(Rejected) as deep:
        scan(_implicit_nested(MAX_DEPTH + 5))
    assert "nest" in deep.value.reason


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-1],  # one byte short
        lambda d: d + b"\x00\x00",  # unexplained trailing bytes
        lambda d: d[:128] + b"DICX" + d[132:],  # no DICM prefix
        lambda d: d.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.9.9\x00\x00\x00", 1),
    ],
)
def test_malformed_files_are_refused_by_the_scan(mangle: object) -> None:
    data = encode(ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1))
    with pytest.raises(Rejected):
        scan(mangle(data))  # type: ignore[operator]


def test_uids_are_checked_as_ps35_defines_them() -> None:
    assert dicom.valid_uid("1.2.840.10008.5.1.4.1.1.2")
    assert dicom.valid_uid("0.1.0")
    for bad in ("1.02.3", "1..2", "1.2.", "a.b", "1." + "2" * 64, "", "1.2.3 "):
        assert not dicom.valid_uid(bad), bad


def test_shipped_files_are_read_like_pydicom_reads_them(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm"):
        data = shipped_file(name).read_bytes()
        instance = parsed(data, tmp_path)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert instance.sop_instance_uid == ds.SOPInstanceUID
        assert instance.transfer_syntax == ds.file_meta.TransferSyntaxUID
        assert instance.number_of_frames == int(ds.get("NumberOfFrames") or 1)


def _pydicom_json(data: bytes) -> dict[str, object]:
    """Every top-level element's DICOM JSON as pydicom's `to_json_dict` makes it (the rule
    `dicom.to_json` follows), less the meta group and the pixel data."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    made: dict[str, object] = {}
    for tag in ds.keys():  # noqa: SIM118 (tags, as to_json walks them)
        if tag.group == 0x0002:
            continue
        try:
            made[f"{int(tag):08X}"] = ds[tag].to_json_dict(None, dicom.BULK_THRESHOLD)
        except ValueError:
            continue  # what pydicom cannot convert, to_json leaves out
    return made


def encoded(ds: Dataset, *, implicit: bool) -> bytes:
    """The data set as a PS3.10 file, in explicit or implicit VR little endian."""
    if not implicit:
        return encode(ds)
    ds.file_meta.TransferSyntaxUID = dicom.IMPLICIT_VR_LE
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
def test_plain_values_are_made_json_as_pydicom_makes_them(tmp_path: Path, implicit: bool) -> None:
    """Plain values (text of the default repertoire, DS, IS, binary numbers) are made JSON
    straight from their bytes (dicom._plain_json); what comes out is what pydicom makes of
    them, padding, many values, signs and exponents included. Anything unusual is left to
    pydicom and comes out the same way too."""
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    ds.SpecificCharacterSet = "GB18030"  # ASCII text reads the same in it
    ds.ImageType = ["ORIGINAL ", "PRIMARY", "AXIAL "]  # CS, several values, two padded
    ds.PixelSpacing = ["0.5", "-1.25E+02"]  # DS: a sign and an exponent
    ds.SliceThickness = " 2"  # DS, a leading space
    ds.ImagePositionPatient = ["+1", ".5", "3."]
    ds.WindowCenter = "1_0"  # a DS only Python reads as a number: pydicom's to judge
    ds.InstanceNumber = "+0012"  # IS, a sign and leading zeros
    ds.ReferencedFrameNumber = ["1", "2", "3"]  # IS, several
    ds.add_new(0x00181030, "LO", "CT^Chest")  # LO of printable ASCII
    ds.StudyDescription = " CT chest \\ with contrast  "  # LO: values padded on both sides
    ds.StationName = ["CT1 ", "ROOM 2"]  # SH, several
    ds.add_new(0x00081040, "LO", "科室")  # LO beyond ASCII: pydicom's (its character set)
    ds.add_new(0x00080070, "LO", "")  # empty
    ds.add_new(0x00180050, "DS", "")  # empty DS
    ds.add_new(0x00280106, "US", 7)
    ds.add_new(0x00189306, "FD", 0.5)  # FD
    ds.add_new(0x00189307, "FD", [1.5, -2.0])  # FD, several
    ds.add_new(0x00540081, "US", [1, 2, 3])  # US, several
    ds.add_new(0x00200013 + 0x10000, "UN", b"x")  # binary: pydicom's
    ds.StudyID = "A\\\\B"  # SH with an empty value between two: pydicom's
    ds.AccessionNumber = "ÄB"  # non-ASCII bytes: pydicom's
    data = encoded(ds, implicit=implicit)
    instance = parsed(data, tmp_path)
    got = {k: v for k, v in instance.metadata.items() if k != "7FE00010"}
    expected = _pydicom_json(data)
    assert expected.pop("00080005") == {"vr": "CS", "Value": ["GB18030"]}
    assert got.pop("00080005") == {"vr": "CS", "Value": ["ISO_IR 192"]}  # JSON is UTF-8
    assert got == expected
    assert got["00200013"] == {"vr": "IS", "Value": [12]}
    assert got["00280030"] == {"vr": "DS", "Value": [0.5, -125.0]}
    assert got["00080008"]["Value"] == ["ORIGINAL ", "PRIMARY", "AXIAL"]  # as pydicom reads it
    assert got["00081030"]["Value"] == [" CT chest", " with contrast"]
    assert got["00081040"]["Value"] == ["科室"]


def test_shipped_files_make_the_json_pydicom_makes(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm"):
        data = shipped_file(name).read_bytes()
        got = {k: v for k, v in parsed(data, tmp_path).metadata.items() if k != "7FE00010"}
        expected = _pydicom_json(data)
        if "00080005" in got:
            expected["00080005"] = got["00080005"]  # written as UTF-8 (PS3.18 F.2)
        bulk = {k for k, v in got.items() if "BulkDataURI" in v}
        assert {k: v for k, v in got.items() if k not in bulk} == {
            k: v for k, v in expected.items() if k not in bulk
        }, name


@pytest.mark.parametrize("implicit", [False, True])
def test_fields_read_from_the_bytes_are_what_pydicom_reads(tmp_path: Path, implicit: bool) -> None:
    """The indexed fields (UIDs, dates, codes, numbers) are read straight from the bytes of
    elements pydicom has not converted (dicom._plain_values), so that their JSON takes the
    plain path too. What comes out is what reading every element through pydicom gives:
    padding, several values, signs and an empty value included."""
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    ds.Modality = " CT "  # padded on both sides
    ds.BodyPartExamined = " CHEST \\ABDOMEN "  # CS, two values, padded
    ds.SeriesNumber = ["+0007", "8"]  # IS: a sign and leading zeros; the first value is taken
    ds.InstanceNumber = ""  # empty
    ds.StudyDate = "2026.11.30"  # ACR-NEMA style
    ds.StudyTime = "101500.25 "
    ds.StudyDescription = " CT chest  "  # LO
    ds.AccessionNumber = "A1\\B2 "  # SH, two values
    data = encoded(ds, implicit=implicit)
    path = tmp_path / "slice.dcm"
    path.write_bytes(data)
    with mapped(path) as buf:
        structure = scan(buf)
    from_bytes = dicom.parse(path, structure)
    converted = pydicom.dcmread(str(path), stop_before_pixels=True)
    for _ in converted:  # iterating converts every element: nothing is left as read
        pass
    from_pydicom = dicom._derive(converted, structure, dicom.BASE_MARK)
    for name in ("frame_ranges", "metadata"):
        setattr(from_pydicom, name, getattr(from_bytes, name))
    assert from_bytes == from_pydicom
    assert (from_bytes.modality, from_bytes.body_part_examined) == ("CT", "CHEST \\ABDOMEN")
    assert (from_bytes.series_number, from_bytes.instance_number) == (7, None)
    assert (from_bytes.study_date, from_bytes.study_time) == ("20261130", "101500.25")
    assert (from_bytes.study_description, from_bytes.accession_number) == ("CT chest", "A1\\B2")
    assert (from_bytes.rows, from_bytes.columns, from_bytes.number_of_frames) == (64, 64, 1)


def test_a_number_json_cannot_hold_is_left_out(tmp_path: Path) -> None:
    """A DS of "nan" or "inf" (pydicom reads them as floats) is no JSON number: the element is
    left out of the metadata, which stays JSON any client can read (RFC 8259 section 6)."""
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    ds.WindowCenter = "nan"
    ds.WindowWidth = ["400", "inf"]
    instance = parsed(encode(ds), tmp_path)
    assert "00281050" not in instance.metadata
    assert "00281051" not in instance.metadata
    json.loads(instance.metadata_json(), parse_constant=pytest.fail)
