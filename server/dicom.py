"""Wiring of the imaging domain: its service over the app's database, blob store and FHIR
store, and the C-STORE receiver that `alliance serve` and `alliance dicom-scp` start."""

from __future__ import annotations

import io
import logging
import tempfile
import uuid
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from alliance.audit.anchor import Anchor
from alliance.audit.service import AuditActor, AuditInput, append
from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.store import FhirStore
from alliance.storage import BlobStore, open_blob_store
from fhir_mappings import build_registry
from fhir_mappings.imaging import endpoint, imaging_study
from imaging.scp import StorageSCP
from imaging.service import Imaging
from server.demo import identity_number

log = logging.getLogger("alliance.dicom")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def build_imaging(settings: Settings, db: Database, blobs: BlobStore, fhir: FhirStore) -> Imaging:
    return Imaging(
        db=db,
        blobs=blobs,
        fhir=fhir,
        settings=settings,
        derive_study=imaging_study,
        derive_endpoint=endpoint,
    )


def build_scp(settings: Settings) -> StorageSCP:
    """A C-STORE receiver with its own database engine and blob store client."""
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    blobs = open_blob_store(settings.storage_url)
    Anchor(settings, db, blobs).attach()  # its audit records count towards checkpoints too
    fhir = FhirStore(
        build_registry(settings), base_url=settings.fhir_base, server_url=settings.base_url
    )
    calling = settings.calling_ae_hospitals
    if not calling:
        log.warning("ALLIANCE_DICOM_CALLING_AES is empty: every association will be refused")
    return StorageSCP(
        build_imaging(settings, db, blobs, fhir),
        ae_title=settings.dicom_ae_title,
        calling_aes=calling,
        max_instance_bytes=settings.max_stow_bytes,
    )


# ---- demo imaging (`alliance seed-demo`) --------------------------------------------------------

#: Demo studies: (key, patient id, hospital, PatientID as the PACS writes it, name, modality,
#: description, slices, date).
DEMO_STUDIES = [
    (
        "aygul-ct-chest",
        "demo-aygul",
        "xy-people",
        ("654025", "19780921", "024"),
        "Nurlan^Aygul=阿依古丽·努尔兰",
        "CT",
        "胸部CT平扫 Chest CT",
        24,
        "20261102",
    ),
    (
        "memet-ct-head",
        "demo-memet",
        "xy-people",
        ("654125", "19591105", "031"),
        "Eli^Memet=买买提·艾力",
        "CT",
        "头颅CT平扫 Head CT",
        16,
        "20261105",
    ),
]
_DEMO_NAMESPACE = uuid.UUID("9b0f5f0e-5a55-4c1e-9d0c-7a1f4e2b6c3d")


def _demo_uid(*parts: object) -> str:
    """A deterministic UID under 2.25 (PS3.5 B.2), so seeding twice sends the same bytes."""
    return f"2.25.{uuid.uuid5(_DEMO_NAMESPACE, '/'.join(map(str, parts))).int}"


def _phantom(kind: str, number: int, count: int, size: int = 256) -> np.ndarray:
    """A CT-like slice in Hounsfield units: a body, lungs or a skull, bone, some contrast."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    hu = np.full((size, size), -1000.0, dtype=np.float32)  # air
    z = number / count - 0.5
    if kind == "head":
        r = 0.42 * np.sqrt(max(0.05, 1 - (2 * z) ** 2))
        skull = (x / r) ** 2 + (y / (r * 1.15)) ** 2
        hu[skull <= 1] = 800
        hu[skull <= 0.85] = 35  # brain
        hu[((x + 0.08) ** 2 + (y - 0.05) ** 2) < 0.0015] = 5  # a ventricle
        hu[((x - 0.08) ** 2 + (y - 0.05) ** 2) < 0.0015] = 5
    else:
        body = (x / 0.45) ** 2 + (y / 0.32) ** 2
        hu[body <= 1] = 40
        for side in (-0.18, 0.18):
            lung = ((x - side) / 0.14) ** 2 + ((y + 0.02) / (0.2 - 0.1 * abs(z))) ** 2
            hu[lung <= 1] = -820
        hu[((x) ** 2 + (y - 0.22) ** 2) < 0.003] = 700  # spine
        hu[((x + 0.03) ** 2 + (y + 0.08) ** 2) < 0.004] = 180  # aorta with contrast
    noise = np.random.default_rng(number).normal(0, 8, (size, size)).astype(np.float32)
    return hu + noise


def demo_instances() -> list[bytes]:
    out: list[bytes] = []
    for key, _pid, _hid, number, name, modality, description, count, date in DEMO_STUDIES:
        study, series = _demo_uid(key, "study"), _demo_uid(key, "series")
        kind = "head" if "head" in key else "chest"
        for n in range(1, count + 1):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
            meta.MediaStorageSOPInstanceUID = UID(_demo_uid(key, "instance", n))
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientName, ds.PatientID = name, identity_number(*number)
            ds.StudyDate = ds.SeriesDate = date
            ds.StudyTime = ds.SeriesTime = "093000"
            ds.AccessionNumber = "DEMO-" + key.split("-")[0][:10].upper()
            ds.Modality, ds.StudyDescription = modality, description
            ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "Axial 5 mm", 1, n
            ds.ImagePositionPatient = [-125.0, -125.0, n * 5.0]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing, ds.SliceThickness = [0.98, 0.98], 5.0
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows = ds.Columns = 256
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.WindowCenter, ds.WindowWidth = (40, 80) if kind == "head" else (-600, 1500)
            hu = _phantom(kind, n, count)
            ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out.append(buffer.getvalue())
    return out


def seed_demo_imaging(settings: Settings) -> int:
    """Store the demo studies through the ingest every face uses; returns instances added.
    Idempotent: the same bytes again are a no-op."""
    db = Database(settings.database_url)
    blobs = open_blob_store(settings.storage_url)
    fhir = FhirStore(
        build_registry(settings), base_url=settings.fhir_base, server_url=settings.base_url
    )
    imaging = build_imaging(settings, db, blobs, fhir)
    added = 0
    try:
        by_hospital: dict[str, list[bytes]] = {}
        instances = demo_instances()
        offset = 0
        for _key, _pid, hospital, *_rest, count, _date in DEMO_STUDIES:
            by_hospital.setdefault(hospital, []).extend(instances[offset : offset + count])
            offset += count
        with tempfile.TemporaryDirectory(prefix="demo-imaging-") as tmp:
            for hospital, datas in by_hospital.items():
                staged = []
                for i, data in enumerate(datas):
                    path = Path(tmp) / f"{hospital}-{i}.dcm"
                    path.write_bytes(data)
                    staged.append(imaging.stage(path))
                with db.transaction(write=True) as session:
                    outcomes = imaging.index(session, staged, hospital_id=hospital)
                    failed = [o for o in outcomes if not o.ok]
                    if failed:
                        raise RuntimeError(f"demo imaging refused: {failed[0].reason}")
                    imaging.finish(session, {o.study_uid for o in outcomes if o.study_uid})
                    added += sum(1 for o in outcomes if o.new)
                    append(
                        session,
                        [
                            AuditInput(
                                type="transfer",
                                subtype="store",
                                action="C",
                                outcome="0",
                                actor=AuditActor(
                                    "seed-demo", hospital, "operator", None, "operator"
                                ),
                                entity=f"ImagingStudy/{uid}",
                                patient_id=patient,
                                description="demo imaging",
                            )
                            for uid, patient in sorted(
                                {(o.study_uid, o.patient_id) for o in outcomes}
                            )
                        ],
                    )
    finally:
        db.dispose()
    return added
