"""Generated FHIR requests (issue 11 section 2), on SQLite and PostgreSQL: every search
parameter of every registered type with values by its type (tests/fhir_strategies.py), and
bodies of every type that may be created or updated.

Properties: no answer is a 5xx; every error is an OperationOutcome as application/fhir+json;
a write answered with a 4xx stores nothing (every table but the audit trail, which records the
refusal, holds the same rows before and after).

Bounded by the Hypothesis profile (tests/conftest.py): `make test` replays a fixed seed with a
few examples per parameter and type; `make fuzz` draws many more at random.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, func, select

from alliance.config import Settings
from alliance.db import Base
from alliance.fhir.registry import ResourceDefinition
from alliance.fhir.search import COMMON_PARAMS
from fhir_mappings import build_registry
from server.models import import_all_models
from tests import fhir_strategies as fs

REGISTRY = build_registry(Settings(demo=True))
FHIR_JSON = "application/fhir+json; charset=utf-8"
DOCTOR = "dr.xinyuan.people"
#: Tables a refused request may write to: the audit trail records every refusal.
AUDIT_TABLES = {"audit_event"}


def _user(rtype: str) -> str:
    return "auditor" if REGISTRY.get(rtype).access == "audit" else DOCTOR


def check_answer(r: Any, allowed: set[int]) -> None:
    """The properties every FHIR answer holds, and the statuses this request may get."""
    note(f"{r.request.method} {r.request.url} -> {r.status_code} {r.text[:500]}")
    # Each request class has its exact set of answers (none of them a 5xx): a generated
    # request may get any one of them, never another.
    assert r.status_code in allowed, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.headers.get("content-type") == FHIR_JSON
        answer = r.json()
        assert answer["resourceType"] == "OperationOutcome"
        assert answer["issue"] and all(i["severity"] in ("error", "fatal") for i in answer["issue"])


# ---- searches -----------------------------------------------------------------------------

#: A search answers its Bundle, or a 400 for what it cannot parse, or 406 for `_format=xml`.
SEARCH_STATUSES = {200, 400, 406}
#: The longest query string httpx sends (its URL component limit, 64 KiB, less the path).
MAX_QUERY = 60_000
SEARCHABLE = [d for d in REGISTRY.definitions() if "search-type" in d.interactions]


def _search_examples() -> int:
    """Examples per parameter: a third of the profile's (every type has about ten)."""
    return max(2, hypothesis_settings.default.max_examples // 3)


def test_every_search_parameter_of_every_type(as_user: Callable[[str], TestClient]) -> None:
    users = {name: as_user(name) for name in (DOCTOR, "auditor")}
    searched = 0
    for definition in SEARCHABLE:
        user = users[_user(definition.type)]
        for param in [*COMMON_PARAMS, *definition.search_params]:
            _search(user, definition, [param])
            searched += 1
    assert searched > 150


def _search(user: TestClient, definition: ResourceDefinition, params: list[Any]) -> None:
    @hypothesis_settings(max_examples=_search_examples())
    @given(query=fs.search_params(definition, params), post=st.booleans(), lenient=st.booleans())
    def run(query: list[tuple[str, str]], post: bool, lenient: bool) -> None:
        headers = {"Prefer": "handling=lenient"} if lenient else {}
        # A query string longer than the client takes goes in a POST body instead.
        if post or len(urlencode(query)) > MAX_QUERY:
            r = user.post(f"/fhir/{definition.type}/_search", data=dict(query), headers=headers)
        else:
            r = user.get(f"/fhir/{definition.type}", params=query, headers=headers)
        check_answer(r, SEARCH_STATUSES)
        if r.status_code == 200:
            assert r.json()["resourceType"] == "Bundle"

    try:
        run()
    except BaseException as exc:
        exc.add_note(f"searching {definition.type} by {[p.name for p in params]}")
        raise


# ---- writes ---------------------------------------------------------------------------------

#: A write answers 200/201, or refuses: malformed or invalid (400), not the caller's to write
#: (403), unknown (404), a duplicate or a conflict (409), a failed precondition (412), a rule
#: broken (422).
WRITE_STATUSES = {200, 201, 400, 403, 404, 409, 412, 422}
CREATABLE = [d for d in REGISTRY.definitions() if "create" in d.interactions]
UPDATABLE = [d for d in REGISTRY.definitions() if "update" in d.interactions]


@pytest.fixture
def tables(settings: Settings) -> Iterator[Callable[[], dict[str, int]]]:
    """What the database holds, table by table (rows), the audit trail aside."""
    import_all_models()
    engine: Engine = create_engine(settings.database_url)

    def counts() -> dict[str, int]:
        with engine.connect() as conn:
            return {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in Base.metadata.sorted_tables
                if t.name not in AUDIT_TABLES
            }

    yield counts
    engine.dispose()


def _seed(user: TestClient, rtype: str) -> dict[str, Any] | None:
    """A resource of the type as the demo alliance holds it, when it holds one."""
    found = user.get(f"/fhir/{rtype}", params={"_count": "1"}).json().get("entry", [])
    return found[0]["resource"] if found else None


def test_bodies_of_every_type_store_nothing_when_refused(
    as_user: Callable[[str], TestClient], tables: Callable[[], dict[str, int]]
) -> None:
    user = as_user(DOCTOR)
    admin = as_user("admin.xinyuan.people")
    for definition in CREATABLE:
        writer = admin if definition.access == "directory" else user
        seed = _seed(writer, definition.type)
        if seed is not None:
            seed = {k: v for k, v in seed.items() if k not in ("id", "meta")}
        _write(writer, definition, seed, tables, None)
    for definition in UPDATABLE:
        writer = admin if definition.access == "directory" else user
        seed = _seed(writer, definition.type)
        if seed is not None:
            _write(writer, definition, seed, tables, seed["id"])


def _write(
    user: TestClient,
    definition: ResourceDefinition,
    seed: dict[str, Any] | None,
    tables: Callable[[], dict[str, int]],
    rid: str | None,
) -> None:
    @given(resource=fs.body(definition, seed), keep_id=st.booleans())
    def run(resource: dict[str, Any], keep_id: bool) -> None:
        headers = {"Content-Type": "application/fhir+json"}
        before = tables()
        if rid is None:
            r = user.post(f"/fhir/{definition.type}", content=fs.encode(resource), headers=headers)
        else:
            body = {**resource, "id": rid} if keep_id else resource
            r = user.put(f"/fhir/{definition.type}/{rid}", content=fs.encode(body), headers=headers)
        check_answer(r, WRITE_STATUSES)
        if r.status_code >= 400:
            after = tables()
            assert {t: (before[t], after[t]) for t in before if before[t] != after[t]} == {}

    try:
        run()
    except BaseException as exc:
        exc.add_note(f"{'updating' if rid else 'creating'} a {definition.type}")
        raise
