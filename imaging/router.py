"""The DICOMweb face at `/dicomweb` (PS3.18): STOW-RS, QIDO-RS and WADO-RS.

Every request runs through `Guard.run` (alliance.security.guard): the bearer token, the
principal, the access rules inside the queries, and one AuditEvent per study touched, with its
patient, written in the same transaction as the work. A study the caller may not see answers
404 on WADO-RS and is absent from QIDO-RS results, exactly as one that does not exist.

Bytes move outside the database transaction: STOW-RS receives and stores parts before its
indexing unit of work opens; WADO-RS decides what to send inside it and streams from the blob
store after it commits.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alliance.config import Settings
from alliance.errors import (
    AllianceError,
    BadRequest,
    Conflict,
    Forbidden,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from alliance.security.access import Principal
from alliance.security.guard import Context, Guard, Interaction, Touched
from alliance.security.service import principal_for
from imaging import dicom, pixels, qido
from imaging.access import reachable_studies
from imaging.dicom import Rejected, resolve_base
from imaging.models import Instance, Series, Study
from imaging.service import Imaging, Outcome, Staged
from imaging.web import (
    MediaRange,
    MultipartReader,
    Part,
    closing,
    multipart_bytes,
    multipart_type,
    new_boundary,
    parse_accept,
    parse_media_type,
    part_head,
)

DICOM_JSON = "application/dicom+json"
T = TypeVar("T")


@dataclass
class Found:
    """What a read found, and the studies it touched (for the audit trail)."""

    value: Any
    touched: list[Touched] = field(default_factory=list)


def _touched(study: Study) -> Touched:
    return Touched(f"ImagingStudy/{study.study_uid}", study.patient_id)


class StowFailed(Conflict):
    """No instance of a STOW-RS request was stored: audited as a failure, answered 409 with
    the FailedSOPSequence (PS3.18 10.5.3)."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        super().__init__("no instance was stored")
        self.outcomes = outcomes


class DicomwebApi:
    def __init__(self, imaging: Imaging, guard: Guard, settings: Settings) -> None:
        self.imaging = imaging
        self.guard = guard
        self.settings = settings

    @property
    def base(self) -> str:
        return self.settings.dicomweb_base

    def router(self) -> APIRouter:
        r = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])
        add = r.add_api_route
        add("/studies", self.stow, methods=["POST"])
        add("/studies/{study}", self.stow, methods=["POST"])
        add("/studies", self.search_studies, methods=["GET"])
        add("/series", self.search_series, methods=["GET"])
        add("/instances", self.search_instances, methods=["GET"])
        add("/studies/{study}/series", self.search_series, methods=["GET"])
        add("/studies/{study}/instances", self.search_instances, methods=["GET"])
        add("/studies/{study}/series/{series}/instances", self.search_instances, methods=["GET"])
        add("/studies/{study}", self.retrieve, methods=["GET"])
        add("/studies/{study}/series/{series}", self.retrieve, methods=["GET"])
        add("/studies/{study}/series/{series}/instances/{instance}", self.retrieve, methods=["GET"])
        add("/studies/{study}/metadata", self.metadata, methods=["GET"])
        add("/studies/{study}/series/{series}/metadata", self.metadata, methods=["GET"])
        instance = "/studies/{study}/series/{series}/instances/{instance}"
        add(f"{instance}/metadata", self.metadata, methods=["GET"])
        add(f"{instance}/frames/{{frames}}", self.frames, methods=["GET"])
        add(f"{instance}/rendered", self.rendered, methods=["GET"])
        add(f"{instance}/frames/{{frames}}/rendered", self.rendered, methods=["GET"])
        add(f"{instance}/thumbnail", self.thumbnail, methods=["GET"])
        add(f"{instance}/frames/{{frames}}/thumbnail", self.thumbnail, methods=["GET"])
        add("/studies/{study}/thumbnail", self.thumbnail, methods=["GET"])
        add("/studies/{study}/series/{series}/thumbnail", self.thumbnail, methods=["GET"])
        add(f"{instance}/bulkdata/{{path:path}}", self.bulkdata, methods=["GET"])
        return r

    # ---- guarded units of work -------------------------------------------------------

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

    def _studies(self, ctx: Context) -> Any:
        p = ctx.principal
        return reachable_studies(p.hospital_id, p.capabilities, ctx.visible)

    def _study(self, session: Session, ctx: Context, study_uid: str) -> Study:
        study: Study | None = session.scalars(
            self._studies(ctx).where(Study.study_uid == study_uid)
        ).first()
        if study is None:
            raise NotFound(f"study {study_uid} is not known")
        return study

    def _instances(
        self,
        session: Session,
        study: Study,
        series_uid: str | None = None,
        instance_uid: str | None = None,
    ) -> list[Instance]:
        query = select(Instance).where(Instance.study_uid == study.study_uid)
        if series_uid is not None:
            query = query.where(Instance.series_uid == series_uid)
        if instance_uid is not None:
            query = query.where(Instance.sop_instance_uid == instance_uid)
        rows = list(
            session.scalars(
                query.order_by(
                    Instance.series_uid, Instance.instance_number, Instance.sop_instance_uid
                )
            )
        )
        if not rows:
            what = instance_uid or series_uid or study.study_uid
            raise NotFound(f"{what} is not known")
        return rows

    # ---- STOW-RS (PS3.18 10.5) -------------------------------------------------------

    async def stow(self, request: Request, study: str | None = None) -> Response:
        interaction = Interaction(
            "store", f"ImagingStudy/{study}" if study else None, type="transfer"
        )
        try:
            await run_in_threadpool(self._preflight, request)
            reader = self._reader(request)
        except AllianceError as exc:
            await self._refuse(request, interaction, exc)
            raise  # unreachable: _refuse raises
        staged: list[Staged] = []
        outcomes: list[Outcome] = []
        try:
            await self._receive(request, reader, study, staged, outcomes)
            if not staged and not outcomes:
                raise BadRequest("the multipart body holds no instance")
        except AllianceError as exc:
            reader.discard()
            await run_in_threadpool(self.imaging.sweep, [_key(s) for s in staged])
            await self._refuse(request, interaction, exc)
            raise
        except BaseException:
            reader.discard()
            await run_in_threadpool(self.imaging.sweep, [_key(s) for s in staged])
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
            result = await self.guard.run(
                request,
                interaction,
                work,
                touched,
                check=_may_store,
            )
        except StowFailed as exc:
            await run_in_threadpool(self.imaging.sweep, [_key(s) for s in staged])
            return self._stow_response(exc.outcomes, study, 409)
        except BaseException:
            await run_in_threadpool(self.imaging.sweep, [_key(s) for s in staged])
            raise
        unused = [(o.study_uid, o.blob_key) for o in result if not o.ok and o.blob_key is not None]
        if unused:
            await run_in_threadpool(self.imaging.sweep, unused)
        status = 200 if all(o.ok for o in result) else 202
        return self._stow_response(result, study, status)

    def _preflight(self, request: Request) -> Principal:
        """Who is storing, before a byte of the body is read: a bad token, a user who may not
        store, or a token without the scope is refused at once (and audited by `_refuse`)."""
        claims = self.guard.claims(request)
        with self.guard.db.transaction() as session:
            principal = principal_for(session, claims)
        _may_store(principal)
        return principal

    def _reader(self, request: Request) -> MultipartReader:
        ctype = parse_media_type(request.headers.get("content-type", ""))
        if ctype.type != "multipart/related":
            raise UnsupportedMediaType(
                'STOW-RS takes multipart/related; type="application/dicom" (PS3.18 10.5.1)'
            )
        if (ctype.param("type") or "application/dicom") != "application/dicom":
            raise UnsupportedMediaType(
                f"parts of type {ctype.param('type')} are not supported; send application/dicom"
            )
        declared = request.headers.get("content-length")
        limit = self.settings.max_stow_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        boundary = ctype.param("boundary")
        if not boundary:
            raise BadRequest("the multipart Content-Type names no boundary")
        return MultipartReader(boundary)

    async def _receive(
        self,
        request: Request,
        reader: MultipartReader,
        study: str | None,
        staged: list[Staged],
        outcomes: list[Outcome],
    ) -> None:
        limit = self.settings.max_stow_bytes
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
            if not chunk:
                continue
            for part in await run_in_threadpool(reader.feed, chunk):
                result = await run_in_threadpool(self._stage_part, part, study)
                if isinstance(result, Staged):
                    staged.append(result)
                else:
                    outcomes.append(result)
        reader.close()

    def _stage_part(self, part: Part, study: str | None) -> Staged | Outcome:
        try:
            ctype = part.content_type or "application/dicom"
            if ctype != "application/dicom":
                return Outcome(dicom.CANNOT_UNDERSTAND, f"a part of type {ctype} is not DICOM")
            return self.imaging.stage(part.path, expected_study=study)
        except Rejected as exc:
            sop_class, sop_instance = _uids_of(part.path)
            return Outcome.rejected(exc, sop_class_uid=sop_class, sop_instance_uid=sop_instance)
        finally:
            part.discard()

    async def _refuse(self, request: Request, interaction: Interaction, error: Exception) -> None:
        """Audit a refused interaction through the guard, then raise the error."""

        def fail(_session: Session, _ctx: Context) -> None:
            raise error

        await self.guard.run(request, interaction, fail, lambda _: [])

    def _stow_response(self, outcomes: list[Outcome], study: str | None, status: int) -> Response:
        body: dict[str, Any] = {}
        studies = {o.study_uid for o in outcomes if o.ok and o.study_uid}
        target = study or (next(iter(studies)) if len(studies) == 1 else None)
        if target:
            body["00081190"] = {"vr": "UR", "Value": [f"{self.base}/studies/{target}"]}
        failed = [o for o in outcomes if not o.ok]
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": [_sop_item(o) for o in failed]}
        stored = [o for o in outcomes if o.ok]
        if stored:
            items = []
            for o in stored:
                item = _sop_item(o)
                item["00081190"] = {
                    "vr": "UR",
                    "Value": [
                        f"{self.base}/studies/{o.study_uid}/series/{o.series_uid}"
                        f"/instances/{o.sop_instance_uid}"
                    ],
                }
                items.append(dict(sorted(item.items())))
            body["00081199"] = {"vr": "SQ", "Value": items}
        return Response(
            json.dumps(dict(sorted(body.items())), ensure_ascii=False),
            status,
            media_type=DICOM_JSON,
        )

    # ---- QIDO-RS (PS3.18 10.6) -------------------------------------------------------

    async def search_studies(self, request: Request) -> Response:
        _accept_json(request)
        query = qido.parse_query(list(request.query_params.multi_items()), "study")

        def work(session: Session, ctx: Context) -> Found:
            rows = list(
                session.scalars(
                    qido.ordered_studies(self._studies(ctx).where(*query.conditions))
                    .limit(query.limit)
                    .offset(query.offset)
                )
            )
            body = [qido.study_json(s, query, self.base) for s in rows]
            return Found(body, [_touched(s) for s in rows])

        body = await self._read(request, self._query_interaction(request), work, "search-type")
        return self._qido_response(body, query)

    async def search_series(self, request: Request, study: str | None = None) -> Response:
        _accept_json(request)
        query = qido.parse_query(list(request.query_params.multi_items()), "series")
        scoped: set[qido.Level] = {"study"} if study else set()

        def work(session: Session, ctx: Context) -> Found:
            visible = self._studies(ctx)
            if study is not None:
                visible = visible.where(Study.study_uid == study)
            sub = visible.with_only_columns(Study.study_uid).subquery()
            statement = (
                select(Series, Study)
                .join(Study, Study.study_uid == Series.study_uid)
                .where(Series.study_uid.in_(select(sub.c.study_uid)), *query.conditions)
                .order_by(Study.study_uid, Series.series_number, Series.series_uid)
                .limit(query.limit)
                .offset(query.offset)
            )
            rows = list(session.execute(statement).tuples())
            body = [qido.series_json(se, st, query, self.base, scoped) for se, st in rows]
            return Found(body, _unique_touched(st for _, st in rows))

        body = await self._read(request, self._query_interaction(request), work, "search-type")
        return self._qido_response(body, query)

    async def search_instances(
        self, request: Request, study: str | None = None, series: str | None = None
    ) -> Response:
        _accept_json(request)
        query = qido.parse_query(list(request.query_params.multi_items()), "instance")
        scoped: set[qido.Level] = set()
        if study:
            scoped.add("study")
        if series:
            scoped.add("series")

        def work(session: Session, ctx: Context) -> Found:
            visible = self._studies(ctx)
            if study is not None:
                visible = visible.where(Study.study_uid == study)
            sub = visible.with_only_columns(Study.study_uid).subquery()
            statement = (
                select(Instance, Series, Study)
                .join(Series, Series.series_uid == Instance.series_uid)
                .join(Study, Study.study_uid == Instance.study_uid)
                .where(Instance.study_uid.in_(select(sub.c.study_uid)), *query.conditions)
            )
            if series is not None:
                statement = statement.where(Instance.series_uid == series)
            statement = (
                statement.order_by(
                    Study.study_uid,
                    Series.series_number,
                    Series.series_uid,
                    Instance.instance_number,
                    Instance.sop_instance_uid,
                )
                .limit(query.limit)
                .offset(query.offset)
            )
            rows = list(session.execute(statement).tuples())
            body = [qido.instance_json(i, se, st, query, self.base, scoped) for i, se, st in rows]
            return Found(body, _unique_touched(st for _, _, st in rows))

        body = await self._read(request, self._query_interaction(request), work, "search-type")
        return self._qido_response(body, query)

    def _query_interaction(self, request: Request) -> Interaction:
        return Interaction("search", query=request.url.query or None, type="query")

    def _qido_response(self, body: list[dict[str, Any]], query: qido.Query) -> Response:
        headers = {}
        if query.warnings:
            headers["Warning"] = ", ".join(f'299 alliance "{w}"' for w in query.warnings)
        return Response(
            json.dumps(body, ensure_ascii=False), 200, headers=headers, media_type=DICOM_JSON
        )

    # ---- WADO-RS retrieve (PS3.18 10.4.1.1.1) ----------------------------------------

    async def retrieve(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> Response:
        wanted = _dicom_syntax(request)

        def work(session: Session, ctx: Context) -> Found:
            s = self._study(session, ctx, study)
            rows = self._instances(session, s, series, instance)
            return Found(rows, [_touched(s)])

        rows: list[Instance] = await self._read(
            request, Interaction("retrieve", _entity(study), type="transfer"), work
        )
        if wanted not in (None, "*"):
            for row in rows:
                if row.transfer_syntax_uid != wanted and wanted != dicom.EXPLICIT_VR_LE:
                    raise NotAcceptable(
                        f"instances are available as stored ({row.transfer_syntax_uid}) "
                        f"or in {dicom.EXPLICIT_VR_LE}, not {wanted}"
                    )
        boundary = new_boundary()
        blobs = self.imaging.blobs

        def body() -> Iterator[bytes]:
            first = True
            for row in rows:
                if wanted in (None, "*") or row.transfer_syntax_uid == wanted:
                    ts = row.transfer_syntax_uid
                    yield part_head(boundary, f"application/dicom; transfer-syntax={ts}", first)
                    with blobs.open(row.blob_key) as chunks:
                        yield from chunks
                else:
                    with _local_copy(blobs, row.blob_key) as path:
                        data = pixels.explicit_little_endian(path)
                    yield part_head(boundary, f"application/dicom; transfer-syntax={wanted}", first)
                    yield data
                first = False
            yield closing(boundary)

        if wanted not in (None, "*") and any(r.transfer_syntax_uid != wanted for r in rows):
            # Transcoding can fail (no decoder): do the first one before the 200 is sent.
            with _local_copy(blobs, rows[0].blob_key) as path:
                await run_in_threadpool(pixels.explicit_little_endian, path)
        media = multipart_type("application/dicom", boundary, wanted)
        return StreamingResponse(body(), media_type=media)

    # ---- WADO-RS metadata (PS3.18 10.4.1.1.2) ----------------------------------------

    async def metadata(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> Response:
        _accept_json(request)
        base = self.base
        imaging = self.imaging

        def work(session: Session, ctx: Context) -> Found:
            s = self._study(session, ctx, study)
            if instance is not None:
                one = self._instances(session, s, series, instance)[0]
                text = resolve_base(b"[" + dicom.decompress_json(one.metadata_z) + b"]", base)
                digest = hashlib.sha256(text).hexdigest()[:32]
                return Found((digest, gzip.compress(text, 6, mtime=0)), [_touched(s)])
            query = select(Series).where(Series.study_uid == s.study_uid)
            if series is not None:
                query = query.where(Series.series_uid == series)
            rows = list(session.scalars(query.order_by(Series.series_number, Series.series_uid)))
            if not rows:
                raise NotFound(f"{series or study} is not known")
            for row in rows:
                if row.metadata_gz is None or row.metadata_base != base:
                    imaging.build_series_metadata(session, row)
            if len(rows) == 1:
                assert rows[0].metadata_gz is not None and rows[0].metadata_etag is not None
                return Found((rows[0].metadata_etag, rows[0].metadata_gz), [_touched(s)])
            arrays = [gzip.decompress(r.metadata_gz or b"")[1:-1] for r in rows]
            text = b"[" + b",".join(a for a in arrays if a) + b"]"
            joined = hashlib.sha256("".join(r.metadata_etag or "" for r in rows).encode())
            return Found((joined.hexdigest()[:32], gzip.compress(text, 6, mtime=0)), [_touched(s)])

        etag, packed = await self._read(
            request, Interaction("retrieve", _entity(study), type="transfer"), work
        )
        quoted = f'"{etag}"'
        headers = {"ETag": quoted, "Vary": "Accept-Encoding", "Cache-Control": "private"}
        match = request.headers.get("if-none-match", "")
        if quoted in [m.strip() for m in match.split(",")] or match.strip() == "*":
            return Response(None, 304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
            return Response(packed, 200, headers=headers, media_type=DICOM_JSON)
        return Response(gzip.decompress(packed), 200, headers=headers, media_type=DICOM_JSON)

    # ---- WADO-RS frames, rendered, thumbnail, bulk data ----------------------------

    async def _one_instance(
        self, request: Request, study: str, series: str, instance: str
    ) -> Instance:
        def work(session: Session, ctx: Context) -> Found:
            s = self._study(session, ctx, study)
            return Found(self._instances(session, s, series, instance)[0], [_touched(s)])

        row: Instance = await self._read(
            request, Interaction("retrieve", _entity(study), type="transfer"), work
        )
        return row

    async def frames(
        self, request: Request, study: str, series: str, instance: str, frames: str
    ) -> Response:
        numbers = _frame_numbers(frames)
        row = await self._one_instance(request, study, series, instance)
        stored = row.transfer_syntax_uid
        decode, part_type = _frame_choice(parse_accept(request.headers.get("accept")), stored)

        def build() -> list[tuple[str, bytes]]:
            with _local_copy(self.imaging.blobs, row.blob_key) as path:
                ds = pixels.read(path)
                pixels.check_frames(ds, numbers)
                parts = []
                for n in numbers:
                    if decode:
                        data = (
                            pixels.stored_frame(ds, path, n)
                            if stored in pixels.UNCOMPRESSED
                            else pixels.decoded_frame(path, n)
                        )
                        ctype = f"application/octet-stream; transfer-syntax={dicom.EXPLICIT_VR_LE}"
                    else:
                        data = pixels.stored_frame(ds, path, n)
                        ctype = f"{part_type}; transfer-syntax={stored}"
                    parts.append((ctype, data))
                return parts

        parts = await run_in_threadpool(build)
        boundary = new_boundary()
        media = multipart_type(parts[0][0].split(";")[0], boundary)
        return StreamingResponse(multipart_bytes(boundary, parts), media_type=media)

    async def rendered(
        self,
        request: Request,
        study: str,
        series: str,
        instance: str,
        frames: str | None = None,
    ) -> Response:
        media = _rendered_type(request)
        options = pixels.render_options(dict(request.query_params), media)
        number = _frame_numbers(frames)[0] if frames else 1
        row = await self._one_instance(request, study, series, instance)
        return await self._render(row, number, options)

    async def _render(self, row: Instance, number: int, options: pixels.RenderOptions) -> Response:
        def build() -> bytes:
            with _local_copy(self.imaging.blobs, row.blob_key) as path:
                ds = pixels.read(path)
                pixels.check_frames(ds, [number])
                return pixels.render(path, number, options)

        data = await run_in_threadpool(build)
        return Response(data, media_type=options.media_type)

    async def thumbnail(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> Response:
        media = _rendered_type(request)
        options = pixels.render_options(dict(request.query_params), media, thumbnail=True)
        number = _frame_numbers(frames)[0] if frames else 1

        def work(session: Session, ctx: Context) -> Found:
            s = self._study(session, ctx, study)
            rows = [r for r in self._instances(session, s, series, instance) if r.rows]
            if not rows:
                raise NotFound("no image to make a thumbnail of")
            if instance is None:
                first = rows[0].series_uid
                rows = [r for r in rows if r.series_uid == first]
            return Found(rows[len(rows) // 2], [_touched(s)])

        row: Instance = await self._read(
            request, Interaction("retrieve", _entity(study), type="transfer"), work
        )
        return await self._render(row, number, options)

    async def bulkdata(
        self, request: Request, study: str, series: str, instance: str, path: str
    ) -> Response:
        accept = parse_accept(request.headers.get("accept"))
        if not any(
            r.type in ("*/*", "multipart/*")
            or (
                r.type == "multipart/related"
                and (r.param("type") or "application/octet-stream")
                in ("application/octet-stream", "*/*")
            )
            or r.type == "application/octet-stream"
            for r in accept
        ):
            raise NotAcceptable(
                'bulk data is served as multipart/related; type="application/octet-stream"'
            )
        row = await self._one_instance(request, study, series, instance)
        key = path.strip("/").upper()

        def build() -> list[tuple[str, bytes]]:
            with _local_copy(self.imaging.blobs, row.blob_key) as local:
                if key == "7FE00010":
                    ds = pixels.read(local)
                    pixels.check_frames(ds, [1])
                    ts = row.transfer_syntax_uid
                    if ts in pixels.UNCOMPRESSED:
                        return [("application/octet-stream", bytes(ds.PixelData))]
                    count = pixels.number_of_frames(ds)
                    media = pixels.media_type_of(ts)
                    return [
                        (f"{media}; transfer-syntax={ts}", pixels.stored_frame(ds, local, n))
                        for n in range(1, count + 1)
                    ]
                value, _vr = pixels.bulk_value(local, path)
                return [("application/octet-stream", value)]

        parts = await run_in_threadpool(build)
        boundary = new_boundary()
        media = multipart_type(parts[0][0].split(";")[0], boundary)
        return StreamingResponse(multipart_bytes(boundary, parts), media_type=media)


# ---- helpers -------------------------------------------------------------------------------


def _may_store(principal: Principal) -> None:
    principal.check_scope("ImagingStudy", "create")
    if "clinical" not in principal.capabilities:
        raise Forbidden(f"the role {principal.role} does not store imaging")


def _key(staged: Staged) -> tuple[str | None, str | None]:
    return staged.parsed.study_uid, staged.blob.key


def _entity(study: str) -> str:
    return f"ImagingStudy/{study}"


def _unique_touched(studies: Any) -> list[Touched]:
    seen: dict[str, Touched] = {}
    for s in studies:
        seen.setdefault(s.study_uid, _touched(s))
    return list(seen.values())


def _sop_item(o: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if o.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [o.sop_class_uid]}
    if o.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [o.sop_instance_uid]}
    if not o.ok:
        item["00081197"] = {"vr": "US", "Value": [o.status]}
    return item


def _uids_of(path: Path) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs of a refused file, from its file meta if readable, so the
    FailedSOPSequence can name it."""
    try:
        meta = read_file_meta_info(str(path))
    except Exception:
        return None, None
    found = [
        str(meta.get(k) or "") for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
    ]
    return tuple(u if dicom.valid_uid(u) else None for u in found)  # type: ignore[return-value]


def _accept_json(request: Request) -> None:
    ranges = parse_accept(request.headers.get("accept"))
    if not any(
        r.type in ("*/*", "application/*", "application/dicom+json", "application/json")
        for r in ranges
    ):
        raise NotAcceptable("this server answers searches and metadata in application/dicom+json")


def _dicom_syntax(request: Request) -> str | None:
    """The transfer syntax asked for instances: None (as stored), "*", or a UID; 406 when
    the Accept header allows no multipart/related application/dicom."""
    for r in parse_accept(request.headers.get("accept")):
        if r.type in ("*/*", "multipart/*"):
            return None
        if r.type == "multipart/related" and (r.param("type") or "application/dicom") in (
            "application/dicom",
            "*/*",
        ):
            ts = r.param("transfer-syntax")
            if ts in (None, "*") or dicom.valid_uid(ts):
                return ts
    raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')


def _frame_numbers(text: str | None) -> list[int]:
    parts = [p.strip() for p in (text or "").split(",")]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise BadRequest("frame numbers are positive integers separated by commas")
    return [int(p) for p in parts]


def _frame_choice(accept: list[MediaRange], stored: str) -> tuple[bool, str]:
    """(decode to uncompressed?, part media type) for frames (PS3.18 8.7.3.3.2)."""
    native = stored in pixels.UNCOMPRESSED
    own = pixels.media_type_of(stored)
    for r in accept:
        part = r.param("type") if r.type == "multipart/related" else None
        ts = r.param("transfer-syntax")
        if r.type == "*/*" and r.param("type") is None:
            return True, "application/octet-stream"  # the default: uncompressed (8.7.3.5)
        if r.type not in ("multipart/related", "multipart/*"):
            continue
        part = part or "application/octet-stream"
        if part in ("*/*", "*"):
            return native, own if not native else "application/octet-stream"
        if part == "application/octet-stream":
            if ts in (None, dicom.EXPLICIT_VR_LE):
                return True, part
            if ts == "*":
                return native, "application/octet-stream" if native else own
            if ts == stored:
                return False, part
            continue
        if part == own and ts in (None, "*", stored):
            return False, own
    raise NotAcceptable(
        f"frames of this instance are available as {own} ({stored}) or as "
        "application/octet-stream (uncompressed)"
    )


def _rendered_type(request: Request) -> str:
    for r in parse_accept(request.headers.get("accept")):
        if r.type in ("*/*", "image/*", "image/jpeg"):
            return "image/jpeg"
        if r.type == "image/png":
            return "image/png"
    raise NotAcceptable("rendered images are served as image/jpeg or image/png")


@contextlib.contextmanager
def _local_copy(blobs: Any, key: str) -> Iterator[Path]:
    """The blob copied to a temporary file (pydicom reads files; the blob may be in S3)."""
    with tempfile.NamedTemporaryFile(prefix="wado-", suffix=".dcm") as handle:
        with blobs.open(key) as chunks:
            for chunk in chunks:
                handle.write(chunk)
        handle.flush()
        yield Path(handle.name)


# ---- CORS for viewers (Fetch standard, CORS protocol) --------------------------------------


class DicomwebCors:
    """CORS on `/dicomweb` only, for the configured viewer origins (OHIF and the like run in a
    browser on another origin). Preflights are answered here; other responses get the headers
    a viewer needs to read them (ETag, Content-Type with the multipart boundary, Warning)."""

    def __init__(self, app: ASGIApp, origins: list[str], prefix: str = "/dicomweb") -> None:
        self.app = app
        self.origins = set(origins)
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        allowed = origin is not None and origin.rstrip("/") in self.origins
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            status = 204 if allowed else 403
            extra = self._headers(origin) if allowed and origin else []
            if allowed:
                extra += [
                    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (
                        b"access-control-allow-headers",
                        b"Authorization, Accept, Content-Type, If-None-Match, Accept-Encoding",
                    ),
                    (b"access-control-max-age", b"600"),
                ]
            await send({"type": "http.response.start", "status": status, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return
        if not allowed or origin is None:
            await self.app(scope, receive, send)
            return
        cors = self._headers(origin)

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, with_cors)

    @staticmethod
    def _headers(origin: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
            (
                b"access-control-expose-headers",
                b"ETag, Content-Type, Content-Length, Content-Location, Warning",
            ),
        ]
