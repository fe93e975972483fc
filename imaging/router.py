"""The DICOMweb face at `/dicomweb` (PS3.18): STOW-RS, QIDO-RS and WADO-RS.

This module only routes: it parses a request, runs the work of `imaging.stow`, `imaging.qido`
and `imaging.wado` in a guarded unit of work, and builds the response.

Every request runs through `Guard.run` (alliance.security.guard): the bearer token, the
principal, the access rules inside the queries, and one AuditEvent per study touched, with its
patient, written in the same transaction as the work. A study the caller may not see answers
404 on WADO-RS and is absent from QIDO-RS results, exactly as one that does not exist.

Bytes move outside the database transaction: STOW-RS receives and stores parts before its
indexing unit of work opens; WADO-RS decides what to send inside it and streams from the blob
store after it commits.

The face is an application of its own, mounted at `/dicomweb`, so that CORS for browser
viewers (Fetch standard, CORS protocol) applies to it and nothing else.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from alliance import metrics, trace
from alliance.config import Settings
from alliance.errors import AllianceError, BadRequest, UnsupportedMediaType
from alliance.http import (
    BEARER,
    Answers,
    Endpoint,
    by_path,
    path_parameters,
    read_limited,
    responses,
)
from alliance.numbers import MAX_INTEGER
from alliance.security.access import Principal
from alliance.security.guard import Context, Guard, Interaction, Touched
from alliance.security.service import principal_for
from imaging import dicom, pixels, qido, wado
from imaging.access import find_instances, find_study, visible_studies
from imaging.models import Instance, Study
from imaging.service import Imaging, Outcome, Staged
from imaging.stow import (
    StowFailed,
    may_store,
    part_writer,
    stage_part,
    staged_key,
    stow_json,
)
from imaging.web import (
    MediaRange,
    MultipartReader,
    multipart_bytes,
    multipart_type,
    new_boundary,
    parse_accept,
    parse_media_type,
)

DICOM_JSON = "application/dicom+json"


@dataclass
class Found:
    """What a read found, and the studies it touched (for the audit trail)."""

    value: Any
    touched: list[Touched] = field(default_factory=list)


def _touched(studies: Iterable[Study]) -> list[Touched]:
    return [Touched(f"ImagingStudy/{s.study_uid}", s.patient_id) for s in studies]


def _retrieve(study: str) -> Interaction:
    return Interaction("retrieve", f"ImagingStudy/{study}", type="transfer")


def _accept(request: Request) -> list[MediaRange]:
    return parse_accept(request.headers.get("accept"))


# ---- what each route answers, for the OpenAPI document (PS3.18 8.x and 10.x) ----------------

_BINARY = {"type": "string", "format": "binary"}
#: PS3.18 F.2: the DICOM JSON Model, an array of datasets (QIDO-RS results, metadata).
_DATASETS = {"type": "array", "items": {"type": "object"}}
#: PS3.18 10.5.3: the Store Instances Response Module (ReferencedSOPSequence,
#: FailedSOPSequence with a FailureReason per instance, RetrieveURL).
_STORE_RESPONSE = {"type": "object"}
#: What every guarded read may answer: a malformed request (400), no or a bad token (401),
#: a token without the scope (403), a study the caller may not see or that does not exist
#: (404), an Accept it cannot satisfy (406), the database or the trail unavailable (503).
_READ_ERRORS = (400, 401, 403, 404, 406, 503)


def _route_docs(answers: Answers, errors: Iterable[int], **extra: Any) -> dict[str, Any]:
    return {"responses": responses(answers, errors), "openapi_extra": {"security": BEARER, **extra}}


def _query_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


#: STOW-RS (PS3.18 10.5): 200 all stored, 202 some, 409 none (each with the response module).
_STOW = _route_docs(
    {s: {DICOM_JSON: _STORE_RESPONSE} for s in (200, 202, 409)},
    # 404: a study UID the mount cannot route (a line feed in it), as on every route below.
    (400, 401, 403, 404, 413, 415, 503),
    requestBody={
        "required": True,
        "content": {'multipart/related; type="application/dicom"': {"schema": _BINARY}},
    },
)
_INSTANCES = _route_docs({200: {"multipart/related": _BINARY}}, _READ_ERRORS)
_METADATA = _route_docs({200: {DICOM_JSON: _DATASETS}, 304: {}}, _READ_ERRORS)
_BULK = _route_docs({200: {"multipart/related": _BINARY}}, _READ_ERRORS)
_RENDERED = _route_docs(
    {200: {"image/jpeg": _BINARY, "image/png": _BINARY}},
    _READ_ERRORS,
    parameters=[
        _query_param("window", {"type": "string"}),
        _query_param("viewport", {"type": "string"}),
        _query_param("quality", {"type": "integer", "minimum": 1, "maximum": 100}),
    ],
)


def _qido(level: qido.Level) -> dict[str, Any]:
    """QIDO-RS at a level (PS3.18 10.6): its control parameters and the attributes it
    matches (those of the level and above)."""
    integer = {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER}
    matching = [a.keyword for a in qido.ATTRS if qido.level_at_most(a.level, level)]
    return _route_docs(
        {200: {DICOM_JSON: _DATASETS}},
        _READ_ERRORS,
        parameters=[
            _query_param("limit", integer),
            _query_param("offset", integer),
            _query_param("includefield", {"type": "string"}),
            _query_param("fuzzymatching", {"enum": ["true", "false"]}),
            *(_query_param(k, {"type": "string"}) for k in matching),
        ],
    )


class DicomwebApi:
    def __init__(self, imaging: Imaging, guard: Guard, settings: Settings) -> None:
        self.imaging = imaging
        self.guard = guard
        self.settings = settings

    @property
    def base(self) -> str:
        """The DICOMweb base of the links in this response (alliance.trace.public)."""
        return trace.public(self.settings.dicomweb_base)

    def app(self) -> FastAPI:
        """The face as an application to mount at `/dicomweb`, with CORS for the configured
        viewer origins. The caller installs the error handlers, so that errors here answer
        as everywhere else."""
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.include_router(self.router())
        app.add_middleware(ViewerCors, origins=self.settings.viewer_origin_list)
        return app

    def router(self) -> APIRouter:
        r = APIRouter(tags=["DICOMweb"])
        instance = "/studies/{study}/series/{series}/instances/{instance}"
        routes: list[tuple[str, str, Endpoint, dict[str, Any]]] = [
            ("/studies", "POST", self.stow, _STOW),
            ("/studies/{study}", "POST", self.stow, _STOW),
            ("/studies", "GET", self.search_studies, _qido("study")),
            ("/series", "GET", self.search_series, _qido("series")),
            ("/instances", "GET", self.search_instances, _qido("instance")),
            ("/studies/{study}/series", "GET", self.search_series, _qido("series")),
            ("/studies/{study}/instances", "GET", self.search_instances, _qido("instance")),
            (
                "/studies/{study}/series/{series}/instances",
                "GET",
                self.search_instances,
                _qido("instance"),
            ),
            ("/studies/{study}", "GET", self.retrieve, _INSTANCES),
            ("/studies/{study}/series/{series}", "GET", self.retrieve, _INSTANCES),
            (instance, "GET", self.retrieve, _INSTANCES),
            ("/studies/{study}/metadata", "GET", self.metadata, _METADATA),
            ("/studies/{study}/series/{series}/metadata", "GET", self.metadata, _METADATA),
            (f"{instance}/metadata", "GET", self.metadata, _METADATA),
            (f"{instance}/frames/{{frames}}", "GET", self.frames, _BULK),
            (f"{instance}/rendered", "GET", self.rendered, _RENDERED),
            (f"{instance}/frames/{{frames}}/rendered", "GET", self.rendered, _RENDERED),
            (f"{instance}/thumbnail", "GET", self.thumbnail, _RENDERED),
            (f"{instance}/frames/{{frames}}/thumbnail", "GET", self.thumbnail, _RENDERED),
            ("/studies/{study}/thumbnail", "GET", self.thumbnail, _RENDERED),
            ("/studies/{study}/series/{series}/thumbnail", "GET", self.thumbnail, _RENDERED),
            (f"{instance}/bulkdata/{{path:path}}", "GET", self.bulkdata, _BULK),
        ]
        for path, method, endpoint, docs in routes:
            extra = {**docs["openapi_extra"]}
            extra["parameters"] = path_parameters(path) + extra.get("parameters", [])
            r.add_api_route(
                path,
                by_path(endpoint),
                methods=[method],
                response_class=Response,
                status_code=200,
                responses=docs["responses"],
                openapi_extra=extra,
            )
        return r

    async def _read(
        self,
        request: Request,
        interaction: Interaction,
        work: Callable[[Session, Context], Found],
        scope: str = "read",
    ) -> Any:
        found: Found = await self.guard.run(
            request,
            interaction,
            work,
            lambda f: f.touched,
            check=lambda p: p.check_scope("ImagingStudy", scope),
        )
        return found.value

    # ---- STOW-RS (PS3.18 10.5) -------------------------------------------------------

    async def stow(self, request: Request, study: str | None = None) -> Response:
        interaction = Interaction(
            "store", f"ImagingStudy/{study}" if study else None, type="transfer"
        )
        try:
            await run_in_threadpool(self._preflight, request)
            reader, body = self._reader(request)
        except AllianceError as exc:
            metrics.STOW_FAILURES.inc()
            await self._refuse(request, interaction, exc)
            raise  # unreachable: _refuse raises
        staged: list[Staged] = []
        outcomes: list[Outcome] = []
        try:
            await self._receive(body, reader, study, staged, outcomes)
            if not staged and not outcomes:
                raise BadRequest("the multipart body holds no instance")
        except AllianceError as exc:
            metrics.STOW_FAILURES.inc()
            reader.discard()
            await self._sweep(staged_key(s) for s in staged)
            await self._refuse(request, interaction, exc)
            raise
        except BaseException:
            reader.discard()
            await self._sweep(staged_key(s) for s in staged)
            raise

        def work(session: Session, ctx: Context) -> list[Outcome]:
            indexed = self.imaging.index(session, staged, hospital_id=ctx.principal.hospital_id)
            self.imaging.finish(session, {o.study_uid for o in indexed if o.ok and o.study_uid})
            everything = outcomes + indexed
            if not any(o.ok for o in everything):
                raise StowFailed(everything)
            return everything

        def touched(result: list[Outcome]) -> list[Touched]:
            seen: dict[str, Touched] = {}
            for o in result:
                if o.ok and o.study_uid:
                    seen[o.study_uid] = Touched(f"ImagingStudy/{o.study_uid}", o.patient_id)
            return list(seen.values())

        try:
            result = await self.guard.run(request, interaction, work, touched, check=may_store)
        except StowFailed as exc:
            await self._sweep(staged_key(s) for s in staged)
            _count_stow(exc.outcomes)
            return self._stow_response(exc.outcomes, study, exc.status)
        except BaseException:
            await self._sweep(staged_key(s) for s in staged)
            raise
        await self._sweep((o.study_uid, o.blob_key) for o in result if not o.ok)
        status = 200 if all(o.ok for o in result) else 202
        _count_stow(result)
        return self._stow_response(result, study, status)

    async def _sweep(self, keys: Iterable[tuple[str | None, str | None]]) -> None:
        unused = [(uid, key) for uid, key in keys if key is not None]
        if unused:
            await run_in_threadpool(self.imaging.sweep, unused)

    def _preflight(self, request: Request) -> Principal:
        """Who is storing, before a byte of the body is read: a bad token, a user who may not
        store, or a token without the scope is refused at once (and audited by `_refuse`)."""
        claims = self.guard.claims(request)
        with self.guard.db.transaction() as session:
            principal = principal_for(session, claims)
        may_store(principal)
        return principal

    def _reader(self, request: Request) -> tuple[MultipartReader, AsyncIterator[bytes]]:
        ctype = parse_media_type(request.headers.get("content-type", ""))
        if ctype.type != "multipart/related":
            raise UnsupportedMediaType(
                'STOW-RS takes multipart/related; type="application/dicom" (PS3.18 10.5.1)'
            )
        if (ctype.param("type") or dicom.MEDIA_TYPE) != dicom.MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"parts of type {ctype.param('type')} are not supported; send application/dicom"
            )
        body = read_limited(request, self.settings.max_stow_bytes)
        boundary = ctype.param("boundary")
        if not boundary:
            raise BadRequest("the multipart Content-Type names no boundary")
        reader = MultipartReader(
            boundary,
            max_parts=self.settings.max_stow_parts,
            sink=lambda: part_writer(self.imaging),
        )
        return reader, body

    async def _receive(
        self,
        body: AsyncIterator[bytes],
        reader: MultipartReader,
        study: str | None,
        staged: list[Staged],
        outcomes: list[Outcome],
    ) -> None:
        async for chunk in body:
            if not chunk:
                continue
            metrics.STOW_BYTES.inc(len(chunk))
            for part in await run_in_threadpool(reader.feed, chunk):
                result = await run_in_threadpool(stage_part, self.imaging, part, study)
                if isinstance(result, Staged):
                    staged.append(result)
                else:
                    outcomes.append(result)
        reader.close()

    async def _refuse(self, request: Request, interaction: Interaction, error: Exception) -> None:
        """Audit a refused interaction through the guard, then raise the error."""

        def fail(_session: Session, _ctx: Context) -> None:
            raise error

        await self.guard.run(request, interaction, fail, lambda _: [])

    def _stow_response(self, outcomes: list[Outcome], study: str | None, status: int) -> Response:
        body = stow_json(outcomes, study, self.base)
        headers = {}
        held = sorted({o.study_uid for o in outcomes if o.ok and o.study_uid and not o.patient_id})
        if held:
            # PS3.18 10.5.3 lets the response carry a Warning; a study that matched no patient
            # of the hospital is stored but held for reconciliation until it is linked to one.
            headers["Warning"] = (
                f'299 - "stored, but matched no patient of this hospital: held for '
                f'reconciliation: {", ".join(held)}"'
            )
        return Response(
            json.dumps(body, ensure_ascii=False), status, headers=headers, media_type=DICOM_JSON
        )

    # ---- QIDO-RS (PS3.18 10.6) -------------------------------------------------------

    async def search_studies(self, request: Request) -> Response:
        return await self._search(
            request,
            "study",
            lambda s, ctx, q: qido.search_studies(s, visible_studies(ctx), q, self.base),
        )

    async def search_series(self, request: Request, study: str | None = None) -> Response:
        return await self._search(
            request,
            "series",
            lambda s, ctx, q: qido.search_series(s, visible_studies(ctx), q, self.base, study),
        )

    async def search_instances(
        self, request: Request, study: str | None = None, series: str | None = None
    ) -> Response:
        def search(session: Session, ctx: Context, query: qido.Query) -> qido.Results:
            visible = visible_studies(ctx)
            return qido.search_instances(session, visible, query, self.base, study, series)

        return await self._search(request, "instance", search)

    async def _search(
        self,
        request: Request,
        level: qido.Level,
        search: Callable[[Session, Context, qido.Query], qido.Results],
    ) -> Response:
        wado.accepts_json(_accept(request))
        query = qido.parse_query(list(request.query_params.multi_items()), level)

        def work(session: Session, ctx: Context) -> Found:
            results = search(session, ctx, query)
            return Found(results.body, _touched(results.studies))

        interaction = Interaction("search", query=request.url.query or None, type="query")
        body = await self._read(request, interaction, work, "search-type")
        headers = {}
        if query.warnings:
            headers["Warning"] = ", ".join(f'299 alliance "{w}"' for w in query.warnings)
        return Response(
            json.dumps(body, ensure_ascii=False), 200, headers=headers, media_type=DICOM_JSON
        )

    # ---- WADO-RS (PS3.18 10.4) -------------------------------------------------------

    async def retrieve(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> Response:
        wanted = wado.instance_syntax(_accept(request))

        def work(session: Session, ctx: Context) -> Found:
            s = find_study(session, ctx, study)
            return Found(find_instances(session, s, series, instance), _touched([s]))

        rows: list[Instance] = await self._read(request, _retrieve(study), work)
        wado.check_syntax(rows, wanted)
        blobs = self.imaging.blobs
        await run_in_threadpool(wado.check_stored, blobs, rows)
        await run_in_threadpool(wado.try_transcode, blobs, rows, wanted)
        boundary = new_boundary()
        media = multipart_type(dicom.MEDIA_TYPE, boundary, wanted)
        body = wado.instances_body(blobs, rows, wanted, boundary)
        return StreamingResponse(body, media_type=media)

    async def metadata(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> Response:
        wado.accepts_json(_accept(request))

        def work(session: Session, ctx: Context) -> Found:
            s = find_study(session, ctx, study)
            return Found(wado.metadata(session, self.imaging, s, series, instance), _touched([s]))

        etag, packed = await self._read(request, _retrieve(study), work)
        quoted = f'"{etag}"'
        headers = {"ETag": quoted, "Vary": "Accept-Encoding", "Cache-Control": "private"}
        match = request.headers.get("if-none-match", "")
        if quoted in [m.strip() for m in match.split(",")] or match.strip() == "*":
            return Response(None, 304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
            return Response(packed, 200, headers=headers, media_type=DICOM_JSON)
        return Response(gzip.decompress(packed), 200, headers=headers, media_type=DICOM_JSON)

    async def _one_instance(
        self, request: Request, study: str, series: str, instance: str
    ) -> Instance:
        def work(session: Session, ctx: Context) -> Found:
            s = find_study(session, ctx, study)
            return Found(find_instances(session, s, series, instance)[0], _touched([s]))

        row: Instance = await self._read(request, _retrieve(study), work)
        return row

    async def frames(
        self, request: Request, study: str, series: str, instance: str, frames: str
    ) -> Response:
        numbers = wado.frame_numbers(frames)
        row = await self._one_instance(request, study, series, instance)
        decode, part_type = wado.frame_choice(_accept(request), row.transfer_syntax_uid)
        parts = await run_in_threadpool(
            wado.frames, self.imaging.blobs, row, numbers, decode, part_type
        )
        return _multipart(parts)

    async def rendered(
        self,
        request: Request,
        study: str,
        series: str,
        instance: str,
        frames: str | None = None,
    ) -> Response:
        media = wado.rendered_type(_accept(request))
        options = pixels.render_options(dict(request.query_params), media)
        number = wado.frame_numbers(frames)[0] if frames else 1
        row = await self._one_instance(request, study, series, instance)
        return await self._render(row, number, options)

    async def thumbnail(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> Response:
        media = wado.rendered_type(_accept(request))
        options = pixels.render_options(dict(request.query_params), media, thumbnail=True)
        number = wado.frame_numbers(frames)[0] if frames else 1

        def work(session: Session, ctx: Context) -> Found:
            s = find_study(session, ctx, study)
            rows = find_instances(session, s, series, instance)
            return Found(wado.thumbnail_source(rows, instance), _touched([s]))

        row: Instance = await self._read(request, _retrieve(study), work)
        return await self._render(row, number, options)

    async def _render(self, row: Instance, number: int, options: pixels.RenderOptions) -> Response:
        data = await run_in_threadpool(wado.render, self.imaging.blobs, row, number, options)
        return Response(data, media_type=options.media_type)

    async def bulkdata(
        self, request: Request, study: str, series: str, instance: str, path: str
    ) -> Response:
        wado.accepts_bulk(_accept(request))
        row = await self._one_instance(request, study, series, instance)
        parts = await run_in_threadpool(wado.bulk, self.imaging.blobs, row, path)
        return _multipart(parts)


def _multipart(parts: wado.Parts) -> Response:
    boundary = new_boundary()
    media = multipart_type(parts[0][0].split(";")[0], boundary)
    return StreamingResponse(multipart_bytes(boundary, parts), media_type=media)


class ViewerCors(CORSMiddleware):
    """CORS for the configured viewer origins (OHIF and the like run in a browser on another
    origin): the headers a viewer needs to read responses (ETag, Content-Type with the
    multipart boundary, Warning) are exposed. A preflight is answered 204 when allowed and 403
    when not, with no body either way."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Accept",
                "Content-Type",
                "If-None-Match",
                "Accept-Encoding",
            ],
            expose_headers=[
                "ETag",
                "Content-Type",
                "Content-Length",
                "Content-Location",
                "Warning",
            ],
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        allowed = answer.status_code == 200
        headers = {
            k: v
            for k, v in answer.headers.items()
            if allowed and (k.startswith("access-control-") or k == "vary")
        }
        return Response(None, 204 if allowed else 403, headers=headers)


def _count_stow(outcomes: list[Outcome]) -> None:
    """Count the instances of a STOW-RS request by outcome (`/metrics`)."""
    for o in outcomes:
        metrics.STOW_INSTANCES.labels(
            ("stored" if o.new else "duplicate") if o.ok else "failed"
        ).inc()
    if not any(o.ok for o in outcomes):
        metrics.STOW_FAILURES.inc()
