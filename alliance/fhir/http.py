"""The FHIR REST face over HTTP (FHIR R4 http.html): routing, negotiation, headers, Bundles.

It is framework plumbing only; every resource type comes from the registry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.routing import Match
from starlette.types import Scope

from alliance import trace
from alliance.codes import RULE
from alliance.config import Settings
from alliance.errors import (
    AllianceError,
    BadRequest,
    Issue,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    UnsupportedMediaType,
)
from alliance.fhir.capability import capability_statement
from alliance.fhir.openapi import interaction_docs
from alliance.fhir.registry import Operation, OperationContext
from alliance.fhir.search import non_negative
from alliance.fhir.store import FhirStore
from alliance.fhir.types import SearchResult, Version, WriteResult
from alliance.fhir.values import instant
from alliance.http import by_path, read_body
from alliance.security.guard import Context, Guard, Interaction, Touched

FHIR_JSON = "application/fhir+json; charset=utf-8"
_JSON_TYPES = {"application/fhir+json", "application/json", "json", "text/json", "application/*"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "xml", "text/xml"}
_TRANSPORT_PARAMS = {"_format", "_pretty"}
#: The interaction of a type-level operation's routes (FHIR R4 operations.html).
_OPERATION = "operation"
T = TypeVar("T")


def outcome(issues: list[Issue]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": i.severity,
                "code": i.code,
                **({"details": {"coding": [{"system": RULE, "code": i.rule}]}} if i.rule else {}),
                "diagnostics": i.diagnostics,
                **({"expression": i.expression} if i.expression else {}),
            }
            for i in issues
        ],
    }


def error_response(error: AllianceError) -> Response:
    body = json.dumps(outcome(error.issues), ensure_ascii=False)
    return Response(body, error.status, headers=error.headers, media_type=FHIR_JSON)


def _negotiate(request: Request) -> None:
    """JSON only: `_format` or Accept asking only for XML (or anything else) answers 406."""
    wanted = request.query_params.get("_format") or request.headers.get("accept", "")
    types = [t.split(";")[0].strip().lower() for t in wanted.split(",") if t.strip()]
    if not types or any(t in _JSON_TYPES or t == "*/*" for t in types):
        return
    if any(t in _XML_TYPES for t in types):
        raise NotAcceptable("this server speaks FHIR JSON only; XML is not supported")
    raise NotAcceptable(f"cannot answer as {wanted}; ask for application/fhir+json")


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in _XML_TYPES:
        raise UnsupportedMediaType("this server accepts FHIR JSON only; XML is not supported")
    if ctype and ctype not in _JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type {ctype} is not FHIR JSON")
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequest(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object holding a FHIR resource")
    _check_json(body)
    return body


#: How deep a FHIR JSON body may nest. The deepest resources (a Questionnaire's nested items,
#: contained resources) stay far below; beyond, validation and indexing would recurse past
#: Python's stack.
MAX_JSON_DEPTH = 64


def _check_json(body: object) -> None:
    """Refuse, as the client's error, JSON that is valid but that no FHIR resource holds and
    the database cannot keep: nesting beyond MAX_JSON_DEPTH, a NUL character in a string or
    key (PostgreSQL text and jsonb refuse U+0000; FHIR R4 datatypes.html#string forbids
    control characters below U+0020 other than tab, CR and LF), and numbers beyond a double
    (1e400 reads as infinity, which JSON cannot write back)."""
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise BadRequest("a string in the body holds a NUL character (U+0000)")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise BadRequest("a number in the body is beyond the range of a decimal")
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\x00" in key:
                    raise BadRequest("a key in the body holds a NUL character (U+0000)")
                stack.append((item, depth + 1))


def _version_of(etag: str | None) -> str | None:
    """The version in an ETag precondition: `W/"3"`, and as lenient clients send it, `"3"`, `3`."""
    if etag is None:
        return None
    return etag.strip().removeprefix("W/").strip('"')


def _prefer(request: Request) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for part in request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key:
                prefs[key.lower()] = value.strip().strip('"')
    return prefs


class FhirApi:
    """Builds the `/fhir` router from a store; one unit of work per request."""

    def __init__(self, store: FhirStore, guard: Guard, settings: Settings) -> None:
        self.store = store
        self.guard = guard
        self.settings = settings
        #: The routes this face serves, each with its interaction (set by `router`).
        self._routes: list[tuple[APIRoute, str | None]] = []

    @property
    def base(self) -> str:
        """The FHIR base of the links in this response (alliance.trace.public)."""
        return trace.public(self.settings.fhir_base)

    async def _guarded(
        self,
        request: Request,
        interaction: Interaction,
        work: Callable[[Session, Context], T],
        touched: Callable[[T], list[Touched]],
        *,
        rtype: str,
        scope: str,
    ) -> T:
        """Run an interaction for the caller: scope checked (403), access rules applied inside
        the queries, and audited (alliance.security.guard)."""
        return await self.guard.run(
            request,
            interaction,
            work,
            touched,
            check=lambda principal: principal.check_scope(rtype, scope),
        )

    def _headers(self, version: Version) -> dict[str, str]:
        return {
            "ETag": version.etag,
            "Last-Modified": format_datetime(version.last_updated, usegmt=True),
        }

    def _resource_response(self, version: Version, status: int = 200) -> Response:
        assert version.content is not None
        return Response(
            version.content.encode(), status, headers=self._headers(version), media_type=FHIR_JSON
        )

    def _write_response(self, request: Request, result: WriteResult) -> Response:
        v = result.version
        status = 201 if result.created else 200
        headers = self._headers(v)
        if result.created or request.method == "PUT":
            headers["Location"] = f"{self.base}/{v.resource_type}/{v.id}/_history/{v.version}"
        wanted = _prefer(request).get("return", "representation")
        if wanted == "minimal":
            return Response(None, status, headers=headers)
        if wanted.lower() == "operationoutcome":
            issues = result.warnings or [Issue("all OK", "informational", "information")]
            body = json.dumps(outcome(issues), ensure_ascii=False)
            return Response(body, status, headers=headers, media_type=FHIR_JSON)
        response = self._resource_response(v, status)
        response.headers.update(headers)
        return response

    def router(self) -> APIRouter:
        r = APIRouter(prefix="/fhir")
        # Each route with the interaction it serves (FHIR R4 http.html); the operations'
        # routes before the instance routes, so `Appointment/$find` is not read as an id.
        table: list[tuple[str, str, Callable[..., Any], str | None]] = [
            ("/metadata", "GET", self.metadata, None),
            ("/{rtype}/${name}", "POST", self.operate, _OPERATION),
            ("/{rtype}/${name}", "GET", self.operate_get, _OPERATION),
            ("/{rtype}/{rid}/${name}", "POST", self.operate_instance, _OPERATION),
            ("/{rtype}/{rid}/${name}", "GET", self.operate_instance_get, _OPERATION),
            ("/{rtype}", "GET", self.search, "search-type"),
            ("/{rtype}/_search", "POST", self.search_post, "search-type"),
            ("/{rtype}", "POST", self.create, "create"),
            ("/{rtype}/{rid}", "GET", self.read, "read"),
            ("/{rtype}/{rid}", "PUT", self.update, "update"),
            ("/{rtype}/{rid}", "DELETE", self.delete, "delete"),
            ("/{rtype}/{rid}/_history", "GET", self.history, "history-instance"),
            ("/{rtype}/{rid}/_history/{vid}", "GET", self.vread, "vread"),
        ]
        self._routes = []
        registry = self.store.registry
        for path, method, endpoint, interaction in table:
            r.add_api_route(
                path,
                by_path(endpoint),
                methods=[method],
                response_class=Response,
                tags=["FHIR"],
                **interaction_docs(registry, f"/fhir{path}", interaction, method),
            )
            route = r.routes[-1]
            assert isinstance(route, APIRoute)
            self._routes.append((route, interaction))
        return r

    def allow(self, scope: Scope) -> str:
        """The `Allow` of a 405 on a FHIR path (RFC 9110 15.5.6): the methods of the routes
        that serve the path, less those whose interaction the type does not support (an
        AuditEvent is read, never written) and GET of an operation that changes data."""
        methods: set[str] = set()
        for route, interaction in self._routes:
            match, child = route.matches(scope)
            served = route.methods or set()
            if match is Match.NONE:
                continue
            params = child.get("path_params", {})
            if self._serves(params.get("rtype"), params.get("name"), served, interaction):
                methods |= served
        return ", ".join(sorted(methods))

    def _serves(
        self, rtype: str | None, name: str | None, methods: set[str], interaction: str | None
    ) -> bool:
        if interaction is None or rtype is None or rtype not in self.store.registry:
            return True  # an unknown type answers 404 whatever the method
        definition = self.store.registry.get(rtype)
        if interaction != _OPERATION:
            return interaction in definition.interactions
        operation = definition.operations.get(name or "")
        return operation is None or "GET" not in methods or not operation.affects_state

    def _supports(self, request: Request, rtype: str, interaction: str) -> None:
        if interaction not in self.store.registry.get(rtype).interactions:
            allow = self.allow(request.scope)
            raise MethodNotAllowed(
                f"{interaction} is not supported on {rtype}; use {allow}",
                headers={"Allow": allow},
            )

    # ---- interactions -------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        _negotiate(request)
        body = capability_statement(self.store.registry, base_url=self.base, software="alliance")
        return Response(json.dumps(body, ensure_ascii=False), media_type=FHIR_JSON)

    async def read(self, request: Request, rtype: str, rid: str) -> Response:
        _negotiate(request)
        self._supports(request, rtype, "read")
        version = await self._guarded(
            request,
            Interaction("read", f"{rtype}/{rid}"),
            lambda s, ctx: self.store.read(
                rtype, rid, session=s, visible=ctx.visible, actor=ctx.principal
            ),
            _touched_one,
            rtype=rtype,
            scope="read",
        )
        if _version_of(request.headers.get("if-none-match")) == str(version.version):
            return Response(None, 304, headers=self._headers(version))
        return self._resource_response(version)

    async def vread(self, request: Request, rtype: str, rid: str, vid: str) -> Response:
        _negotiate(request)
        self._supports(request, rtype, "vread")
        version = await self._guarded(
            request,
            Interaction("vread", f"{rtype}/{rid}"),
            lambda s, ctx: self.store.vread(rtype, rid, vid, session=s, visible=ctx.visible),
            _touched_one,
            rtype=rtype,
            scope="vread",
        )
        return self._resource_response(version)

    async def history(self, request: Request, rtype: str, rid: str) -> Response:
        _negotiate(request)
        self._supports(request, rtype, "history-instance")
        count = self._count(request)
        before = request.query_params.get("_page_before")
        if before is not None:
            non_negative(before, "_page_before")
        versions = await self._guarded(
            request,
            Interaction("history", f"{rtype}/{rid}"),
            lambda s, ctx: self.store.history(
                rtype,
                rid,
                session=s,
                count=count + 1,
                before_version=int(before) if before else None,
                visible=ctx.visible,
            ),
            lambda vs: [_touched(vs[0])] if vs else [],
            rtype=rtype,
            scope="history-instance",
        )
        more = len(versions) > count
        versions = versions[:count]
        url = f"{self.base}/{rtype}/{rid}/_history"
        links = [{"relation": "self", "url": f"{url}?{urlencode({'_count': count})}"}]
        if more:
            nxt = urlencode({"_count": count, "_page_before": versions[-1].version})
            links.append({"relation": "next", "url": f"{url}?{nxt}"})
        entries = []
        for v in versions:
            full = f"{self.base}/{rtype}/{rid}"
            entry: dict[str, Any] = {"fullUrl": full}
            if v.content is not None:
                entry["resource"] = json.loads(v.content)
            method = {"create": "POST", "update": "PUT", "delete": "DELETE"}[v.method]
            entry["request"] = {
                "method": method,
                "url": rtype if method == "POST" else f"{rtype}/{rid}",
            }
            entry["response"] = {
                "status": {"create": "201 Created", "update": "200 OK", "delete": "204"}[v.method],
                "etag": v.etag,
                "lastModified": instant(v.last_updated),
            }
            entries.append(entry)
        bundle = {"resourceType": "Bundle", "type": "history", "link": links, "entry": entries}
        return Response(json.dumps(bundle, ensure_ascii=False), media_type=FHIR_JSON)

    def _count(self, request: Request) -> int:
        raw = request.query_params.get("_count")
        if raw is None:
            return self.settings.default_page_size
        return min(non_negative(raw, "_count"), self.settings.max_page_size)

    async def search(self, request: Request, rtype: str) -> Response:
        _negotiate(request)
        params = list(request.query_params.multi_items())
        return await self._search(request, rtype, params)

    async def search_post(self, request: Request, rtype: str) -> Response:
        _negotiate(request)
        form = await request.form()
        params = list(request.query_params.multi_items())
        params += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        return await self._search(request, rtype, params)

    async def _search(
        self, request: Request, rtype: str, params: list[tuple[str, str]]
    ) -> Response:
        self._supports(request, rtype, "search-type")
        lenient = _prefer(request).get("handling") == "lenient"
        result = await self._guarded(
            request,
            Interaction("search", query=urlencode(params)),
            lambda s, ctx: self.store.search(
                rtype,
                params,
                session=s,
                default_count=self.settings.default_page_size,
                max_count=self.settings.max_page_size,
                lenient=lenient,
                visible=ctx.visible,
                actor=ctx.principal,
            ),
            _touched_by_search,
            rtype=rtype,
            scope="search-type",
        )
        return Response(self._searchset(rtype, result).encode(), media_type=FHIR_JSON)

    def _searchset(self, rtype: str, result: SearchResult) -> str:
        """The Bundle as text, splicing each stored resource's JSON in without re-parsing it."""
        spec = result.spec
        base_params = [*spec.applied, ("_count", str(spec.count))]
        self_params = list(base_params)
        if spec.page_after is not None:
            self_params.append(("_page_after", spec.page_after))
        if spec.offset:
            self_params.append(("_page_offset", str(spec.offset)))
        url = f"{self.base}/{rtype}"
        links = [{"relation": "self", "url": f"{url}?{urlencode(self_params)}"}]
        if result.next_page is not None:
            links.append(
                {"relation": "next", "url": f"{url}?{urlencode([*base_params, result.next_page])}"}
            )
        head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if result.total is not None:
            head["total"] = result.total
        head["link"] = links
        entries = [self._entry(v, "match") for v in result.matches]
        entries += [self._entry(v, "include") for v in result.included]
        if spec.warnings:
            oo = json.dumps(outcome(spec.warnings), ensure_ascii=False)
            entries.append(f'{{"resource":{oo},"search":{{"mode":"outcome"}}}}')
        text = json.dumps(head, ensure_ascii=False)[:-1]
        return f'{text},"entry":[{",".join(entries)}]}}'

    def _entry(self, v: Version, mode: str) -> str:
        full = json.dumps(f"{self.base}/{v.resource_type}/{v.id}")
        return f'{{"fullUrl":{full},"resource":{v.content},"search":{{"mode":"{mode}"}}}}'

    async def create(self, request: Request, rtype: str) -> Response:
        _negotiate(request)
        self._supports(request, rtype, "create")
        body = await _read_json(request, self.settings.max_body_bytes)
        # The criteria come in If-None-Exist (FHIR R4 http.html#ccreate) or, as some clients
        # (fhirpy's get_or_create) send them, in the query string of the POST.
        criteria = [
            (k, v) for k, v in request.query_params.multi_items() if k not in _TRANSPORT_PARAMS
        ]
        if_none_exist = request.headers.get("if-none-exist") or urlencode(criteria) or None
        result = await self._guarded(
            request,
            Interaction("create", rtype),
            lambda s, ctx: self.store.create(
                rtype,
                body,
                session=s,
                if_none_exist=if_none_exist,
                visible=ctx.visible,
                authorize=ctx.authorize,
                actor=ctx.principal,
            ),
            lambda r: [_touched(r.version)],
            rtype=rtype,
            scope="create",
        )
        return self._write_response(request, result)

    async def update(self, request: Request, rtype: str, rid: str) -> Response:
        _negotiate(request)
        self._supports(request, rtype, "update")
        body = await _read_json(request, self.settings.max_body_bytes)
        if_match = _version_of(request.headers.get("if-match"))
        result = await self._guarded(
            request,
            Interaction("update", f"{rtype}/{rid}"),
            lambda s, ctx: self.store.update(
                rtype,
                rid,
                body,
                session=s,
                if_match=if_match,
                visible=ctx.visible,
                authorize=ctx.authorize,
                actor=ctx.principal,
            ),
            lambda r: [_touched(r.version)],
            rtype=rtype,
            scope="update",
        )
        return self._write_response(request, result)

    async def operate(self, request: Request, rtype: str, name: str) -> Response:
        """A type-level operation (FHIR R4 operations.html): a Parameters resource in, the
        resource of its `return` parameter out."""
        _negotiate(request)
        body = await _read_json(request, self.settings.max_body_bytes)
        if body.get("resourceType") != "Parameters":
            raise BadRequest(f"${name} takes a Parameters resource")
        return await self._operate(request, rtype, name, body)

    async def operate_get(self, request: Request, rtype: str, name: str) -> Response:
        """An operation that changes nothing, with its parameters in the query string."""
        _negotiate(request)
        operation = self._operation(rtype, name)
        if operation.affects_state:
            raise MethodNotAllowed(
                f"${name} changes data: POST a Parameters resource", headers={"Allow": "POST"}
            )
        params = [
            {"name": k, "valueString": v}
            for k, v in request.query_params.multi_items()
            if k not in _TRANSPORT_PARAMS
        ]
        return await self._operate(
            request, rtype, name, {"resourceType": "Parameters", "parameter": params}
        )

    async def operate_instance(self, request: Request, rtype: str, rid: str, name: str) -> Response:
        """An operation on one resource (`[base]/Type/[id]/$name`): the type's operation, with
        the resource's id as its `id` parameter."""
        _negotiate(request)
        body = await _read_json(request, self.settings.max_body_bytes)
        if body.get("resourceType") != "Parameters":
            raise BadRequest(f"${name} takes a Parameters resource")
        params = [p for p in body.get("parameter") or [] if p.get("name") != "id"]
        body["parameter"] = [{"name": "id", "valueString": rid}, *params]
        return await self._operate(request, rtype, name, body)

    async def operate_instance_get(
        self, request: Request, rtype: str, rid: str, name: str
    ) -> Response:
        """An instance operation that changes nothing, its parameters in the query string."""
        _negotiate(request)
        operation = self._operation(rtype, name)
        if operation.affects_state:
            raise MethodNotAllowed(
                f"${name} changes data: POST a Parameters resource", headers={"Allow": "POST"}
            )
        params = [{"name": "id", "valueString": rid}] + [
            {"name": k, "valueString": v}
            for k, v in request.query_params.multi_items()
            if k not in _TRANSPORT_PARAMS and k != "id"
        ]
        return await self._operate(
            request, rtype, name, {"resourceType": "Parameters", "parameter": params}
        )

    def _operation(self, rtype: str, name: str) -> Operation:
        operation = self.store.registry.get(rtype).operations.get(name)
        if operation is None:
            raise NotFound(f"the operation ${name} is not defined on {rtype}")
        return operation

    async def _operate(
        self, request: Request, rtype: str, name: str, parameters: dict[str, Any]
    ) -> Response:
        operation = self._operation(rtype, name)
        result = await self._guarded(
            request,
            Interaction("operation", f"{rtype}/${name}"),
            lambda s, ctx: operation.run(
                OperationContext(s, self.store, ctx.principal, ctx.visible, ctx.authorize),
                parameters,
            ),
            lambda r: [Touched(entity, patient) for entity, patient in r.touched],
            rtype=rtype,
            scope=operation.interaction,
        )
        return Response(
            json.dumps(result.resource, ensure_ascii=False).encode(), media_type=FHIR_JSON
        )

    async def delete(self, request: Request, rtype: str, rid: str) -> Response:
        _negotiate(request)
        self._supports(request, rtype, "delete")
        version = await self._guarded(
            request,
            Interaction("delete", f"{rtype}/{rid}"),
            lambda s, ctx: self.store.delete(
                rtype, rid, session=s, visible=ctx.visible, authorize=ctx.authorize
            ),
            lambda v: [_touched(v)] if v else [],
            rtype=rtype,
            scope="delete",
        )
        headers = self._headers(version) if version else {}
        return Response(None, 204, headers=headers)


def _touched(version: Version) -> Touched:
    return Touched(f"{version.resource_type}/{version.id}", version.patient_id)


def _touched_one(version: Version) -> list[Touched]:
    return [_touched(version)]


def _touched_by_search(result: SearchResult) -> list[Touched]:
    """One audit event per patient whose records the search returned (IHE BALP), or one for
    the search itself when it returned no patient's records."""
    patients = dict.fromkeys(
        v.patient_id for v in [*result.matches, *result.included] if v.patient_id
    )
    return [Touched(f"Patient/{p}", p) for p in patients]
