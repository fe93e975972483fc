"""Schemathesis against the service's own OpenAPI document (issue 11 section 2): every
documented route, with requests generated from what the document says it takes (positive)
and from what it says it refuses (negative), signed in as a county doctor, on SQLite and
PostgreSQL. No answer is a 5xx, and every answer is one the document lists, with a documented
media type and body: a FHIR error is an OperationOutcome as application/fhir+json. A method a
path does not serve answers 405 with an `Allow` that lists exactly what the document does.

The run is bounded by the Hypothesis profile (tests/conftest.py): `make test` a fixed seed and
a few examples per route and mode, `make fuzz` many more at random.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import compile_path

from alliance.config import Settings
from tests.conftest import bearer

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

#: STOW-RS bodies go as the bytes generated (the DICOM corpus replayed against STOW-RS and
#: C-STORE is another test's; here a STOW-RS request is held to what its route documents).
schemathesis.serializer.alias("multipart/related", "application/octet-stream")

#: Logging out ends every token of the account, the one this run signs in with too; it is
#: tested in test_security.py.
SKIPPED = {("POST", "/auth/logout")}


@pytest.fixture
def doctor(settings: Settings) -> dict[str, str]:
    return bearer(settings, "dr.xinyuan.people")


@pytest.fixture
def api_schema(app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema: schemathesis.BaseSchema) -> list[Any]:
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if (op.method.upper(), op.path) not in SKIPPED]


def test_every_route_answers_as_its_document_says(
    api_schema: schemathesis.BaseSchema, doctor: dict[str, str]
) -> None:
    operations = _operations(api_schema)
    assert len(operations) > 40  # FHIR, DICOMweb, the APIs and operations: all documented
    for operation in operations:
        # Negative data needs something to break: a parameter or a body.
        takes_input = any(True for _ in operation.iter_parameters()) or bool(operation.body)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 1 + takes_input]:
            try:
                _run(operation, mode, doctor)
            except BaseException as exc:
                exc.add_note(f"{operation.label} ({mode.value} data)")
                raise


def _run(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
    """Run the examples of one operation in one mode. Negative data is held to the same checks
    and not to "must be refused": the service ignores query parameters it does not know, as
    FHIR (search.html#errors, lenient handling) and QIDO-RS (PS3.18 8.3.4.1) ask, and the token
    a negative case leaves out is sent all the same."""

    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        case.call_and_validate(headers=dict(headers), checks=CHECKS)

    run()


def test_a_method_no_route_of_a_path_serves_is_405_with_allow(
    client: TestClient, doctor: dict[str, str]
) -> None:
    """Every documented path, asked with a method the document does not list for it, answers
    405, and `Allow` lists exactly the methods the document lists for the templates that
    match the path (RFC 9110 15.5.6)."""
    paths = client.get("/openapi.json").json()["paths"]
    served = {
        compile_path(template)[0]: {m.upper() for m in item if m in _METHODS}
        for template, item in paths.items()
    }
    got, expected = {}, {}
    for template in paths:
        path = _example_path(template)
        allow = set().union(*(m for regex, m in served.items() if regex.match(path)))
        for method in _METHODS:
            if method.upper() in allow:
                continue
            r = client.request(method, path, headers=doctor)
            got[(method, path)] = (r.status_code, r.headers.get("allow"))
            expected[(method, path)] = (405, ", ".join(sorted(allow)))
    assert len(got) > 60
    assert got == expected


_METHODS = ("get", "post", "put", "delete", "patch")
#: Values for the path parameters of `_example_path`: a type that supports every interaction,
#: so the FHIR face's `Allow` (which leaves out what a type does not support) is the document's.
_EXAMPLE_VALUES = {"rtype": "PractitionerRole", "name": "find", "path": "7FE00010"}


def _example_path(template: str) -> str:
    path = template
    for name, value in _EXAMPLE_VALUES.items():
        path = path.replace(f"{{{name}}}", value)
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + "1.2.3" + path[end + 1 :]
    return path
