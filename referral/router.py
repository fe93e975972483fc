"""The referral domain's HTTP beyond FHIR: attachment upload and download (documented in
the API docs), and the alliance's referral figures."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from alliance.config import Settings
from alliance.errors import BadRequest, Forbidden, PayloadTooLarge
from alliance.security.access import Principal
from alliance.security.guard import Guard, Interaction, Touched
from alliance.storage import BlobStore
from referral.documents import fhir_attachment, readable_attachment, store_attachment
from referral.stats import Period, referral_figures


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


def _figures_readers(principal: Principal) -> None:
    if not principal.capabilities & {"audit", "administer"}:
        raise Forbidden("the alliance's figures are for auditors and administrators")


def _parse_day(value: str | None, default: date, name: str) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} is a date, YYYY-MM-DD") from None


def referral_router(guard: Guard, blobs: BlobStore, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["referral"])

    @router.post("/attachments", status_code=201)
    async def upload(request: Request) -> JSONResponse:
        """Upload a file (PDF, JPEG, PNG, TIFF or UTF-8 text) as the raw request body, with
        its Content-Type, and optionally `?title=`. Answers the FHIR Attachment to put in a
        DocumentReference or Consent (url, contentType, size, and its SHA-256 in an
        extension). Over `ALLIANCE_MAX_ATTACHMENT_BYTES`: 413; another type: 415."""
        limit = settings.max_attachment_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"attachments are at most {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"attachments are at most {limit} bytes")
            chunks.append(chunk)
        ctype = request.headers.get("content-type", "")
        title = request.query_params.get("title")

        def work(session: Any, ctx: Any) -> Any:
            if "clinical" not in ctx.principal.capabilities:
                raise Forbidden("only clinical staff attach documents")
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

    @router.get("/attachments/{attachment_id}")
    async def download(request: Request, attachment_id: str) -> Response:
        """The file, to those who may see a record that holds it (404 to everyone else)."""
        row = await guard.run(
            request,
            Interaction("read", f"Attachment/{attachment_id}"),
            lambda session, ctx: readable_attachment(
                session=session,
                principal=ctx.principal,
                attachment_id=attachment_id,
                base_url=settings.base_url,
            ),
            lambda r: [Touched(f"Attachment/{r.id}", None)],
        )
        chunks = blobs.open(row.blob_key)
        headers = {
            "Content-Length": str(row.size),
            "ETag": f'"{row.sha256}"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": "attachment",
        }
        return StreamingResponse(
            iterate_in_threadpool(chunks), media_type=row.content_type, headers=headers
        )

    @router.get("/stats/referrals")
    async def figures(request: Request) -> JSONResponse:
        """Referrals up and down per hospital pair and month (Beijing time), accepted /
        rejected / completed / cancelled, decline reasons, median and 90th-percentile
        (nearest rank) hours from request to acceptance and to completion, and how many are
        overdue now. `from` and `to` are days (YYYY-MM-DD, inclusive; default: the last 12
        months); `granularity=month`."""
        today = datetime.now(UTC).date()
        first = _parse_day(request.query_params.get("from"), today - timedelta(days=365), "from")
        last = _parse_day(request.query_params.get("to"), today, "to")
        if last < first:
            raise BadRequest("to is before from")
        if request.query_params.get("granularity", "month") != "month":
            raise BadRequest("granularity is month")
        period = Period.of_days(first, last)
        result = await guard.run(
            request,
            Interaction("search", query=request.url.query, type="query"),
            lambda session, _ctx: referral_figures(session, period),
            lambda _r: [Touched(None, None)],
            check=_figures_readers,
        )
        return JSONResponse(result)

    return router
