"""HTTP plumbing every face shares: reading a request body within a size limit.

A body over the limit is refused with 413 (RFC 9110 15.5.14) as early as it can be known: at
once when Content-Length declares too much, else as soon as the streamed bytes pass the limit
(a chunked body declares nothing), so a client cannot make the service hold or spool more than
the limit whatever it sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request

from alliance.errors import PayloadTooLarge


def read_limited(request: Request, limit: int, message: str | None = None) -> AsyncIterator[bytes]:
    """The request body as it arrives, at most `limit` bytes of it.

    The declared Content-Length is checked now, before anything is read; the stream raises
    `PayloadTooLarge` (with `message`) when the bytes received pass the limit. Callers that
    spool (STOW-RS) consume it chunk by chunk; callers that need the whole body join it.
    """
    text = message or f"the body is over the limit of {limit} bytes"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(text)
    return _limited(request.stream(), limit, text)


async def _limited(chunks: AsyncIterator[bytes], limit: int, text: str) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(text)
        yield chunk


async def read_body(request: Request, limit: int, message: str | None = None) -> bytes:
    """The whole request body, at most `limit` bytes (see `read_limited`)."""
    return b"".join([chunk async for chunk in read_limited(request, limit, message)])
