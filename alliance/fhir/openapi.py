"""How the FHIR face describes itself in the service's OpenAPI document: per interaction, the
statuses it answers (FHIR R4 http.html, each interaction's section and "HTTP Status Codes"),
`application/fhir+json` bodies, an OperationOutcome for every error (http.html#summary), the
types served (from the registry) and the parameters and headers it reads.

`GET /fhir/metadata` stays the FHIR description of the server; this one lets generic HTTP
tools (API docs, Schemathesis) know what each route may answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alliance.fhir.registry import Registry
from alliance.fhir.search import COMMON_PARAMS, MAX_SEARCH_PARAMS
from alliance.http import BEARER, path_parameters, responses
from alliance.numbers import MAX_INTEGER

FHIR_MEDIA = "application/fhir+json"

#: FHIR R4 operationoutcome.html, the elements this server writes.
OPERATION_OUTCOME: dict[str, Any] = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"enum": ["fatal", "error", "warning", "information"]},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

#: Any resource (FHIR R4 json.html): an object naming its type.
RESOURCE: dict[str, Any] = {
    "type": "object",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
}

#: FHIR R4 bundle.html: a searchset or a history.
BUNDLE: dict[str, Any] = {
    "type": "object",
    "required": ["resourceType", "type"],
    "properties": {
        "resourceType": {"const": "Bundle"},
        "type": {"enum": ["searchset", "history"]},
        "total": {"type": "integer", "minimum": 0},
        "link": {"type": "array", "items": {"type": "object"}},
        "entry": {"type": "array", "items": {"type": "object"}},
    },
}

CAPABILITY_STATEMENT: dict[str, Any] = {
    **RESOURCE,
    "properties": {"resourceType": {"const": "CapabilityStatement"}},
}

#: What every guarded interaction may answer: a malformed request (400), no or a bad token
#: (401), a scope that does not allow it (403), an unknown type or a record the caller may
#: not see (404), XML or another format asked (406), the database or the trail unavailable.
_GUARDED = (400, 401, 403, 404, 406, 503)
#: What a write adds: a conflict (409), a failed precondition (412), a body over the limit
#: (413), not FHIR JSON (415), a broken rule (422).
_WRITE = (409, 412, 413, 415, 422)


def _fhir(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {FHIR_MEDIA: schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }


_INTEGER = {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER}

#: The parameters every search takes besides each type's own (listed in /fhir/metadata).
SEARCH_PARAMETERS = [
    *(_query(p.name, {"type": "string"}, p.documentation) for p in COMMON_PARAMS),
    _query("_count", _INTEGER, "entries per page (capped at the server's maximum)"),
    _query("_sort", {"type": "string"}, "comma-separated parameters, `-` for descending"),
    _query("_include", {"type": "string"}, "`Type:parameter` of a reference parameter"),
    _query("_total", {"enum": ["none", "estimate", "accurate"]}, "whether to count matches"),
    _query("_summary", {"type": "string"}, "`count` for the total alone"),
    _query("_page_after", {"type": "string"}, "paging (opaque: follow the Bundle's links)"),
    _query("_page_offset", _INTEGER, "paging (opaque: follow the Bundle's links)"),
    _query("_format", {"type": "string"}, "JSON only (`json`, `application/fhir+json`)"),
]
_SEARCH_NOTE = (
    f"Also each search parameter of the type, as `GET /fhir/metadata` lists them; at most "
    f"{MAX_SEARCH_PARAMS} parameters."
)


def _statuses(registry: Registry, interaction: str, *extra: int) -> list[int]:
    """The error statuses of an interaction: 405 only when some type served does not support
    it (FHIR R4 http.html: a type that refuses an interaction answers 405)."""
    refused = any(interaction not in d.interactions for d in registry.definitions())
    return sorted({*_GUARDED, *extra, *((405,) if refused else ())})


def interaction_docs(
    registry: Registry, path: str, interaction: str | None, method: str
) -> dict[str, Any]:
    """Keyword arguments of `add_api_route` documenting one FHIR route: `responses` and
    `openapi_extra` (parameters, request body, security) and the usual `status_code`."""
    types = {"type": "string", "enum": [d.type for d in registry.definitions()]}
    parameters = path_parameters(path, {"rtype": types})
    body: dict[str, Any] | None = None
    answers: dict[int, dict[str, dict[str, Any]]]
    errors: Iterable[int]
    if interaction is None:  # the CapabilityStatement, served to anyone
        return {
            "responses": responses(
                {200: _fhir(CAPABILITY_STATEMENT)}, [406], _fhir(OPERATION_OUTCOME)
            )
        }
    if interaction == "search-type":
        answers, errors = {200: _fhir(BUNDLE)}, _statuses(registry, interaction)
        parameters += SEARCH_PARAMETERS
        parameters.append(_header("Prefer", "`handling=lenient` ignores unknown parameters"))
        if method == "POST":
            body = {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
    elif interaction == "read":
        answers = {200: _fhir(RESOURCE), 304: {}}
        errors = _statuses(registry, interaction, 410)
        parameters.append(_header("If-None-Match", "the ETag last seen: 304 when unchanged"))
    elif interaction == "vread":
        answers, errors = {200: _fhir(RESOURCE)}, _statuses(registry, interaction, 410)
    elif interaction == "history-instance":
        answers, errors = {200: _fhir(BUNDLE)}, _statuses(registry, interaction)
        parameters += [
            _query("_count", _INTEGER, "versions per page"),
            _query("_page_before", _INTEGER, "paging (opaque: follow the Bundle's links)"),
        ]
    elif interaction == "create":
        answers = {201: _fhir(RESOURCE), 200: _fhir(RESOURCE)}
        errors = _statuses(registry, interaction, *_WRITE)
        body = {FHIR_MEDIA: {"schema": RESOURCE}}
        parameters += [
            _header("If-None-Exist", "search criteria: a conditional create (http.html#ccreate)"),
            _header("Prefer", "`return=minimal|representation|OperationOutcome`"),
        ]
    elif interaction == "update":
        answers = {200: _fhir(RESOURCE)}
        errors = _statuses(registry, interaction, 410, *_WRITE)
        body = {FHIR_MEDIA: {"schema": RESOURCE}}
        parameters += [
            _header("If-Match", "the ETag the update is based on (412 when stale)"),
            _header("Prefer", "`return=minimal|representation|OperationOutcome`"),
        ]
    elif interaction == "delete":
        answers, errors = {204: {}}, _statuses(registry, interaction, 409)
    else:  # a type-level operation, with a Parameters resource or (GET) query parameters
        answers = {200: _fhir(RESOURCE)}
        errors = sorted({*_GUARDED, 405, 409, 422, *((413, 415) if method == "POST" else ())})
        if method == "POST":
            body = {
                FHIR_MEDIA: {
                    "schema": {**RESOURCE, "properties": {"resourceType": {"const": "Parameters"}}}
                }
            }
    extra: dict[str, Any] = {"parameters": parameters, "security": BEARER}
    if body is not None:
        extra["requestBody"] = {"required": True, "content": body}
    return {
        "status_code": next(iter(answers)),
        "responses": responses(answers, errors, _fhir(OPERATION_OUTCOME)),
        "openapi_extra": extra,
    }
