"""Logging in: checking a person's password or a partner system's secret, audited either way,
and issuing the access token. Shared by the OAuth token endpoint and the portal's login."""

from __future__ import annotations

from dataclasses import dataclass

from alliance.audit.service import MINOR_FAILURE, SUCCESS, AuditActor, AuditInput, append
from alliance.config import Settings
from alliance.db import Database
from alliance.errors import AllianceError
from alliance.security.models import Client, User
from alliance.security.service import (
    LoginFailure,
    authenticate,
    authenticate_client,
    log_out,
    principal_for,
    token_claims,
)
from alliance.security.tokens import TokenClaims, issue_token, verify_token


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    claims: TokenClaims


class LoginRefused(Exception):
    """Why a login was refused, as OAuth 2.0 says it (RFC 6749 section 5.2)."""

    def __init__(
        self, error: str, description: str, status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        #: Set when throttled: 429 with `Retry-After` (RFC 6585 section 4).
        self.retry_after = retry_after


def log_in(
    db: Database,
    settings: Settings,
    *,
    grant_type: str,
    username: str,
    secret: str,
    scope: str = "",
    address: str | None = None,
    agent: str | None = None,
) -> Issued:
    """Check the credentials and issue a token; every attempt is in the audit trail (a
    failed one, with why, even though the caller hears only `invalid_grant`)."""
    kind = "client" if grant_type == "client_credentials" else "user"
    with db.transaction(write=True) as session:
        account: User | Client | None = None
        try:
            if "\x00" in username:
                # No account or client is named so, and PostgreSQL cannot even look for one.
                raise LoginFailure("the name holds a NUL character", username)
            if grant_type == "password":
                account = authenticate(
                    session=session,
                    settings=settings,
                    username=username,
                    password=secret,
                    address=address,
                )
            else:
                account = authenticate_client(
                    session=session,
                    settings=settings,
                    client_id=username,
                    secret=secret,
                    address=address,
                )
            claims = token_claims(account, scope)
        except (LoginFailure, AllianceError) as failure:
            user = failure.user if isinstance(failure, LoginFailure) else account
            actor = AuditActor(
                username,
                getattr(user, "hospital_id", None),
                getattr(user, "role_name", None),
                getattr(user, "practitioner_id", None),
                kind,
            )
            why = failure.reason if isinstance(failure, LoginFailure) else failure.message
            append(session, [_login_event(actor, MINOR_FAILURE, why, address, agent)])
            refused = _refusal(failure, kind)
        else:
            actor = AuditActor(
                claims.username, claims.hospital_id, claims.role, claims.practitioner_id, kind
            )
            append(
                session,
                [_login_event(actor, SUCCESS, f"token issued: {claims.scope}", address, agent)],
            )
            token, expires_in = issue_token(settings, claims)
            return Issued(token, expires_in, claims)
    raise refused


def log_out_everywhere(
    db: Database,
    settings: Settings,
    token: str,
    *,
    address: str | None = None,
    agent: str | None = None,
) -> TokenClaims:
    """Log out: every token and portal session of the token's account ends now (its token
    epoch moves on). Audited. An invalid or already revoked token raises 401."""
    claims = verify_token(settings, token)
    with db.transaction(write=True) as session:
        principal = principal_for(session, claims)
        log_out(session=session, principal=principal)
        actor = AuditActor(
            claims.username, claims.hospital_id, claims.role, claims.practitioner_id, claims.kind
        )
        append(
            session,
            [
                AuditInput(
                    type="login",
                    subtype="110123",  # DCM Logout
                    action="E",
                    outcome=SUCCESS,
                    actor=actor,
                    client_address=address,
                    description="logged out: every token and session of the account ended",
                    user_agent=agent,
                )
            ],
        )
    return claims


def _refusal(failure: Exception, kind: str) -> LoginRefused:
    if isinstance(failure, AllianceError):
        return LoginRefused("invalid_scope", failure.message.removeprefix("invalid_scope: "))
    if isinstance(failure, LoginFailure) and failure.retry_after:
        # Throttled: 429 Too Many Requests with Retry-After, and the error code RFC 6749
        # section 5.2 has for a refused grant (or client), so a client that knows only
        # RFC 6749 still reads it as a refusal.
        return LoginRefused(
            "invalid_client" if kind == "client" else "invalid_grant",
            f"too many failed logins; try again in {failure.retry_after} seconds",
            429,
            failure.retry_after,
        )
    if kind == "client":
        return LoginRefused("invalid_client", "client authentication failed", 401)
    return LoginRefused("invalid_grant", "wrong user name or password, or the account is locked")


def _login_event(
    actor: AuditActor, outcome: str, description: str, address: str | None, agent: str | None
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
