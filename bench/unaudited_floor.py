"""The shipped app, served as `alliance serve` serves it, plus one route for bench/fhir_load.py:
`GET /bench/unaudited/Patient/{id}`, the same Patient read with security and audit left out.

Issue 12 asks that the audited read keep at least two thirds of "the same server's unaudited
throughput". This route is that floor: the same process, uvicorn, middleware (request id,
metrics, JSON request log), routing, thread-pool hop, read-only unit of work, FhirStore read and
response as `GET /fhir/Patient/{id}`, without what the guard adds (alliance.security.guard:
token check, principal, access rules in the query, the AuditEvent and its group commit). So
`read / unaudited` is exactly what security and audit leave of the read.

Never part of a deployment: the route reads any Patient for anyone. The benchmark starts it on
a loopback port of its own database and stops it when done.

Run (as bench/fhir_load.py does): `PYTHONPATH=<checkout>:<checkout>/bench python -m
unaudited_floor --port P --workers N`, with the ALLIANCE_* settings of `alliance serve`.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from alliance.config import get_settings
from alliance.fhir.http import FHIR_JSON
from server.app import Services
from server.app import create_app as create_shipped_app
from server.cli import serve_app

PATH = "/bench/unaudited/Patient/{rid}"


def create_app() -> FastAPI:
    app = create_shipped_app()
    services: Services = app.state.services

    def read(rid: str) -> bytes:
        with services.db.transaction(read_only=True) as session:
            version = services.fhir.read("Patient", rid, session=session)
        assert version.content is not None
        return version.content.encode()

    @app.get(PATH, include_in_schema=False)
    async def unaudited_read(rid: str) -> Response:
        return Response(await run_in_threadpool(read, rid), media_type=FHIR_JSON)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    serve_app("unaudited_floor:create_app", args.host, args.port, args.workers, get_settings())


if __name__ == "__main__":
    main()
