"""One guarded unit of work per interaction, for every face (FHIR, DICOMweb, portal).

It authenticates the bearer token, loads the principal, runs the work with the principal's
access rules, and appends the AuditEvents in the same transaction, so a write and its audit
commit together and a read's audit is committed before the response leaves (one transaction
instead of two: cheaper, and nothing is read that is not recorded). A denied or failed
interaction is audited too, in a transaction of its own. If the trail cannot be written, the
interaction fails with 503.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from alliance import trace
from alliance.audit.service import (
    AuditActor,
    AuditInput,
    actor_of,
    append,
    outcome_for_status,
    recordable,
)
from alliance.config import Settings
from alliance.db import Database
from alliance.errors import AllianceError, BadRequest, Forbidden, Unavailable
from alliance.fhir.registry import Registry, WriteCheck
from alliance.fhir.types import Visibility
from alliance.security import sessions
from alliance.security.access import Principal, check_write, visibility
from alliance.security.service import principal_for
from alliance.security.tokens import TokenClaims, missing_token, verify_token

log = logging.getLogger("alliance.audit")
T = TypeVar("T")

#: BALP subtype and DICOM action code of each interaction.
ACTIONS = {
    "read": "R",
    "vread": "R",
    "history": "R",
    "search": "E",
    "create": "C",
    "update": "U",
    "delete": "D",
    "retrieve": "R",
    "store": "C",
    "export": "R",
}


@dataclass(frozen=True)
class Touched:
    """A record an interaction touched: audited as the entity, with its patient."""

    entity: str | None
    patient_id: str | None


@dataclass(frozen=True)
class Context:
    """What the work of an interaction may use of the caller."""

    principal: Principal
    visible: Visibility
    authorize: WriteCheck


@dataclass(frozen=True)
class Interaction:
    """What is being done, for the audit trail."""

    subtype: str  # read, vread, history, search, create, update, delete, ...
    entity: str | None = None  # Type/id asked for, when there is one
    query: str | None = None  # a search's query string
    type: str = "rest"


def _refuse_nul(request: HTTPConnection) -> None:
    """A NUL character in the path or the query names nothing (no id, code or name holds one)
    and PostgreSQL cannot even compare text holding it: 400, audited like any refusal."""
    query = request.scope.get("query_string", b"")
    if "\x00" in request.scope.get("path", "") or b"%00" in query or b"\x00" in query:
        raise BadRequest("the request's address holds a NUL character")


class Guard:
    def __init__(self, db: Database, settings: Settings, registry: Registry) -> None:
        self.db = db
        self.settings = settings
        self.registry = registry

    def claims(self, request: HTTPConnection) -> TokenClaims:
        """The caller's token: a bearer token, or the portal's session cookie (same-origin
        browser requests, such as the image viewer's). A state-changing request made with the
        cookie must carry the session's CSRF token in the X-CSRF-Token header."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return verify_token(self.settings, token.strip())
        session = sessions.decode(self.settings, request.cookies.get(sessions.COOKIE))
        if session is None:
            raise missing_token()
        method = request.scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS") and not hmac.compare_digest(
            request.headers.get(sessions.CSRF_HEADER, ""), session.csrf
        ):
            raise Forbidden("the request lacks the session's CSRF token")
        return verify_token(self.settings, session.token)

    async def run(
        self,
        request: HTTPConnection,
        interaction: Interaction,
        work: Callable[[Session, Context], T],
        touched: Callable[[T], list[Touched]],
        *,
        check: Callable[[Principal], None] | None = None,
        claims: TokenClaims | None = None,
    ) -> T:
        """Run `work` for the request's principal and audit it; see the module docstring."""
        address = request.client.host if request.client else None
        agent = request.headers.get("user-agent")

        def event(
            actor: AuditActor | None, outcome: str, target: Touched, why: str | None
        ) -> AuditInput:
            return AuditInput(
                type=interaction.type,
                subtype=interaction.subtype,
                action=ACTIONS.get(interaction.subtype, "E"),
                outcome=outcome,
                actor=actor,
                client_address=address,
                entity=target.entity,
                patient_id=target.patient_id,
                query=interaction.query,
                description=why,
                user_agent=agent,
            )

        def unit() -> T:
            actor: AuditActor | None = None
            try:
                who = claims or self.claims(request)
                actor = actor_of(who)
                trace.note_actor(who.username, who.hospital_id)
                _refuse_nul(request)
                with self.db.transaction(write=True) as session:
                    principal = principal_for(session, who)
                    if check is not None:
                        check(principal)
                    ctx = Context(
                        principal,
                        visibility(principal, self.registry.get),
                        partial(check_write, principal),
                    )
                    value = work(session, ctx)
                    events = [
                        event(actor, "0", t, None)
                        for t in touched(value) or [Touched(interaction.entity, None)]
                    ]
                    self._append(session, events)
                return value
            except AllianceError as exc:
                if not isinstance(exc, Unavailable) or "audit" not in exc.message:
                    self._record_failure(
                        event(
                            actor,
                            outcome_for_status(exc.status),
                            Touched(interaction.entity, None),
                            exc.said,
                        )
                    )
                raise
            except Exception as exc:
                self._record_failure(
                    event(actor, "8", Touched(interaction.entity, None), f"internal error: {exc}")
                )
                raise

        return await run_in_threadpool(unit)

    def _append(self, session: Session, events: list[AuditInput]) -> None:
        try:
            append(session, events)
        except AllianceError:
            raise
        except Exception as exc:
            log.exception("the audit trail cannot be written")
            raise Unavailable("the audit trail cannot be written; nothing was done") from exc

    def _record_failure(self, failed: AuditInput) -> None:
        try:
            with self.db.transaction(write=True) as session:
                self._append(session, [failed])
        except Exception:
            # The interaction already failed; its own error is what the client hears. What the
            # caller sent is logged as the trail would have kept it: escaped and short.
            log.exception(
                "could not audit a failed interaction: %s %s by %s: %s",
                failed.subtype,
                recordable(failed.entity, 160),
                recordable(failed.actor.username if failed.actor else "anonymous", 64),
                recordable(failed.description, 200),
            )
