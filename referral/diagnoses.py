"""The diagnosis list doctors pick from: ICD-10 国家临床版2.0 (DOMAIN.md "Codes").

The whole table is licensed data the alliance loads from its own file
(`ALLIANCE_ICD10_FILE`: UTF-8 CSV with a `code,name` header, `#` lines are comments); without
one, the sample shipped here (`referral/data/icd10_sample.csv`, the diagnoses of the
alliance's referrals) is used. A code is found by its start, its name by any part, or by the
initials of its pinyin (急性心肌梗死: jxxjgs)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pypinyin import Style, lazy_pinyin

SAMPLE = Path(__file__).parent / "data" / "icd10_sample.csv"


@dataclass(frozen=True)
class DiagnosisCode:
    code: str
    name: str
    initials: str


class DiagnosisList(Mapping[str, str]):
    """Codes to names, searchable as doctors type."""

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        self._entries = [
            DiagnosisCode(code, name, "".join(lazy_pinyin(name, style=Style.FIRST_LETTER)).lower())
            for code, name in entries
        ]
        self._names = {e.code: e.name for e in self._entries}

    @classmethod
    def load(cls, path: Path | None = None) -> DiagnosisList:
        """Read the table (the sample when `path` is None); a file without the `code,name`
        header or with an empty code is refused with what is wrong."""
        source = path or SAMPLE
        with source.open(encoding="utf-8-sig", newline="") as handle:
            rows = csv.DictReader(line for line in handle if not line.startswith("#"))
            if rows.fieldnames is None or not {"code", "name"} <= set(rows.fieldnames):
                raise ValueError(f"{source}: the first line is the header code,name")
            entries = []
            for n, row in enumerate(rows, start=2):
                code, name = (row.get("code") or "").strip(), (row.get("name") or "").strip()
                if not code or not name:
                    raise ValueError(f"{source}: row {n} needs a code and a name")
                entries.append((code, name))
        return cls(entries)

    def __getitem__(self, code: str) -> str:
        return self._names[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def search(self, text: str, limit: int = 20) -> list[tuple[str, str]]:
        """Codes starting with `text`, then names containing it, then names whose pinyin
        initials start with it; each code once, at most `limit`."""
        wanted = text.strip()
        if not wanted:
            return []
        upper, lower = wanted.upper(), wanted.lower()
        ranked = [
            [e for e in self._entries if e.code.upper().startswith(upper)],
            [e for e in self._entries if wanted in e.name],
            [e for e in self._entries if e.initials.startswith(lower)],
        ]
        found: dict[str, str] = {}
        for group in ranked:
            for e in group:
                found.setdefault(e.code, e.name)
                if len(found) == limit:
                    return list(found.items())
        return list(found.items())
