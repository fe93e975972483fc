"""`POST /auth/token`: the OAuth 2.0 token endpoint (RFC 6749 section 4.3 password grant for
people, section 4.4 client credentials for partner systems). Every attempt is audited."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from alliance.audit.service import MINOR_FAILURE, SUCCESS, Actor, AuditInput, append
from alliance.config import Settings
from alliance.db import Database
from alliance.errors import AllianceError
from alliance.security.service import (
    LoginFailure,
    authenticate,
    authenticate_client,
    token_claims,
)
from alliance.security.tokens import issue_token

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="alliance"'
    return JSONResponse({"error": error, "error_description": description}, status, headers=headers)


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

    @router.post("/token")
    async def token(request: Request) -> JSONResponse:
        """OAuth 2.0 token endpoint. Form fields: `grant_type=password` with `username`,
        `password` and optional `scope` (SMART v2, e.g. `user/Patient.rs`), or
        `grant_type=client_credentials` with the client's id and secret (HTTP Basic or form).
        Answers `{access_token, token_type: "Bearer", expires_in, scope}`."""
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("application/x-www-form-urlencoded"):
            return _oauth_error(
                "invalid_request", "send the form as application/x-www-form-urlencoded"
            )
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        grant_type = form.get("grant_type", "")
        address = request.client.host if request.client else None
        agent = request.headers.get("user-agent")
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
        scope = form.get("scope", "")

        def work() -> dict[str, Any] | tuple[str, str, int]:
            with db.transaction(write=True) as session:
                try:
                    if grant_type == "password":
                        account: Any = authenticate(
                            session=session,
                            settings=settings,
                            username=username,
                            password=password,
                        )
                    else:
                        account = authenticate_client(
                            session=session, client_id=username, secret=password
                        )
                    claims = token_claims(account, scope)
                except LoginFailure as failure:
                    user = failure.user
                    actor = Actor(
                        failure.username,
                        user.hospital_id if user else None,
                        user.role_name if user else None,
                        user.practitioner_id if user else None,
                        "client" if grant_type == "client_credentials" else "user",
                    )
                    append(
                        session,
                        [_login_event(actor, MINOR_FAILURE, failure.reason, address, agent)],
                    )
                    if grant_type == "client_credentials":
                        return ("invalid_client", "client authentication failed", 401)
                    return ("invalid_grant", "wrong user name or password, or locked", 400)
                except AllianceError as exc:
                    return ("invalid_scope", exc.message.removeprefix("invalid_scope: "), 400)
                actor = Actor(
                    claims.username,
                    claims.hospital_id,
                    claims.role,
                    claims.practitioner_id,
                    claims.kind,
                )
                append(
                    session,
                    [_login_event(actor, SUCCESS, f"token issued: {claims.scope}", address, agent)],
                )
                access_token, expires_in = issue_token(settings, claims)
                return {
                    "access_token": access_token,
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "scope": claims.scope,
                }

        result = await run_in_threadpool(work)
        if isinstance(result, tuple):
            return _oauth_error(*result)
        return JSONResponse(result, headers=_NO_STORE)

    return router


def _login_event(
    actor: Actor, outcome: str, description: str, address: str | None, agent: str | None
) -> AuditInput:
    return AuditInput(
        type="login",
        subtype="110122",  # DCM Login
        action="E",
        outcome=outcome,
        actor=actor,
        client_address=address,
        description=description,
        user_agent=agent,
    )
