"""HTTP plumbing every face shares: reading a request body within a size limit, the methods a
path supports (the `Allow` of a 405), and how a route describes itself in the OpenAPI document.

A body over the limit is refused with 413 (RFC 9110 15.5.14) as early as it can be known: at
once when Content-Length declares too much, else as soon as the streamed bytes pass the limit
(a chunked body declares nothing), so a client cannot make the service hold or spool more than
the limit whatever it sends.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from alliance.errors import BadRequest, PayloadTooLarge
from alliance.numbers import whole_number


def read_limited(request: Request, limit: int, message: str | None = None) -> AsyncIterator[bytes]:
    """The request body as it arrives, at most `limit` bytes of it.

    The declared Content-Length is checked now, before anything is read; the stream raises
    `PayloadTooLarge` (with `message`) when the bytes received pass the limit. Callers that
    spool (STOW-RS) consume it chunk by chunk; callers that need the whole body join it.
    """
    text = message or f"the body is over the limit of {limit} bytes"
    header = request.headers.get("content-length")
    if header is not None:
        declared = whole_number(header, sys.maxsize)
        if declared is None:  # RFC 9112 6.3: an invalid Content-Length is a 400
            raise BadRequest("Content-Length is not a number of bytes")
        if declared > limit:
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


#: The methods `allowed_methods` asks about (RFC 9110 9.3, less CONNECT and TRACE, which no
#: route here serves).
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The `Allow` header value of a 405 (RFC 9110 15.5.6 and 10.2.1): every method some route
    serves at the request's path, whatever method was asked.

    A router answers 405 from the first route whose path matched, which knows only its own
    methods; a path served by several routes (GET, PUT and DELETE of one resource are three)
    supports all of theirs. Each method is asked of every route as the router would match it
    (an included router answers for its own routes); a mount is not asked, since it takes
    every method below its prefix."""
    routes = [r for r in routes if not isinstance(r, Mount)]
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return ", ".join(allowed)


# ---- the OpenAPI document (OpenAPI 3.1): what each route answers, truthfully ---------------

#: The body of an error outside FHIR, as `server.app` answers an `AllianceError` there.
ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
JSON_ERRORS: dict[str, dict[str, Any]] = {"application/json": ERROR_BODY}
#: An operation's `security`: a bearer token (`server.app` names the scheme `bearer`).
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

#: What a route answers with a status: its media types, each with its schema (empty: none).
Answers = Mapping[int, Mapping[str, dict[str, Any]]]


def responses(
    answers: Answers,
    errors: Iterable[int],
    error_body: Mapping[str, dict[str, Any]] = JSON_ERRORS,
) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` for the OpenAPI document (OpenAPI 3.1 4.8.16): each status it
    answers on success with its media types, and each error status with the face's error
    body. A status without media types answers with no body (204, 304)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status, media in [*answers.items(), *((e, error_body) for e in errors)]:
        entry: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if media:
            entry["content"] = {m: {"schema": schema} for m, schema in media.items()}
        documented[status] = entry
    return documented


_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def path_parameters(
    path: str, schemas: Mapping[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The path parameters of a route's template (`{rtype}`, `{path:path}`), as OpenAPI
    parameters: strings unless `schemas` says more (an enum of the types served)."""
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": (schemas or {}).get(name, {"type": "string"}),
        }
        for name in _PATH_PARAM.findall(path)
    ]


Endpoint = Callable[..., Awaitable[Response]]


def by_path(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """`endpoint(request, **path parameters)` as a route endpoint that takes the request
    alone. The framework then reads nothing else into it: a query parameter is never taken
    for an argument of the same name (`?series=` on a study's route), it answers no
    validation error of its own, and the route documents its parameters itself
    (`path_parameters`)."""

    async def route(request: Request) -> Response:
        return await endpoint(request, **request.path_params)

    route.__name__ = getattr(endpoint, "__name__", "route")
    route.__doc__ = endpoint.__doc__
    return route
