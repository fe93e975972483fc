"""One guarded unit of work per interaction, for every face (FHIR, DICOMweb, portal).

It authenticates the bearer token, loads the principal, runs the work with the principal's
access rules, and appends the AuditEvents:

- A write appends them in its own transaction, so the write and its audit commit together.
- A read (read, vread, history, search: `READS`) runs in a read-only transaction that takes
  no lock, then hands its AuditEvents to the trail's group commit
  (alliance.audit.service.GroupCommit), which appends the events of all concurrent reads as
  one batch under the chain's lock, for as short as one statement and its commit. The response
  leaves only once its batch has committed, so nothing is read that is not recorded, and a
  crash loses no record of an answered request. Readers no longer queue behind each other for
  the chain's lock from their first statement to their commit (the service was serialised).
  A read that turns out to write (the owner opening a requested referral marks it received)
  is run again as a write.

A denied or failed interaction is audited too. If the trail cannot be written, the
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
    AUDIT_UNAVAILABLE,
    AuditActor,
    AuditInput,
    GroupCommit,
    actor_of,
    append,
    outcome_for_status,
    recordable,
)
from alliance.config import Settings
from alliance.db import Database, WriteAttempted
from alliance.errors import AllianceError, BadRequest, Forbidden, Unavailable
from alliance.fhir.registry import Registry, WriteCheck
from alliance.fhir.types import Visibility
from alliance.security import sessions
from alliance.security.access import Principal, check_write, visibility
from alliance.security.service import principal_for
from alliance.security.tokens import TokenClaims, VerifiedTokens, missing_token

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
#: Interactions that only read (FHIR R4 http.html: read, vread, history, search): their work
#: runs read-only and their audit goes through the group commit.
READS = frozenset({"read", "vread", "history", "search"})


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
        self.trail = GroupCommit(db)
        self.tokens = VerifiedTokens()

    def claims(self, request: HTTPConnection) -> TokenClaims:
        """The caller's token: a bearer token, or the portal's session cookie (same-origin
        browser requests, such as the image viewer's). A state-changing request made with the
        cookie must carry the session's CSRF token in the X-CSRF-Token header."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return self.tokens.verify(self.settings, token.strip())
        session = sessions.decode(self.settings, request.cookies.get(sessions.COOKIE))
        if session is None:
            raise missing_token()
        method = request.scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS") and not hmac.compare_digest(
            request.headers.get(sessions.CSRF_HEADER, ""), session.csrf
        ):
            raise Forbidden("the request lacks the session's CSRF token")
        return self.tokens.verify(self.settings, session.token)

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

        def guarded(session: Session, actor: AuditActor | None, who: TokenClaims) -> T:
            """The work for the principal, with its AuditEvents queued in `done`."""
            principal = principal_for(session, who)
            if check is not None:
                check(principal)
            ctx = Context(
                principal,
                visibility(principal, self.registry.get),
                partial(check_write, principal),
            )
            value = work(session, ctx)
            done[:] = [
                event(actor, "0", t, None)
                for t in touched(value) or [Touched(interaction.entity, None)]
            ]
            return value

        done: list[AuditInput] = []

        def unit() -> T:
            actor: AuditActor | None = None
            try:
                who = claims or self.claims(request)
                actor = actor_of(who)
                trace.note_actor(who.username, who.hospital_id)
                _refuse_nul(request)
                if interaction.subtype in READS:
                    try:
                        with self.db.transaction(read_only=True) as session:
                            value = guarded(session, actor, who)
                    except WriteAttempted:
                        pass  # it writes after all: below, as a write
                    else:
                        self.trail.append(done)
                        return value
                with self.db.transaction(write=True) as session:
                    value = guarded(session, actor, who)
                    self._append(session, done)
                return value
            except AllianceError as exc:
                if not isinstance(exc, Unavailable) or exc.message != AUDIT_UNAVAILABLE:
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
            raise Unavailable(AUDIT_UNAVAILABLE) from exc

    def _record_failure(self, failed: AuditInput) -> None:
        try:
            self.trail.append([failed])
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
