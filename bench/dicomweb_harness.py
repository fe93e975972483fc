#!/usr/bin/env python3
# ruff: noqa: E501
"""DICOMweb benchmark harness (server-agnostic).

A copy of the alliance's shared harness (../shared/bench/dicomweb_bench.py), kept as written
apart from formatting; `bench/imaging_orthanc.py` runs it against this service and Orthanc.

Synthesises a CT study in memory (pydicom + numpy, fixed seed), then measures
against a DICOMweb base URL:

  (a) STOW-RS of the whole study, batches of --batch instances per
      multipart/related; type="application/dicom" request, with 1 client and
      with --concurrency clients (a second, distinct copy of the study so that
      nothing is "already stored"): wall time, instances/s, MB/s;
  (b) QIDO-RS /studies?PatientID=... latency (median of 20);
  (c) WADO-RS series /metadata latency, cold (first call) and warm (median of 10);
  (d) WADO-RS single frame (Accept multipart/related;
      type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1),
      median of 20, frame 1 of 20 distinct instances, bytes verified;
  (d2) the same frames with Accept multipart/related; type=application/octet-stream;
      transfer-syntax=* (what OHIF 3 sends), bytes verified;
  (e) with --pid (one or several comma-separated PIDs, summed): server peak RSS
      during each STOW phase (VmHWM reset before it via /proc/PID/clear_refs, and
      VmRSS sampled every 10 ms), VmHWM since start, server CPU seconds per phase;
  (f) rendered image/png and image/jpeg of one instance (median of --repeat,
      first response decoded with Pillow if installed).

Plus a physical floor on this machine: writing the same instance bytes to
local files with fsync (1 writer and --concurrency writers).

Every run uses fresh Study/Series/SOP Instance UIDs and a fresh PatientID;
pixel data is deterministic (--seed).

Usage:
  python dicomweb_bench.py --base http://127.0.0.1:18042/dicom-web \
      [--token TOKEN] [--instances 300] [--out results.json] [--pid PID] \
      [--label NAME] [--compare anchor.json]

Units: MB = 1e6 bytes; latencies in milliseconds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import queue
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

ROWS = COLS = 512
PIXEL_SPACING_MM = 0.7
SLICE_SPACING_MM = 1.0
RESCALE_INTERCEPT = -1024.0
FRAME_TS = "1.2.840.10008.1.2.1"
ACCEPT_JSON = "application/dicom+json"
ACCEPT_FRAME_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"
ACCEPT_FRAME = f'multipart/related; type="application/octet-stream"; transfer-syntax={FRAME_TS}'
# Fallbacks are only tried if the server rejects the preferred header; which
# header was finally used is recorded in the JSON ("accept_used").
ACCEPT_JSON_FALLBACKS = ["application/json"]
ACCEPT_FRAME_FALLBACKS = [
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
]


class BenchError(Exception):
    pass


def fail_text(resp: httpx.Response, what: str) -> str:
    body = resp.content[:300]
    return (
        f"{what}: HTTP {resp.status_code} {resp.reason_phrase} "
        f"[{resp.request.method} {resp.request.url}] body[:300]={body!r}"
    )


def check(resp: httpx.Response, what: str) -> httpx.Response:
    if not (200 <= resp.status_code < 300):
        raise BenchError(fail_text(resp, what))
    return resp


# --------------------------------------------------------------------------
# Synthetic study
# --------------------------------------------------------------------------


def _grid():
    c = (np.arange(COLS, dtype=np.float32) - (COLS - 1) / 2) * PIXEL_SPACING_MM
    r = (np.arange(ROWS, dtype=np.float32) - (ROWS - 1) / 2) * PIXEL_SPACING_MM
    return np.meshgrid(c, r)  # X (columns, mm), Y (rows, mm)


def _soft_ellipse(X, Y, cx, cy, a, b, edge_mm=1.2):
    """Return (row_slice, col_slice, mask): mask ~1 inside the ellipse, ~0 outside,
    smooth edge of a few pixels; computed only on the ellipse's bounding box
    (+12 mm margin, beyond which the mask is < 1e-4)."""
    m = 12.0
    c0 = max(0, int((cx - a - m) / PIXEL_SPACING_MM + (COLS - 1) / 2))
    c1 = min(COLS, int((cx + a + m) / PIXEL_SPACING_MM + (COLS - 1) / 2) + 2)
    r0 = max(0, int((cy - b - m) / PIXEL_SPACING_MM + (ROWS - 1) / 2))
    r1 = min(ROWS, int((cy + b + m) / PIXEL_SPACING_MM + (ROWS - 1) / 2) + 2)
    rs, cs = slice(r0, r1), slice(c0, c1)
    x, y = X[rs, cs], Y[rs, cs]
    rr = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return rs, cs, 0.5 * (1.0 + np.tanh((1.0 - rr) * (min(a, b) / edge_mm)))


def phantom_slice(z_mm: float, X, Y, rng) -> np.ndarray:
    """A chest-like smooth phantom in HU plus Gaussian noise -> stored int16."""
    ph = 2 * np.pi * z_mm / 300.0
    hu = np.full(X.shape, -1000.0, dtype=np.float32)

    def put(ell, value):
        rs, cs, mask = ell
        sub = hu[rs, cs]
        hu[rs, cs] = sub + (value - sub) * mask

    ba, bb = 165 + 10 * np.sin(ph), 120 + 8 * np.sin(ph)
    put(_soft_ellipse(X, Y, 0, 0, ba, bb), -100)  # subcutaneous fat
    rs, cs, soft = _soft_ellipse(X, Y, 0, 0, ba - 12, bb - 12)
    shading = 15 * np.sin(X[rs, cs] / 40 + ph) * np.cos(Y[rs, cs] / 55)  # low-frequency texture
    put((rs, cs, soft), 40 + shading)  # soft tissue
    la, lb = 52 + 14 * np.sin(1.3 * ph), 72 + 10 * np.cos(ph)
    for cx in (-72.0, 72.0):
        put(_soft_ellipse(X, Y, cx, -5, la, lb), -860)  # lungs
    put(_soft_ellipse(X, Y, 18, -15, 42 + 6 * np.cos(ph), 38), 45)  # heart
    put(_soft_ellipse(X, Y, -8, 35, 11, 11), 160)  # aorta (contrast)
    put(_soft_ellipse(X, Y, 0, 88, 17, 15), 700)  # vertebral body
    put(_soft_ellipse(X, Y, 0, 88, 10, 8), 250)  # cancellous core
    hu += rng.standard_normal(X.shape, dtype=np.float32) * np.float32(15.0)  # noise, ~15 HU
    stored = np.rint(hu - np.float32(RESCALE_INTERCEPT))
    return np.clip(stored, -32768, 32767).astype("<i2")


def synth_pixels(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    X, Y = _grid()
    return [phantom_slice(i * SLICE_SPACING_MM, X, Y, rng).tobytes() for i in range(n)]


def encode_study(
    pixels: list[bytes],
    patient_id: str,
    series_desc: str,
    series_number: int,
    study_uid: str | None = None,
) -> dict:
    """Return {'study_uid', 'series_uid', 'sop_uids', 'blobs'} (Part-10 bytes)."""
    now = _dt.datetime.now()
    date, tm = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    for_uid = generate_uid()
    n = len(pixels)
    sop_uids, blobs = [], []
    for i, px in enumerate(pixels):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = tm
        ds.AccessionNumber = "ACC" + patient_id[-8:]
        ds.Modality = "CT"
        ds.Manufacturer = "BenchPhantom"
        ds.InstitutionName = "Bench Institute"
        ds.ReferringPhysicianName = "Referrer^Bench"
        ds.StudyDescription = "CT CHEST BENCH"
        ds.SeriesDescription = series_desc
        ds.ManufacturerModelName = "Synthetic"
        ds.PatientName = "Bench^Phantom"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.PatientAge = "055Y"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{SLICE_SPACING_MM:.2f}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = i + 1
        z = -i * SLICE_SPACING_MM
        x0 = -(COLS - 1) / 2 * PIXEL_SPACING_MM
        y0 = -(ROWS - 1) / 2 * PIXEL_SPACING_MM
        ds.ImagePositionPatient = [f"{x0:.3f}", f"{y0:.3f}", f"{z:.3f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.3f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ROWS
        ds.Columns = COLS
        ds.PixelSpacing = [f"{PIXEL_SPACING_MM}", f"{PIXEL_SPACING_MM}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = f"{RESCALE_INTERCEPT:.0f}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = px
        ds["PixelData"].VR = "OW"
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        sop_uids.append(sop)
        blobs.append(buf.getvalue())
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uids": sop_uids,
        "blobs": blobs,
        "n": n,
    }


def build_multipart(blobs: list[bytes]) -> tuple[bytes, str]:
    boundary = "dwbench-" + secrets.token_hex(16)
    bb = boundary.encode()
    chunks = []
    for b in blobs:
        if bb in b:
            raise BenchError("boundary collision (retry)")
        chunks += [b"--", bb, b"\r\nContent-Type: application/dicom\r\n\r\n", b, b"\r\n"]
    chunks += [b"--", bb, b"--\r\n"]
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), ctype


def parse_multipart(content: bytes, content_type: str) -> list[tuple[dict, bytes]]:
    params = {}
    for p in content_type.split(";")[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    if "boundary" not in params:
        raise BenchError(f"no boundary in Content-Type {content_type!r}")
    delim = b"--" + params["boundary"].encode()
    parts = []
    segs = content.split(delim)
    for seg in segs[1:]:
        if seg.startswith(b"--"):
            break
        seg = seg[2:] if seg.startswith(b"\r\n") else seg
        head, sep, body = seg.partition(b"\r\n\r\n")
        if not sep:
            raise BenchError("malformed multipart part (no header terminator)")
        if body.endswith(b"\r\n"):
            body = body[:-2]
        headers = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.decode().strip().lower()] = v.decode().strip()
        parts.append((headers, body))
    return parts


# --------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------


def stats_ms(xs: list[float]) -> dict:
    ms = [x * 1000 for x in xs]
    if not ms:
        return {}
    s = sorted(ms)
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "min_ms": s[0],
        "max_ms": s[-1],
        "p90_ms": s[min(len(s) - 1, round(0.9 * (len(s) - 1)))],
        "mean_ms": statistics.fmean(ms),
        "all_ms": [round(v, 3) for v in ms],
    }


class ProcWatch:
    """Server-process CPU / memory from /proc (only if --pid is given; several PIDs, comma-separated,
    are summed: e.g. a server and its worker processes)."""

    def __init__(self, pids):
        if isinstance(pids, int):
            pids = [pids]
        self.pids = list(pids or [])
        self.pid = self.pids[0] if self.pids else None
        self.tck = os.sysconf("SC_CLK_TCK")
        self.hwm_seen_MB = []  # every VmHWM read (sum over pids), to keep the peak since start across resets

    def cpu_s(self) -> float | None:
        if not self.pids:
            return None
        tot = 0.0
        try:
            for pid in self.pids:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                tot += (int(fields[11]) + int(fields[12])) / self.tck  # utime + stime
        except OSError:
            return None
        return tot

    @staticmethod
    def _one(pid) -> dict:
        out = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmHWM", "VmRSS", "Name"):
                        out[k] = v.strip()
        except OSError as e:
            return {"error": str(e)}
        for k in ("VmHWM", "VmRSS"):
            if k in out and out[k].endswith("kB"):
                out[k + "_MB"] = round(int(out[k].split()[0]) * 1024 / 1e6, 1)
        return out

    def mem(self) -> dict | None:
        if not self.pids:
            return None
        per = [self._one(p) for p in self.pids]
        if len(per) == 1:
            out = per[0]
        else:
            out = {"Name": "+".join(str(x.get("Name")) for x in per), "per_pid": per}
            for k in ("VmHWM_MB", "VmRSS_MB"):
                if all(k in x for x in per):
                    out[k] = round(sum(x[k] for x in per), 1)
        if "VmHWM_MB" in out:
            self.hwm_seen_MB.append(out["VmHWM_MB"])
        return out

    def rss_MB(self) -> float | None:
        tot = 0
        try:
            for pid in self.pids:
                with open(f"/proc/{pid}/statm") as f:
                    tot += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None
        return tot / 1e6

    def reset_hwm(self) -> bool:
        """Reset VmHWM to the current RSS (echo 5 > /proc/PID/clear_refs; needs the right to write it)."""
        if not self.pids:
            return False
        self.mem()  # record the peak so far before it is cleared
        ok = True
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                ok = False
        return ok

    def peak_since_start_MB(self) -> float | None:
        return max(self.hwm_seen_MB) if self.hwm_seen_MB else None


class RssSampler:
    """Samples the summed VmRSS of the watched PIDs every `period` s in a thread; .peak_MB when stopped."""

    def __init__(self, watch: ProcWatch, period: float = 0.01):
        self.watch, self.period = watch, period
        self.peak_MB = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            v = self.watch.rss_MB()
            if v is not None and (self.peak_MB is None or v > self.peak_MB):
                self.peak_MB = v
            self._stop.wait(self.period)

    def __enter__(self):
        if self.watch.pids:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._t.is_alive():
            self._t.join()


def new_client(args) -> httpx.Client:
    headers = {"Accept-Encoding": args.accept_encoding, "User-Agent": "dicomweb-bench/1"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    return httpx.Client(
        timeout=httpx.Timeout(args.timeout), headers=headers, follow_redirects=False
    )


def get_with_fallback(client, url, accepts, what, quirks, params=None):
    """GET with the first Accept; on 4xx try the fallbacks, recording what happened."""
    last = None
    for i, acc in enumerate(accepts):
        r = client.get(url, params=params, headers={"Accept": acc})
        if 200 <= r.status_code < 300:
            if i > 0:
                quirks.append(
                    f"{what}: preferred Accept {accepts[0]!r} rejected "
                    f"({last.status_code}); accepted {acc!r}"
                )
            return r, acc
        if not (400 <= r.status_code < 500):
            break
        last = r
        print(f"  ! {fail_text(r, what + ' (Accept ' + acc + ')')}", file=sys.stderr)
    check(r, what)
    return r, accepts[0]


def stow(args, base, study, concurrency, watch) -> dict:
    url = f"{base}/studies"
    batches = []
    for k in range(0, study["n"], args.batch):
        body, ctype = build_multipart(study["blobs"][k : k + args.batch])
        batches.append((body, ctype, min(args.batch, study["n"] - k)))
    total_bytes = sum(len(b) for b in study["blobs"])
    body_bytes = sum(len(b[0]) for b in batches)
    q: queue.Queue = queue.Queue()
    for i in range(len(batches)):
        q.put(i)
    lat, errors, lock = [], [], threading.Lock()
    stored = [0]
    barrier = threading.Barrier(concurrency + 1)

    def worker():
        with new_client(args) as c:
            barrier.wait()
            while not errors:
                try:
                    i = q.get_nowait()
                except queue.Empty:
                    return
                body, ctype, nexp = batches[i]
                t0 = time.perf_counter()
                try:
                    r = c.post(
                        url, content=body, headers={"Content-Type": ctype, "Accept": ACCEPT_JSON}
                    )
                    dt = time.perf_counter() - t0
                    check(r, f"STOW-RS batch {i}")
                    nok = nexp
                    if r.content.strip():
                        j = r.json()
                        failed = (j.get("00081198") or {}).get("Value") or []
                        refs = (j.get("00081199") or {}).get("Value") or []
                        if failed or len(refs) != nexp:
                            raise BenchError(
                                f"STOW-RS batch {i}: HTTP {r.status_code}, {len(refs)} referenced, "
                                f"{len(failed)} failed of {nexp}; body[:300]={r.content[:300]!r}"
                            )
                        nok = len(refs)
                    with lock:
                        lat.append(dt)
                        stored[0] += nok
                except Exception as e:
                    with lock:
                        errors.append(
                            str(e) if isinstance(e, BenchError) else f"STOW-RS batch {i}: {e!r}"
                        )
                    return

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    if args.sync:
        os.sync()
    rss_before = watch.rss_MB() if watch.pids else None
    hwm_reset = watch.reset_hwm()
    cpu0, pcpu0 = watch.cpu_s(), time.process_time()
    with RssSampler(watch) as sampler:
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    cpu1, pcpu1 = watch.cpu_s(), time.process_time()
    mem_after = watch.mem()
    res = {
        "concurrency": concurrency,
        "batch": args.batch,
        "requests": len(batches),
        "instances": study["n"],
        "stored_ok": stored[0],
        "wall_s": wall,
        "instances_per_s": stored[0] / wall if wall else None,
        "MB_per_s": total_bytes / 1e6 / wall if wall else None,
        "payload_MB": total_bytes / 1e6,
        "http_body_MB": body_bytes / 1e6,
        "request_latency": stats_ms(lat),
        "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        "client_cpu_s": pcpu1 - pcpu0,
    }
    if watch.pids:
        res["server_rss_before_MB"] = rss_before
        res["server_rss_peak_sampled_MB"] = sampler.peak_MB
        res["server_vmhwm_reset"] = hwm_reset
        res["server_vmhwm_after_MB"] = (mem_after or {}).get("VmHWM_MB")
        cands = [
            v for v in (sampler.peak_MB, res["server_vmhwm_after_MB"] if hwm_reset else None) if v
        ]
        res["server_peak_rss_MB"] = max(cands) if cands else None
    if args.sync:
        t1 = time.perf_counter()
        os.sync()
        res["sync_after_s"] = time.perf_counter() - t1
    if errors:
        raise BenchError(
            "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
        )
    return res


def disk_baseline(blobs: list[bytes], directory: str, writers: int) -> dict:
    d = tempfile.mkdtemp(prefix="dwbench-disk-", dir=directory)
    try:
        os.sync()
        q: queue.Queue = queue.Queue()
        for i in range(len(blobs)):
            q.put(i)

        def w():
            while True:
                try:
                    i = q.get_nowait()
                except queue.Empty:
                    return
                fd = os.open(
                    os.path.join(d, f"{i:06d}.dcm"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
                )
                try:
                    mv = memoryview(blobs[i])
                    while mv:
                        mv = mv[os.write(fd, mv) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)

        t0 = time.perf_counter()
        ts = [threading.Thread(target=w) for _ in range(writers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        wall = time.perf_counter() - t0
        nbytes = sum(len(b) for b in blobs)
        return {
            "writers": writers,
            "files": len(blobs),
            "wall_s": wall,
            "instances_per_s": len(blobs) / wall,
            "MB_per_s": nbytes / 1e6 / wall,
            "directory": directory,
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

SUMMARY_KEYS = [  # (key, label, higher_is_better)
    ("stow_1c_instances_per_s", "STOW 1 client   inst/s", True),
    ("stow_1c_MB_per_s", "STOW 1 client   MB/s", True),
    ("stow_1c_wall_s", "STOW 1 client   wall s", False),
    ("stow_Nc_instances_per_s", "STOW N clients  inst/s", True),
    ("stow_Nc_MB_per_s", "STOW N clients  MB/s", True),
    ("stow_Nc_wall_s", "STOW N clients  wall s", False),
    ("stow_1c_server_cpu_ms_per_instance", "STOW server CPU ms/inst (1c)", False),
    ("qido_median_ms", "QIDO studies?PatientID median ms", False),
    ("metadata_cold_ms", "series/metadata cold ms", False),
    ("metadata_cold_b_ms", "series/metadata cold ms (2nd series)", False),
    ("metadata_warm_median_ms", "series/metadata warm median ms", False),
    ("frame_median_ms", "frame (octet-stream) median ms", False),
    ("frame_any_median_ms", "frame (transfer-syntax=*) median ms", False),
    ("rendered_png_median_ms", "rendered PNG median ms", False),
    ("rendered_jpeg_median_ms", "rendered JPEG median ms", False),
    ("stow_1c_peak_rss_MB", "server peak RSS during STOW 1c MB", False),
    ("stow_Nc_peak_rss_MB", "server peak RSS during STOW Nc MB", False),
    ("server_peak_rss_MB", "server peak RSS (VmHWM) MB", False),
    ("disk_fsync_1w_MB_per_s", "disk floor fsync 1 writer MB/s", True),
    ("disk_fsync_Nw_MB_per_s", "disk floor fsync N writers MB/s", True),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else (f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}")
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--base", required=True, help="DICOMweb root, e.g. http://127.0.0.1:18042/dicom-web"
    )
    ap.add_argument("--token", help="sent as 'Authorization: Bearer TOKEN'")
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--batch", type=int, default=50, help="instances per STOW request")
    ap.add_argument("--concurrency", type=int, default=4, help="clients for the concurrent STOW")
    ap.add_argument("--out", default="results.json")
    ap.add_argument(
        "--pid",
        type=str,
        help="server PID (local), or several comma-separated (summed): "
        "peak RSS (VmHWM, reset per STOW phase via /proc/PID/clear_refs, and sampled every 10 ms) "
        "+ CPU per phase",
    )
    ap.add_argument(
        "--repeat", type=int, default=20, help="requests per latency figure (frames, rendered)"
    )
    ap.add_argument("--skip-rendered", action="store_true", help="do not measure /rendered")
    ap.add_argument(
        "--label", default="", help="free text stored in the JSON (e.g. server name/version)"
    )
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--timeout", type=float, default=600.0, help="HTTP timeout, seconds")
    ap.add_argument(
        "--accept-encoding",
        default="gzip, deflate",
        help="Accept-Encoding sent on every request ('identity' to disable)",
    )
    ap.add_argument(
        "--disk-dir",
        default=tempfile.gettempdir(),
        help="where the fsync'd disk baseline writes (temp files, deleted)",
    )
    ap.add_argument("--skip-disk", action="store_true")
    ap.add_argument(
        "--no-sync",
        dest="sync",
        action="store_false",
        help="do not call sync() around STOW phases (use if the server is remote)",
    )
    ap.add_argument("--compare", help="a previous results JSON to print ratios against")
    args = ap.parse_args(argv)
    base = args.base.rstrip("/")
    pids = [int(x) for x in str(args.pid).split(",") if x.strip()] if args.pid else []
    for pid in pids:
        if not os.path.exists(f"/proc/{pid}"):
            print(f"error: --pid {pid}: no such process", file=sys.stderr)
            return 2

    watch = ProcWatch(pids)
    run_id = uuid.uuid4().hex[:10].upper()
    patient_id = f"BENCH{run_id}"
    R: dict = {
        "meta": {
            "label": args.label,
            "base": base,
            "run_id": run_id,
            "patient_id": patient_id,
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "httpx": httpx.__version__,
            "pydicom": pydicom.__version__,
            "numpy": np.__version__,
            "instances": args.instances,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "accept_encoding": args.accept_encoding,
            "units": "MB=1e6 bytes",
        },
        "results": {},
        "summary": {},
        "quirks": [],
        "errors": [],
    }
    res, quirks = R["results"], R["quirks"]

    def save():
        with open(args.out, "w") as f:
            json.dump(R, f, indent=2)

    # -------- connectivity (fail fast, before the slow synthesis)
    try:
        with new_client(args) as c:
            check(
                c.get(
                    f"{base}/studies",
                    params={"PatientID": patient_id, "limit": "1"},
                    headers={"Accept": ACCEPT_JSON},
                ),
                "QIDO connectivity check",
            )
    except (BenchError, httpx.HTTPError) as e:
        msg = str(e) if isinstance(e, BenchError) else f"cannot reach {base}: {e!r}"
        print(f"ERROR: {msg}", file=sys.stderr)
        R["errors"].append(msg)
        save()
        return 1

    # -------- synthesis (not timed against the server)
    t0 = time.perf_counter()
    pixels = synth_pixels(args.instances, args.seed)
    A = encode_study(pixels, patient_id, "BENCH AXIAL 1C", 1)
    B = encode_study(pixels, patient_id, "BENCH AXIAL NC", 2)
    del pixels
    sizes = [len(b) for b in A["blobs"]]
    R["meta"]["synthesis_s"] = time.perf_counter() - t0
    R["meta"]["instance_bytes_mean"] = statistics.fmean(sizes)
    R["meta"]["study_A"] = A["study_uid"]
    R["meta"]["study_B"] = B["study_uid"]
    print(
        f"synthesised 2 x {args.instances} CT instances, {statistics.fmean(sizes) / 1e3:.1f} kB each "
        f"({R['meta']['synthesis_s']:.1f}s); patient {patient_id}"
    )
    if watch.pid:
        res["server_mem_before"] = watch.mem()

    exit_code = 0
    try:
        # -------- physical floor
        if not args.skip_disk:
            print("disk baseline (fsync per file) ...")
            res["disk_fsync_1w"] = disk_baseline(A["blobs"], args.disk_dir, 1)
            res["disk_fsync_Nw"] = disk_baseline(A["blobs"], args.disk_dir, args.concurrency)

        # -------- (a) STOW
        print(f"STOW-RS 1 client ({args.instances} instances, batches of {args.batch}) ...")
        res["stow_1c"] = stow(args, base, A, 1, watch)
        print(f"STOW-RS {args.concurrency} clients (second copy of the study) ...")
        res["stow_Nc"] = stow(args, base, B, args.concurrency, watch)
        save()

        with new_client(args) as c:
            # -------- (b) QIDO
            print("QIDO-RS ...")
            lat = []
            acc_q = ACCEPT_JSON
            for i in range(20):
                t0 = time.perf_counter()
                if i == 0:
                    r, acc_q = get_with_fallback(
                        c,
                        f"{base}/studies",
                        [ACCEPT_JSON, *ACCEPT_JSON_FALLBACKS],
                        "QIDO-RS",
                        quirks,
                        params={"PatientID": patient_id},
                    )
                else:
                    r = check(
                        c.get(
                            f"{base}/studies",
                            params={"PatientID": patient_id},
                            headers={"Accept": acc_q},
                        ),
                        "QIDO-RS",
                    )
                lat.append(time.perf_counter() - t0)
                found = {s.get("0020000D", {}).get("Value", [None])[0] for s in r.json()}
                if found != {A["study_uid"], B["study_uid"]}:
                    raise BenchError(
                        f"QIDO-RS returned {len(found)} studies, expected the 2 uploaded: {found}"
                    )
            res["qido"] = stats_ms(lat) | {"accept_used": acc_q, "studies_returned": 2}

            # -------- (c) series metadata
            print("WADO-RS series metadata ...")
            murl = f"{base}/studies/{A['study_uid']}/series/{A['series_uid']}/metadata"
            cpu0 = watch.cpu_s()
            t0 = time.perf_counter()
            r, acc_m = get_with_fallback(
                c, murl, [ACCEPT_JSON, *ACCEPT_JSON_FALLBACKS], "WADO-RS metadata", quirks
            )
            cold = time.perf_counter() - t0
            cpu1 = watch.cpu_s()
            items = r.json()
            if len(items) != A["n"]:
                raise BenchError(f"metadata returned {len(items)} instances, expected {A['n']}")
            warm = []
            for _ in range(10):
                t0 = time.perf_counter()
                r2 = check(c.get(murl, headers={"Accept": acc_m}), "WADO-RS metadata (warm)")
                warm.append(time.perf_counter() - t0)
                if len(r2.json()) != A["n"]:
                    raise BenchError("warm metadata: wrong instance count")
            murl_b = f"{base}/studies/{B['study_uid']}/series/{B['series_uid']}/metadata"
            t0 = time.perf_counter()
            rb = check(c.get(murl_b, headers={"Accept": acc_m}), "WADO-RS metadata (series B)")
            cold_b = time.perf_counter() - t0
            if len(rb.json()) != B["n"]:
                raise BenchError("series B metadata: wrong instance count")
            res["metadata"] = {
                "cold_ms": cold * 1000,
                "cold_b_ms": cold_b * 1000,
                "warm": stats_ms(warm),
                "accept_used": acc_m,
                "instances": len(items),
                "response_bytes_decoded": len(r.content),
                "response_bytes_wire": r.num_bytes_downloaded,
                "content_encoding": r.headers.get("content-encoding", "identity"),
                "content_type": r.headers.get("content-type"),
                "server_cpu_cold_s": (cpu1 - cpu0)
                if cpu0 is not None and cpu1 is not None
                else None,
                "has_pixel_bulkdata_uri": "7FE00010" in items[0]
                and "BulkDataURI" in items[0]["7FE00010"],
            }

            # -------- (d) single frame
            print("WADO-RS frames ...")
            idx = (
                [round(k * (A["n"] - 1) / 19) for k in range(20)]
                if A["n"] >= 20
                else list(range(A["n"]))
            )
            lat, acc_f = [], ACCEPT_FRAME
            for j, k in enumerate(idx):
                furl = (
                    f"{base}/studies/{A['study_uid']}/series/{A['series_uid']}"
                    f"/instances/{A['sop_uids'][k]}/frames/1"
                )
                t0 = time.perf_counter()
                if j == 0:
                    r, acc_f = get_with_fallback(
                        c, furl, [ACCEPT_FRAME, *ACCEPT_FRAME_FALLBACKS], "WADO-RS frame", quirks
                    )
                else:
                    r = check(c.get(furl, headers={"Accept": acc_f}), "WADO-RS frame")
                lat.append(time.perf_counter() - t0)
                ctype = r.headers.get("content-type", "")
                parts = parse_multipart(r.content, ctype)
                if len(parts) != 1:
                    raise BenchError(
                        f"frame: expected 1 part, got {len(parts)} (Content-Type {ctype!r})"
                    )
                blob = A["blobs"][k]
                expect = blob[-ROWS * COLS * 2 :]
                if parts[0][1] != expect:
                    raise BenchError(
                        f"frame {k}: {len(parts[0][1])} bytes returned, pixel bytes differ "
                        f"from what was stored (part headers {parts[0][0]})"
                    )
                if j == 0:
                    res["frame_first_response"] = {
                        "content_type": ctype,
                        "part_headers": parts[0][0],
                        "bytes_wire": r.num_bytes_downloaded,
                        "bytes_decoded": len(r.content),
                        "content_encoding": r.headers.get("content-encoding", "identity"),
                    }
            res["frame"] = stats_ms(lat) | {
                "accept_used": acc_f,
                "bytes_verified": True,
                "instances_sampled": len(idx),
            }

            # -------- (d2) single frame, transfer-syntax=* (what OHIF 3 sends), unquoted type
            try:
                print("WADO-RS frames (transfer-syntax=*) ...")
                lat = []
                acc_any = ACCEPT_FRAME_ANY
                for j, k in enumerate(idx):
                    furl = (
                        f"{base}/studies/{A['study_uid']}/series/{A['series_uid']}"
                        f"/instances/{A['sop_uids'][k]}/frames/1"
                    )
                    t0 = time.perf_counter()
                    r = check(
                        c.get(furl, headers={"Accept": acc_any}),
                        "WADO-RS frame (transfer-syntax=*)",
                    )
                    lat.append(time.perf_counter() - t0)
                    ctype = r.headers.get("content-type", "")
                    parts = parse_multipart(r.content, ctype)
                    if len(parts) != 1:
                        raise BenchError(
                            f"frame (ts=*): expected 1 part, got {len(parts)} (Content-Type {ctype!r})"
                        )
                    if parts[0][1] != A["blobs"][k][-ROWS * COLS * 2 :]:
                        raise BenchError(
                            f"frame (ts=*) {k}: {len(parts[0][1])} bytes returned, pixel bytes differ "
                            f"(part headers {parts[0][0]})"
                        )
                    if j == 0:
                        res["frame_any_first_response"] = {
                            "content_type": ctype,
                            "part_headers": parts[0][0],
                            "bytes_wire": r.num_bytes_downloaded,
                        }
                res["frame_any"] = stats_ms(lat) | {
                    "accept_used": acc_any,
                    "bytes_verified": True,
                    "instances_sampled": len(idx),
                }
            except BenchError as e:
                print(f"  ! {e}", file=sys.stderr)
                res["frame_any"] = {"error": str(e)}
                R["errors"].append(str(e))

            # -------- (f) rendered PNG / JPEG of one instance
            if not args.skip_rendered:
                k = A["n"] // 2
                rurl = (
                    f"{base}/studies/{A['study_uid']}/series/{A['series_uid']}"
                    f"/instances/{A['sop_uids'][k]}/rendered"
                )
                for kind, acc_r, magic in (
                    ("png", "image/png", b"\x89PNG\r\n\x1a\n"),
                    ("jpeg", "image/jpeg", b"\xff\xd8\xff"),
                ):
                    print(f"WADO-RS rendered {kind} ...")
                    lat, first = [], None
                    try:
                        for j in range(args.repeat):
                            t0 = time.perf_counter()
                            r = c.get(rurl, headers={"Accept": acc_r})
                            lat.append(time.perf_counter() - t0)
                            if not (200 <= r.status_code < 300):
                                raise BenchError(fail_text(r, f"WADO-RS rendered {kind}"))
                            if not r.content.startswith(magic):
                                raise BenchError(
                                    f"rendered {kind}: body is not {kind} "
                                    f"(Content-Type {r.headers.get('content-type')!r}, "
                                    f"first bytes {r.content[:16]!r})"
                                )
                            if j == 0:
                                first = {
                                    "content_type": r.headers.get("content-type"),
                                    "bytes": len(r.content),
                                }
                                try:
                                    from PIL import Image  # optional

                                    im = Image.open(io.BytesIO(r.content))
                                    first["size"] = list(im.size)
                                    first["mode"] = im.mode
                                    a = np.asarray(im.convert("L"), dtype=np.float32)
                                    first["pixel_mean"] = round(float(a.mean()), 2)
                                    first["pixel_std"] = round(float(a.std()), 2)
                                except Exception as e:
                                    first["decode"] = f"not decoded: {e!r}"
                        res[f"rendered_{kind}"] = stats_ms(lat) | {
                            "first": first,
                            "cold_ms": lat[0] * 1000,
                        }
                    except BenchError as e:
                        print(f"  ! {e}", file=sys.stderr)
                        res[f"rendered_{kind}"] = {"error": str(e)}
                        R["errors"].append(str(e))
    except BenchError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        R["errors"].append(str(e))
        exit_code = 1
    except httpx.HTTPError as e:
        print(f"\nERROR (transport): {e!r}", file=sys.stderr)
        R["errors"].append(f"transport: {e!r}")
        exit_code = 1
    finally:
        if watch.pid:
            res["server_mem_after"] = watch.mem()
        R["meta"]["finished"] = _dt.datetime.now().isoformat(timespec="seconds")

    # -------- summary
    S = R["summary"]
    g = lambda *ks: _dig(res, ks)  # noqa: E731
    S["stow_1c_instances_per_s"] = g("stow_1c", "instances_per_s")
    S["stow_1c_MB_per_s"] = g("stow_1c", "MB_per_s")
    S["stow_1c_wall_s"] = g("stow_1c", "wall_s")
    S["stow_Nc_instances_per_s"] = g("stow_Nc", "instances_per_s")
    S["stow_Nc_MB_per_s"] = g("stow_Nc", "MB_per_s")
    S["stow_Nc_wall_s"] = g("stow_Nc", "wall_s")
    cpu = g("stow_1c", "server_cpu_s")
    S["stow_1c_server_cpu_ms_per_instance"] = (
        cpu * 1000 / args.instances if cpu is not None else None
    )
    S["qido_median_ms"] = g("qido", "median_ms")
    S["metadata_cold_ms"] = g("metadata", "cold_ms")
    S["metadata_cold_b_ms"] = g("metadata", "cold_b_ms")
    S["metadata_warm_median_ms"] = g("metadata", "warm", "median_ms")
    S["frame_median_ms"] = g("frame", "median_ms")
    S["frame_any_median_ms"] = g("frame_any", "median_ms")
    S["rendered_png_median_ms"] = g("rendered_png", "median_ms")
    S["rendered_jpeg_median_ms"] = g("rendered_jpeg", "median_ms")
    S["stow_1c_peak_rss_MB"] = g("stow_1c", "server_peak_rss_MB")
    S["stow_Nc_peak_rss_MB"] = g("stow_Nc", "server_peak_rss_MB")
    S["server_peak_rss_MB"] = watch.peak_since_start_MB() if watch.pids else None
    S["disk_fsync_1w_MB_per_s"] = g("disk_fsync_1w", "MB_per_s")
    S["disk_fsync_Nw_MB_per_s"] = g("disk_fsync_Nw", "MB_per_s")
    save()

    anchor = None
    if args.compare:
        try:
            with open(args.compare) as f:
                anchor = json.load(f)
        except (OSError, ValueError) as e:
            print(f"warning: cannot read --compare {args.compare}: {e}", file=sys.stderr)
    if anchor:
        am = anchor.get("meta") or {}
        for k in ("instances", "batch", "concurrency", "accept_encoding"):
            if am.get(k) != R["meta"][k]:
                print(
                    f"warning: --compare file has {k}={am.get(k)!r}, this run {R['meta'][k]!r}: "
                    f"ratios are not like-for-like",
                    file=sys.stderr,
                )
    N = args.concurrency
    print()
    print(
        f"== DICOMweb bench {R['meta']['label'] or base}  ({args.instances} instances, "
        f"{R['meta']['instance_bytes_mean'] / 1e3:.0f} kB each, Accept-Encoding: {args.accept_encoding}, "
        f"run {run_id})"
    )
    hdr = f"{'metric':40s} {'value':>10s}"
    if anchor:
        hdr += f" {'anchor':>10s} {'better x':>9s}"
    print(hdr)
    for key, label, hib in SUMMARY_KEYS:
        label = label.replace("N clients", f"{N} clients").replace("N writers", f"{N} writers")
        v = S.get(key)
        line = f"{label:40s} {fmt(v):>10s}"
        if anchor:
            a = (anchor.get("summary") or {}).get(key)
            ratio = None
            if isinstance(v, (int, float)) and isinstance(a, (int, float)) and v and a:
                ratio = v / a if hib else a / v
            line += f" {fmt(a):>10s} {fmt(ratio):>9s}"
        print(line)
    if watch.pid and res.get("server_mem_after"):
        print("(VmHWM is the peak since the server process started)")
    for q_ in quirks:
        print(f"quirk: {q_}")
    for e in R["errors"]:
        print(f"FAILED: {e}")
    print(f"results written to {args.out}")
    return 1 if R["errors"] else exit_code


def _dig(d, ks):
    for k in ks:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


if __name__ == "__main__":
    sys.exit(main())
