"""What crashes leave behind, found and removed (ARCHITECTURE.md, "Storage": an orphan blob is
harmless and swept; a row without its blob must never exist).

A blob is written before the row that points to it commits, so a crash between the two leaves
an orphan: a blob no row references. Spool files (a STOW-RS part, a C-STORE data set, a WADO
copy) live in the temporary folder while a request runs and are removed when it ends; a killed
process leaves them. The kernel knows no domain: `server.sweep` names the columns that
reference blobs and the prefixes that are never swept.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from alliance.errors import Unavailable

__all__ = ["SPOOL_PREFIXES", "keys_in_use", "spool_directory", "sweep_spool"]

#: Every spool file the service makes starts with one of these, in the temporary folder.
SPOOL_PREFIXES = ("alliance-stow-", "alliance-cstore-", "alliance-wado-")


def keys_in_use(
    session: Session, keys: Iterable[str], columns: Sequence[InstrumentedAttribute[str]]
) -> set[str]:
    """Those of `keys` that a committed (or this transaction's) row references."""
    wanted = sorted(set(keys))
    used: set[str] = set()
    for start in range(0, len(wanted), 500):  # bounded IN lists
        batch = wanted[start : start + 500]
        for column in columns:
            used.update(session.scalars(select(column).where(column.in_(batch)).distinct()))
    return used


def spool_directory() -> Path:
    return Path(tempfile.gettempdir())


def sweep_spool(
    before: datetime, *, dry_run: bool = False, directory: Path | None = None
) -> list[str]:
    """Remove the service's spool files last written before `before`; return their names."""
    where = directory or spool_directory()
    cutoff = before.timestamp()
    found = []
    try:
        entries = list(where.iterdir())
    except OSError as exc:
        raise Unavailable(f"cannot list the spool folder {where}: {exc.strerror}") from None
    for path in entries:
        if not path.name.startswith(SPOOL_PREFIXES):
            continue
        try:
            if not path.is_file() or path.stat().st_mtime >= cutoff:
                continue
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue  # its request ended meanwhile
        except OSError as exc:
            raise Unavailable(f"cannot remove the spool file {path}: {exc.strerror}") from None
        found.append(str(path))
    return sorted(found)
