"""The HTTP face of uploaded files (documented in the API docs): upload, and download under the
sharing rule of alliance.attachments.service."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import iterate_in_threadpool

from alliance.attachments.models import Attachment
from alliance.attachments.service import (
    ACCEPTED_TYPES,
    fhir_attachment,
    readable_attachment,
    store_attachment,
)
from alliance.config import Settings
from alliance.http import BEARER, path_parameters, read_limited, responses
from alliance.security.guard import Context, Guard, Interaction, Touched
from alliance.storage import BlobStore


class _RequestStream:
    """The request body as a blocking file for the blob store (read in the worker thread)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while self._chunks and (size < 0 or len(self._buffer) < size):
            self._buffer += self._chunks.pop(0)
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


_DOWNLOAD = "/api/attachments/{attachment_id}"


#: What a download may be: an upload's type, or the server's own HTML (the signed opinion).
SERVED_TYPES = (*ACCEPTED_TYPES, "text/html")
#: What a browser shows in place (opened, printable) rather than saving: uploads of these
#: kinds are sniffed on upload, and HTML is only ever the server's own rendering.
SHOWN_IN_PLACE = {"application/pdf", "image/jpeg", "image/png", "text/plain", "text/html"}


def disposition(content_type: str, title: str | None) -> str:
    """RFC 6266: inline for what a browser shows safely, attachment for the rest, with the
    title as the file name (RFC 5987 UTF-8 encoding, so a Chinese title survives)."""
    kind = "inline" if content_type in SHOWN_IN_PLACE else "attachment"
    if not title:
        return kind
    extension = {"application/pdf": ".pdf", "text/html": ".html", "image/png": ".png"}.get(
        content_type, ""
    )
    return f"{kind}; filename*=UTF-8''{quote(title + extension, safe='')}"


def attachment_router(guard: Guard, blobs: BlobStore, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["attachments"])

    @router.post(
        "/attachments",
        status_code=201,
        response_class=Response,
        responses=responses(
            {201: {"application/json": {"type": "object"}}}, [400, 401, 403, 413, 415, 422, 503]
        ),
        openapi_extra={
            "security": BEARER,
            "parameters": [{"name": "title", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {
                "required": True,
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}} for t in ACCEPTED_TYPES
                },
            },
        },
    )
    async def upload(request: Request) -> JSONResponse:
        """Upload a file (PDF, JPEG, PNG, TIFF or UTF-8 text) as the raw request body, with
        its Content-Type, and optionally `?title=`. Answers the FHIR Attachment to put in a
        record of your own hospital (url, contentType, size, and its SHA-256 in an
        extension): a file is referenced only by records of the hospital that uploaded it.
        Over `ALLIANCE_MAX_ATTACHMENT_BYTES`: 413; another type: 415."""
        limit = settings.max_attachment_bytes
        too_large = f"attachments are at most {limit} bytes"
        chunks = [chunk async for chunk in read_limited(request, limit, too_large)]
        ctype = request.headers.get("content-type", "")
        title = request.query_params.get("title")

        def work(session: Session, ctx: Context) -> Attachment:
            return store_attachment(
                session=session,
                blobs=blobs,
                stream=_RequestStream(chunks),  # type: ignore[arg-type]
                content_type=ctype,
                title=title,
                principal=ctx.principal,
                max_bytes=limit,
            )

        row = await guard.run(
            request,
            Interaction("create", "Attachment"),
            work,
            lambda r: [Touched(f"Attachment/{r.id}", None)],
        )
        return JSONResponse(fhir_attachment(settings.base_url, row), 201)

    @router.get(
        _DOWNLOAD.removeprefix("/api"),
        response_class=Response,
        responses=responses(
            # What was uploaded, or the server's own rendering (the signed opinion, text/html).
            {200: {t: {"type": "string", "format": "binary"} for t in SERVED_TYPES}},
            [400, 401, 403, 404, 503],
        ),
        openapi_extra={"security": BEARER, "parameters": path_parameters(_DOWNLOAD)},
    )
    async def download(request: Request) -> Response:
        """The file, to those who may see in full a record that references it, with a token
        whose scopes allow reading that record's type (403 for a token that may read no
        clinical record; 404 to everyone else)."""
        attachment_id = request.path_params["attachment_id"]
        clinical = [d.type for d in guard.registry.definitions() if d.access == "clinical"]
        row = await guard.run(
            request,
            Interaction("read", f"Attachment/{attachment_id}"),
            lambda session, ctx: readable_attachment(
                session=session,
                principal=ctx.principal,
                attachment_id=attachment_id,
                base_url=settings.base_url,
                clinical_types=clinical,
            ),
            lambda r: [Touched(f"Attachment/{r.id}", None)],
        )
        chunks = blobs.open(row.blob_key)
        headers = {
            "Content-Length": str(row.size),
            "ETag": f'"{row.sha256}"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": disposition(row.content_type, row.title),
        }
        if row.content_type.startswith("text/"):
            # Nothing in a served page may run or load anything (the server's own HTML, the
            # signed opinion, carries only its inline style). Not for PDF: browsers refuse to
            # show a sandboxed PDF.
            headers["Content-Security-Policy"] = (
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
            )
        return StreamingResponse(
            iterate_in_threadpool(chunks), media_type=row.content_type, headers=headers
        )

    return router
