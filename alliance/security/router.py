"""`POST /auth/token`: the OAuth 2.0 token endpoint (RFC 6749 section 4.3 password grant for
people, section 4.4 client credentials for partner systems). Every attempt is audited."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from alliance.config import Settings
from alliance.db import Database
from alliance.http import BEARER, JSON_ERRORS, responses
from alliance.security.login import LoginRefused, log_in, log_out_everywhere
from alliance.security.signing import jwks
from alliance.security.tokens import missing_token

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(
    error: str, description: str, status: int = 400, retry_after: int | None = None
) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="alliance"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": error, "error_description": description}, status, headers=headers)


#: RFC 6749 5.1 and 5.2: what the token endpoint answers.
_TOKEN = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
}
_OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
_TOKEN_FORM = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"enum": ["password", "client_credentials"]},
        "username": {"type": "string"},
        "password": {"type": "string"},
        "scope": {"type": "string"},
        "client_id": {"type": "string"},
        "client_secret": {"type": "string"},
    },
}


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "", ""
        return client_id, secret
    return form.get("client_id", ""), form.get("client_secret", "")


def auth_router(db: Database, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/auth", tags=["auth"])

    @router.post(
        "/token",
        response_class=Response,
        responses=responses(
            {200: {"application/json": _TOKEN}},
            [400, 401, 429, 503],
            {"application/json": _OAUTH_ERROR},
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": _TOKEN_FORM}},
            }
        },
    )
    async def token(request: Request) -> JSONResponse:
        """OAuth 2.0 token endpoint. Form fields: `grant_type=password` with `username`,
        `password` and optional `scope` (SMART v2, e.g. `user/Patient.rs`), or
        `grant_type=client_credentials` with the client's id and secret (HTTP Basic or form).
        Answers `{access_token, token_type: "Bearer", expires_in, scope}`. Failed logins are
        throttled per account and per client address: a throttled attempt answers 429 with
        `Retry-After` and `invalid_grant` (`invalid_client` for client credentials)."""
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("application/x-www-form-urlencoded"):
            return _oauth_error(
                "invalid_request", "send the form as application/x-www-form-urlencoded"
            )
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        grant_type = form.get("grant_type", "")
        if grant_type == "password":
            username, password = form.get("username", ""), form.get("password", "")
            if not username or not password:
                return _oauth_error("invalid_request", "username and password are required")
        elif grant_type == "client_credentials":
            username, password = _client_credentials(request, form)
            if not username or not password:
                return _oauth_error("invalid_client", "client authentication is required", 401)
        else:
            return _oauth_error(
                "unsupported_grant_type", "grant_type is password or client_credentials"
            )
        try:
            issued = await run_in_threadpool(
                log_in,
                db,
                settings,
                grant_type=grant_type,
                username=username,
                secret=password,
                scope=form.get("scope", ""),
                address=request.client.host if request.client else None,
                agent=request.headers.get("user-agent"),
            )
        except LoginRefused as refused:
            return _oauth_error(
                refused.error, refused.description, refused.status, refused.retry_after
            )
        body = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": issued.claims.scope,
        }
        return JSONResponse(body, headers=_NO_STORE)

    @router.post(
        "/logout",
        status_code=204,
        response_class=Response,
        responses=responses({204: {}}, [401, 503], JSON_ERRORS),
        openapi_extra={"security": BEARER},
    )
    async def logout(request: Request) -> Response:
        """Log out with `Authorization: Bearer …`: every token and portal session of the
        token's account ends at once (204). A token already ended answers 401."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise missing_token()
        await run_in_threadpool(
            log_out_everywhere,
            db,
            settings,
            token.strip(),
            address=request.client.host if request.client else None,
            agent=request.headers.get("user-agent"),
        )
        return Response(status_code=204, headers=_NO_STORE)

    @router.get(
        "/jwks.json",
        response_class=Response,
        responses=responses({200: {"application/jwk-set+json": {"type": "object"}}}, [503]),
    )
    async def jwks_json() -> JSONResponse:
        """The public keys of the server's signatures (signed opinions, audit checkpoints) as
        a JWK Set (RFC 7517): every key that ever signed, kept for good. Public."""

        def read() -> dict[str, object]:
            with db.transaction() as session:
                return jwks(session)

        keys = await run_in_threadpool(read)
        return JSONResponse(
            keys,
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return router
