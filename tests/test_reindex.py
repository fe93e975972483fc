"""The search index follows its rules: when they change (alliance.fhir.reindex.INDEX_VERSION),
`alliance db upgrade` rebuilds what they index differently, once, so records stored before
are found as new ones are."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.models import IndexState, StringIndex
from alliance.fhir.reindex import INDEX_VERSION, index_version
from server.migrate import upgrade


def test_an_index_built_by_older_rules_is_rebuilt_on_upgrade(
    settings: Settings, as_user: Callable[[str], TestClient]
) -> None:
    doctor = as_user("dr.xinyuan.people")

    def found(name: str) -> list[str]:
        r = doctor.get("/fhir/Patient", params={"name": name})
        assert r.status_code == 200, r.text
        return [e["resource"]["id"] for e in r.json().get("entry", [])]

    assert found("ayiguli") == ["demo-aygul"]
    # The index as version 1 built it: no pinyin forms, separators kept as written.
    db = Database(settings.database_url)
    try:
        with db.transaction(write=True) as s:
            s.execute(delete(StringIndex).where(StringIndex.norm.like("ayiguli%")))
            s.execute(delete(IndexState))
        with db.transaction() as s:
            assert index_version(s) == 1
    finally:
        db.dispose()
    assert found("ayiguli") == []

    upgrade(settings.database_url, settings=settings)
    assert found("ayiguli") == ["demo-aygul"]
    db = Database(settings.database_url)
    try:
        with db.transaction() as s:
            assert s.scalar(select(IndexState.version)) == INDEX_VERSION
    finally:
        db.dispose()
