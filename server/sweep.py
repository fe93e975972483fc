"""The sweep: at start-up and `alliance storage sweep` (issue 11, section 3).

Removes, when older than `sweep_min_age_seconds` (uploads still running are younger):
blobs no index row references (an upload whose row never committed), what interrupted puts
left in the blob store, and the service's spool files in the temporary folder. Never touches a
blob that a row references (`imaging.service.BLOB_REFERENCES`) nor anything under a kept prefix
(audit checkpoints). Then brings stale ImagingStudy resources up to date.

A blob about to be referenced again by a new upload of the same bytes is safe: that put
refreshes the blob's age, and an imaging index re-checks the blob under its study's lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from alliance import clock
from alliance.audit.anchor import PREFIX as CHECKPOINTS
from alliance.db import Database
from alliance.storage import PROBE_KEY, BlobStore
from alliance.sweep import keys_in_use, sweep_spool
from imaging.service import BLOB_REFERENCES, Imaging

log = logging.getLogger("alliance.sweep")

#: Never swept, whatever their age: the audit trail's anchors, and the readiness probe.
KEPT_PREFIXES = (CHECKPOINTS, PROBE_KEY)
_BATCH = 500


@dataclass
class SweepReport:
    dry_run: bool
    blobs: list[str] = field(default_factory=list)
    partials: list[str] = field(default_factory=list)
    spool: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} orphan blob {k}" for k in self.blobs]
        out += [f"{verb} partial upload {k}" for k in self.partials]
        out += [f"{verb} spool file {k}" for k in self.spool]
        redo = "would re-derive" if self.dry_run else "re-derived"
        out += [f"{redo} ImagingStudy/{uid}" for uid in self.studies]
        out.append(
            f"{len(self.blobs)} orphan blobs, {len(self.partials)} partial uploads, "
            f"{len(self.spool)} spool files, {len(self.studies)} stale studies"
        )
        return out


def sweep(
    db: Database, blobs: BlobStore, imaging: Imaging, min_age_seconds: int, *, dry_run: bool
) -> SweepReport:
    report = SweepReport(dry_run)
    before = clock.now() - timedelta(seconds=min_age_seconds)
    batch: list[str] = []
    for info in blobs.list_blobs():
        if info.key.startswith(KEPT_PREFIXES) or info.modified >= before:
            continue
        batch.append(info.key)
        if len(batch) >= _BATCH:
            report.blobs += _orphans(db, blobs, batch, dry_run)
            batch = []
    if batch:
        report.blobs += _orphans(db, blobs, batch, dry_run)
    report.partials = blobs.remove_partials(before, dry_run=dry_run)
    report.spool = sweep_spool(before, dry_run=dry_run)
    report.studies = imaging.refresh_stale(dry_run=dry_run)
    return report


def _orphans(db: Database, blobs: BlobStore, keys: list[str], dry_run: bool) -> list[str]:
    with db.transaction() as session:
        unused = sorted(set(keys) - keys_in_use(session, keys, BLOB_REFERENCES))
        if not dry_run:
            for key in unused:
                blobs.delete(key)
    return unused
