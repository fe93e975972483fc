"""The auditor's HTTP face beyond FHIR AuditEvent search: a CSV export of a search of the
trail, and verification of the hash chain. Both are audited themselves."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from alliance.audit.anchor import TrailResult, verify_trail
from alliance.audit.service import audit_conditions, search_events
from alliance.errors import Forbidden, PayloadTooLarge
from alliance.fhir.search import parse_search
from alliance.http import BEARER, responses
from alliance.security.access import Principal
from alliance.security.guard import Context, Guard, Interaction, Touched
from alliance.storage import BlobStore

#: The most records one export holds; a larger one asks the auditor to narrow the period.
MAX_EXPORT_ROWS = 100_000
CSV_COLUMNS = (
    "seq",
    "recorded",
    "type",
    "subtype",
    "action",
    "outcome",
    "username",
    "hospital_id",
    "role",
    "client_address",
    "entity",
    "patient_id",
    "hash",
    "description",
)


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV Injection"):
#: `=`, `+`, `-`, `@`, and tab and carriage return, which some programs skip before looking.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A value as a CSV cell that a spreadsheet shows as text and never runs: one that starts
    like a formula gets a leading single quote (OWASP's advice), the rest are as recorded."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _auditors_only(principal: Principal) -> None:
    if "audit" not in principal.capabilities:
        raise Forbidden("only alliance auditors read the audit trail")


def audit_router(guard: Guard, blobs: BlobStore) -> APIRouter:
    router = APIRouter(prefix="/api/audit", tags=["audit"])

    @router.get(
        "/events.csv",
        response_class=Response,
        responses=responses({200: {"text/csv": {"type": "string"}}}, [400, 401, 403, 413, 503]),
        openapi_extra={"security": BEARER},
    )
    async def export_csv(request: Request) -> Response:
        """The AuditEvents matching a search (the parameters of `GET /fhir/AuditEvent`:
        date, agent, altid, hospital, patient, entity, subtype, outcome, ...), oldest first, as
        UTF-8 CSV with a byte-order mark so spreadsheet programs read Chinese correctly. Cells
        that would start a formula are quoted (`csv_cell`): user names and descriptions are
        whatever a caller typed, and an auditor opens the file in a spreadsheet."""
        # The FHIR search's own parse (its filters; paging does not apply to an export).
        spec = parse_search(
            guard.registry.get("AuditEvent"),
            guard.registry,
            list(request.query_params.multi_items()),
            base_url=guard.settings.fhir_base,
            default_count=guard.settings.default_page_size,
            max_count=guard.settings.max_page_size,
        )
        conditions = audit_conditions(spec.filters)

        def work(session: Session, _ctx: Context) -> str:
            rows, _ = search_events(
                session, conditions, newest_first=False, limit=MAX_EXPORT_ROWS + 1
            )
            if len(rows) > MAX_EXPORT_ROWS:
                raise PayloadTooLarge(
                    f"more than {MAX_EXPORT_ROWS} records match; narrow the period"
                )
            out = io.StringIO()
            out.write("\ufeff")
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            for row in rows:
                values = [getattr(row, c) for c in CSV_COLUMNS[:-1]]
                values[1] = row.recorded.isoformat()
                values.append(json.loads(row.content).get("outcomeDesc"))
                writer.writerow([csv_cell(v) for v in values])
            return out.getvalue()

        body = await guard.run(
            request,
            Interaction("export", query=request.url.query, type="export"),
            work,
            lambda _body: [Touched(None, None)],
            check=_auditors_only,
        )
        return Response(
            body.encode(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit-events.csv"'},
        )

    @router.get(
        "/verify",
        response_class=Response,
        responses=responses({200: {"application/json": {"type": "object"}}}, [401, 403, 503]),
        openapi_extra={"security": BEARER},
    )
    async def verify_chain(request: Request) -> JSONResponse:
        """Walk the hash chain and hold it to its newest signed checkpoints in the blob store:
        `{ok, checked, first_bad_seq, problem, checkpoints: {ok, read, latest, confirmed_seq,
        missing, altered, problems}}`. `ok` is false when the chain is broken, when records a
        checkpoint saw are missing or altered, or when a checkpoint's signature fails."""
        result: TrailResult = await guard.run(
            request,
            Interaction("audit-verify", type="security"),
            lambda session, _ctx: verify_trail(session, blobs),
            lambda r: [Touched(None, None)],
            check=_auditors_only,
        )
        return JSONResponse(asdict(result))

    return router
