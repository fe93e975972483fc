"""`alliance backup` and `alliance restore` for the embedded default: an SQLite database and a
file blob store. (PostgreSQL and S3 have their own tools: README "Backup and restore".)

A backup is a folder: `alliance.db` (SQLite's online backup API, a consistent copy taken while
the server runs), `blobs/` (the blob store's files) and `manifest.json`. The database is copied
first and the blobs after, so every blob a copied row points to is there (a blob is written
before its row commits, ARCHITECTURE.md "Storage"); blobs newer than the copy are orphans, which
are harmless. Audit checkpoints newer than the copied trail are left out: they would name
records the copy does not have, and `alliance audit verify` would rightly call them missing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import make_url

from alliance import clock
from alliance.audit.anchor import PREFIX, checkpoint_key
from alliance.config import Settings
from alliance.errors import Conflict, Invalid
from alliance.storage import FileBlobStore

DATABASE = "alliance.db"
BLOBS = "blobs"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    taken: str
    audit_records: int
    blobs: int
    checkpoints_left_out: int


def _embedded(settings: Settings) -> tuple[Path, Path]:
    """The SQLite file and the blob folder of `settings`; anything else is refused."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise Invalid(
            "alliance backup/restore are for the embedded SQLite database; for PostgreSQL use "
            "pg_dump and pg_restore (README: Backup and restore)"
        )
    storage = urlsplit(settings.storage_url)
    if storage.scheme != "file":
        raise Invalid(
            "alliance backup/restore are for the file blob store; for S3 copy the bucket "
            "(README: Backup and restore)"
        )
    return Path(url.database).resolve(), Path(unquote(storage.path)).resolve()


def backup(settings: Settings, target: Path) -> Manifest:
    database, blob_root = _embedded(settings)
    if not database.exists():
        raise Invalid(f"there is no database at {database}")
    if target.exists() and any(target.iterdir()):
        raise Conflict(f"{target} is not empty: a backup goes into a new folder")
    target.mkdir(parents=True, exist_ok=True)
    copy = target / DATABASE
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    sink = sqlite3.connect(copy)
    try:
        source.backup(sink)
        head = sink.execute("SELECT coalesce(max(seq), 0) FROM audit_event").fetchone()[0]
    finally:
        sink.close()
        source.close()
    blobs = target / BLOBS
    if blob_root.exists():
        shutil.copytree(blob_root, blobs)
    else:
        blobs.mkdir()
    store = FileBlobStore(blobs)
    newer = [k for k in store.list_keys(PREFIX) if k > checkpoint_key(head)]
    for key in newer:
        store.delete(key)
    manifest = Manifest(
        taken=clock.now().isoformat(),
        audit_records=int(head),
        blobs=sum(1 for _ in store.list_keys()),
        checkpoints_left_out=len(newer),
    )
    (target / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def restore(settings: Settings, source: Path, *, force: bool = False) -> Manifest:
    """Put a backup back where `settings` keep the database and the blobs (the server stopped).
    Refuses to overwrite an existing database or blob folder unless `force`."""
    database, blob_root = _embedded(settings)
    manifest_file = source / MANIFEST
    if not manifest_file.is_file() or not (source / DATABASE).is_file():
        raise Invalid(f"{source} is not a backup made by `alliance backup`")
    manifest = Manifest(**json.loads(manifest_file.read_text()))
    occupied = database.exists() or (blob_root.exists() and any(blob_root.iterdir()))
    if occupied and not force:
        raise Conflict(
            f"{database} or {blob_root} already holds data; stop the server and give --force "
            "to replace them"
        )
    database.parent.mkdir(parents=True, exist_ok=True)
    for stale in (database, database.with_name(database.name + "-wal")):
        stale.unlink(missing_ok=True)
    database.with_name(database.name + "-shm").unlink(missing_ok=True)
    sink = sqlite3.connect(database)
    copy = sqlite3.connect(f"file:{source / DATABASE}?mode=ro", uri=True)
    try:
        copy.backup(sink)
    finally:
        copy.close()
        sink.close()
    if blob_root.exists():
        shutil.rmtree(blob_root)
    shutil.copytree(source / BLOBS, blob_root)
    return manifest
