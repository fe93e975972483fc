"""One search grammar for every type (FHIR R4 search.html), whoever keeps it.

The same parameter-grammar cases run against every registered type that declares the
parameter, read from the registry: the result parameters, date prefixes, string modifiers and
repeated parameters answer the same status on a generically kept type, on the audit trail
(AuditEvent) and on the derived Slots. Exact statuses only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from alliance.config import Settings
from alliance.fhir.registry import ResourceDefinition, SearchParam
from alliance.fhir.search import COMMON_PARAMS, parse_date
from fhir_mappings import build_registry

REGISTRY = build_registry(Settings(demo=True))
TYPES = [d.type for d in REGISTRY.definitions() if "search-type" in d.interactions]
PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
#: A date in the past, so that a Slot search (which looks ahead of now) stays in its window.
DAY = "2020-01-01"
DAY_AFTER = timedelta(hours=30)


def _params(rtype: str) -> list[SearchParam]:
    return [*COMMON_PARAMS, *REGISTRY.get(rtype).search_params]


def _value(param: SearchParam) -> str:
    """A well-formed value of the parameter's type (matching nothing in particular)."""
    special = {"overdue": "true", "upcoming": "24"}
    if param.name in special:
        return special[param.name]
    return {"date": DAY, "reference": "Organization/x"}.get(param.type, "x")


def _cases() -> list[object]:
    cases = []
    for rtype in TYPES:
        names = ["result", "repeated", "bad-modifier"]
        if any(p.type == "date" for p in _params(rtype)):
            names += [f"prefix-{p}" for p in PREFIXES] + ["prefix-unknown", "not-a-date"]
        if any(p.type == "string" for p in _params(rtype)):
            names += ["string-modifiers"]
        for name in names:
            cases.append(pytest.param(rtype, name, id=f"{rtype}-{name}"))
    return cases


def _expected(definition: ResourceDefinition, case: str) -> list[tuple[list[tuple[str, str]], int]]:
    """(query, status) pairs of one case on one type."""
    params = _params(definition.type)
    dates = [p for p in params if p.type == "date"]
    if case == "result":
        return [
            ([("_total", "bogus")], 400),
            ([("_total", "accurate")], 200),
            ([("_total", "none")], 200),
            ([("_count", "-1")], 400),
            ([("_count", "ten")], 400),
            ([("_count", "0")], 200),
            ([("_count", "3")], 200),
            ([("_page_offset", "x")], 400),
        ]
    if case == "repeated":
        return [([(p.name, _value(p)), (p.name, _value(p))], 200) for p in params]
    if case == "bad-modifier":
        return [([(f"{p.name}:bogus", _value(p))], 400) for p in params]
    if case.startswith("prefix-"):
        prefix = case.removeprefix("prefix-")
        if prefix == "unknown":
            return [([(p.name, f"xx{DAY}")], 400) for p in dates]
        return [([(p.name, f"{prefix}{DAY}")], 200) for p in dates]
    if case == "not-a-date":
        return [([(p.name, "2020-13-45")], 400) for p in dates]
    if case == "string-modifiers":
        strings = [p for p in params if p.type == "string"]
        return [([(f"{p.name}:{m}", "x")], 200) for p in strings for m in ("exact", "contains")]
    raise AssertionError(case)


@pytest.mark.parametrize(("rtype", "case"), _cases())
def test_the_same_grammar_on_every_type(
    as_user: Callable[[str], TestClient], rtype: str, case: str
) -> None:
    user = as_user("auditor" if rtype == "AuditEvent" else "dr.xinyuan.people")
    expected = _expected(REGISTRY.get(rtype), case)
    assert expected, f"{rtype} has no parameter for {case}"
    got = []
    for query, _status in expected:
        r = user.get(f"/fhir/{rtype}", params=query)
        got.append((query, r.status_code))
    assert got == [(q, s) for q, s in expected]


def test_every_date_prefix_is_the_kernels() -> None:
    """The prefixes are parsed once (parse_date), for SQL and for derived resources alike."""
    for prefix in PREFIXES:
        assert parse_date(f"{prefix}{DAY}").prefix == prefix
    assert parse_date(DAY).prefix == "eq"
    day = parse_date(DAY)
    assert day.matches(day.low, day.high)
    assert parse_date(f"sa{DAY}").matches(day.high, day.high)
    assert not parse_date(f"eb{DAY}").matches(day.low, day.high)
    # What matches lies in the window a derived type generates in.
    for prefix in PREFIXES:
        value = parse_date(f"{prefix}{DAY}")
        earliest, latest = value.window()
        for moment in (day.low - timedelta(days=400), day.low, day.high, day.high + DAY_AFTER):
            if value.matches(moment, moment):
                assert earliest is None or moment >= earliest, (prefix, moment)
                assert latest is None or moment <= latest, (prefix, moment)


# ---- the audit trail: the grammar's meaning, not only its statuses ---------------------------


def _events(auditor: TestClient, query: list[tuple[str, str]]) -> list[dict]:
    r = auditor.get("/fhir/AuditEvent", params=[*query, ("_count", "200")])
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def test_audit_repeated_parameters_all_hold(as_user: Callable[[str], TestClient]) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    assert doctor.get("/fhir/Patient", params={"_count": "1"}).status_code == 200
    assert doctor.get("/fhir/Organization", params={"_count": "1"}).status_code == 200
    searches = _events(auditor, [("altid", "dr.xinyuan.people"), ("subtype", "search")])
    assert searches
    # Each alone matches; repeated, both must hold (search.html#combining): no event is both.
    assert _events(auditor, [("altid", "dr.xinyuan.people"), ("altid", "auditor")]) == []
    assert _events(auditor, [("subtype", "search"), ("subtype", "read")]) == []
    # A comma is an OR within one parameter.
    either = _events(auditor, [("altid", "dr.xinyuan.people,auditor"), ("subtype", "search")])
    assert {e["agent"][0]["who"]["identifier"]["value"] for e in either} == {
        "dr.xinyuan.people",
        "auditor",
    }


def test_audit_address_is_a_string_parameter(as_user: Callable[[str], TestClient]) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    assert doctor.get("/fhir/Patient", params={"_count": "1"}).status_code == 200
    mine = _events(auditor, [("altid", "dr.xinyuan.people"), ("subtype", "search")])
    address = mine[0]["agent"][0]["network"]["address"]
    assert len(address) > 2

    def found(name: str, value: str) -> bool:
        query = [(name, value), ("altid", "dr.xinyuan.people"), ("subtype", "search")]
        return bool(_events(auditor, query))

    assert found("address", address)
    assert found("address", address[:-1])  # starts with
    assert found("address", address.upper())  # case-insensitive
    assert not found("address", address[1:])
    assert found("address:contains", address[1:-1])
    assert found("address:exact", address)
    assert not found("address:exact", address[:-1])


def test_audit_total_and_summary_follow_the_kernel(as_user: Callable[[str], TestClient]) -> None:
    auditor = as_user("auditor")
    assert auditor.get("/fhir/AuditEvent", params={"_total": "bogus"}).status_code == 400
    counted = auditor.get("/fhir/AuditEvent", params={"_summary": "count"})
    assert counted.status_code == 200, counted.text
    body = counted.json()
    assert body["total"] > 0
    assert [e for e in body.get("entry", []) if e["search"]["mode"] == "match"] == []
    none = auditor.get("/fhir/AuditEvent", params={"_count": "0"}).json()
    assert none["total"] > 0
    assert [link["relation"] for link in none["link"]] == ["self"]


def test_audit_export_parses_the_same_way(as_user: Callable[[str], TestClient]) -> None:
    auditor = as_user("auditor")
    assert auditor.get("/api/audit/events.csv", params={"date": f"xx{DAY}"}).status_code == 400
    r = auditor.get("/api/audit/events.csv", params=[("subtype", "search"), ("subtype", "read")])
    assert r.status_code == 200
    assert len(r.text.strip().splitlines()) == 1  # the header only: both cannot hold


# ---- the derived Slots: the same grammar, and its meaning --------------------------------------

SCHEDULE = ("schedule", "sp-yz-tcm-consult")


def _slots(user: TestClient, query: list[tuple[str, str]]) -> list[str]:
    """The starts and ids of the Slots found, in order."""
    r = user.get("/fhir/Slot", params=[*query, ("_count", "500")])
    assert r.status_code == 200, r.text
    return [f"{e['resource']['start']} {e['resource']['id']}" for e in r.json().get("entry", [])]


def test_slot_filters_follow_the_kernel(as_user: Callable[[str], TestClient]) -> None:
    doctor = as_user("dr.xinyuan.people")
    week = _slots(doctor, [SCHEDULE])
    assert week
    first, last = week[0].split()[0], week[-1].split()[0]
    later = [s for s in week if not s.startswith(first)]
    # Date prefixes as the kernel reads them, on the generated slots.
    assert _slots(doctor, [SCHEDULE, ("start", first)]) == [s for s in week if s not in later]
    assert _slots(doctor, [SCHEDULE, ("start", f"ne{first}")]) == later
    assert _slots(doctor, [SCHEDULE, ("start", f"sa{first}"), ("start", f"le{last}")]) == later
    assert _slots(doctor, [SCHEDULE, ("start", f"eb{first}")]) == []
    assert _slots(doctor, [SCHEDULE, ("start", f"eb{first},ge{first}")]) == week
    assert _slots(doctor, [SCHEDULE, ("_lastUpdated", f"ge{DAY}")]) == week
    assert _slots(doctor, [SCHEDULE, ("_lastUpdated", f"lt{DAY}")]) == []
    # Repeated parameters all hold; a comma is an OR; a reference to another type, nothing.
    assert _slots(doctor, [SCHEDULE, ("schedule", "other")]) == []
    assert _slots(doctor, [("schedule", "sp-yz-tcm-consult,other")]) == week
    assert _slots(doctor, [("schedule", "Organization/sp-yz-tcm-consult")]) == []
    assert _slots(doctor, [SCHEDULE, ("status", "free"), ("status:not", "free")]) == []
    statuses = "free,busy,busy-tentative"
    assert _slots(doctor, [SCHEDULE, ("status", statuses), ("_id", week[0].split()[1])]) == [
        week[0]
    ]
    counted = doctor.get("/fhir/Slot", params=[SCHEDULE, ("_summary", "count")])
    assert counted.status_code == 200 and counted.json()["total"] == len(week)
    assert counted.json().get("entry", []) == []
    # What the Slot does not serve is a 400, not ignored.
    for query in ([("_sort", "start")], [("_page_after", "x")], [("specialty:not", "03.04")]):
        assert doctor.get("/fhir/Slot", params=[SCHEDULE, *query]).status_code == 400, query
