"""`create_app()`: the FastAPI application with every face mounted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from alliance import trace
from alliance.attachments.router import attachment_router
from alliance.audit.anchor import Anchor
from alliance.audit.router import audit_router
from alliance.config import Settings, get_settings
from alliance.db import Database
from alliance.errors import AllianceError, Issue, MethodNotAllowed, NotFound, Unavailable
from alliance.fhir.http import FhirApi, error_response
from alliance.fhir.store import FhirStore
from alliance.http import allowed_methods, responses
from alliance.notify.router import notify_router
from alliance.security.guard import Guard
from alliance.security.router import auth_router
from alliance.storage import BlobStore, open_blob_store
from fhir_mappings import build_registry
from imaging.held import held_router
from imaging.router import DicomwebApi
from imaging.service import Imaging
from portal.router import Portal
from referral.router import referral_router
from server.dicom import build_imaging
from server.metrics import Metrics, MetricsMiddleware
from server.notify import build_worker
from server.proxy import ForwardedMiddleware
from server.sweep import sweep

log = logging.getLogger("alliance")


@dataclass
class Services:
    """What a running app holds; nothing in it is state another worker would need."""

    settings: Settings
    db: Database
    blobs: BlobStore
    fhir: FhirStore
    guard: Guard
    anchor: Anchor


def build_services(settings: Settings) -> Services:
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    blobs = open_blob_store(settings.storage_url)
    registry = build_registry(settings)
    return Services(
        settings,
        db,
        blobs,
        FhirStore(registry, base_url=settings.fhir_base, server_url=settings.base_url),
        Guard(db, settings, registry),
        Anchor(settings, db, blobs).attach(),
    )


def _checkpoint_on_shutdown(anchor: Anchor) -> None:
    """The trail's last records before a stop are anchored too, not only each N-th."""
    try:
        anchor.write_head()
    except AllianceError as exc:
        log.warning("no audit checkpoint written at shutdown: %s", exc.message)


def _sweep_on_start(services: Services, imaging: Imaging) -> None:
    """What a crash left behind goes at start-up; a failing sweep does not stop the server."""
    try:
        report = sweep(
            services.db,
            services.blobs,
            imaging,
            services.settings.sweep_min_age_seconds,
            dry_run=False,
        )
    except AllianceError as exc:
        log.warning("start-up sweep did not finish: %s", exc.message)
        return
    if report.blobs or report.partials or report.spool or report.studies:
        log.info("start-up sweep: %s", report.lines()[-1])


_API_PREFIXES = ("/fhir", "/api", "/auth", "/dicomweb", "/healthz", "/readyz", "/metrics")


def _face_error(request: Request, error: AllianceError) -> Response:
    if request.url.path.startswith("/fhir"):
        return error_response(error)
    if not request.url.path.startswith(_API_PREFIXES) and "text/html" in request.headers.get(
        "accept", ""
    ):
        # A person typing an address: a readable page, in both languages.
        body = (
            '<!doctype html><html lang="zh-CN"><meta charset="utf-8">'
            '<link rel="stylesheet" href="/static/portal.css"><main>'
            f"<h1>未找到该页面或记录 · Nothing to show here</h1><p>{error.status}</p>"
            '<p><a href="/">返回首页 · Back to the start page</a></p></main></html>'
        )
        return HTMLResponse(body, error.status, headers=error.headers)
    said = {"error": error.code, "message": error.message}
    if error.rule:
        said["rule"] = error.rule  # the rule broken, as the FHIR face's issue.details
    return JSONResponse(said, error.status, headers=error.headers)


#: The `Allow` of a 405 on a request's path (alliance.http.allowed_methods, or a face's own).
AllowOf = Callable[[Request], str]


def _routes_allow(request: Request) -> str:
    return allowed_methods(request.app.router.routes, request.scope)


def _install_error_handlers(app: FastAPI, allow_of: AllowOf = _routes_allow) -> None:
    """Errors answer as the face they happen on expects (`_face_error`); installed on the
    main application and on each mounted one (a mounted application handles its own).
    A 405 carries `Allow`, the methods its path supports (RFC 9110 15.5.6)."""

    @app.exception_handler(AllianceError)
    async def _alliance_error(request: Request, exc: AllianceError) -> Response:
        return _face_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error: AllianceError
        if exc.status_code == 405:
            allow = allow_of(request)
            error = MethodNotAllowed(
                f"{request.method} is not supported on {request.url.path}; use {allow}",
                headers={"Allow": allow},
            )
        elif exc.status_code == 404:
            error = NotFound(f"nothing is served at {request.url.path}")
        else:
            error = AllianceError(str(exc.detail))
            error.status = exc.status_code
        return _face_error(request, error)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = AllianceError("internal error; it has been logged")
        error.status = 500
        error.issues = [Issue(error.message, "exception", "fatal")]
        response = _face_error(request, error)
        # Answered outside the request middleware: the id the log and the trail carry.
        request_id = request.scope.get(trace.SCOPE_KEY)
        if request_id:
            response.headers[trace.HEADER] = request_id
        return response


def _document_mounted(app: FastAPI, mounted: dict[str, FastAPI]) -> None:
    """The API docs (`/docs`, `/openapi.json`) list the routes of the mounted applications
    too (FastAPI leaves a mounted application out of its parent's OpenAPI document)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for prefix, sub in mounted.items():
                part = sub.openapi()
                for path, item in part.get("paths", {}).items():
                    schema.setdefault("paths", {})[prefix + path] = item
                found = part.get("components", {}).get("schemas", {})
                schema.setdefault("components", {}).setdefault("schemas", {}).update(found)
            # The scheme operations name in their `security` (alliance.http.BEARER).
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.signing_keys  # noqa: B018 -- the server does not start without token keys
    services = build_services(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.sweep_on_start:
            await run_in_threadpool(_sweep_on_start, services, imaging)
        worker = None
        if settings.notify_worker:
            worker = build_worker(settings, services.db, services.fhir)
            worker.start()
        yield
        if worker is not None:
            await run_in_threadpool(worker.stop)
        await run_in_threadpool(_checkpoint_on_shutdown, services.anchor)

    app = FastAPI(
        lifespan=lifespan,
        title="Alliance referral, teleconsult and imaging service",
        description=(
            "FHIR R4 at `/fhir` (application/fhir+json), DICOMweb at `/dicomweb`, "
            "OAuth2 at `/auth`. These docs cover the operational endpoints; "
            "`GET /fhir/metadata` is the FHIR CapabilityStatement."
        ),
        version="0.1.0",
    )
    app.state.services = services
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Added last, so outermost: the request middleware already sees the client's view.
    app.add_middleware(ForwardedMiddleware, trusted=settings.trusted_proxy_networks)

    fhir = FhirApi(services.fhir, services.guard, settings)

    def allow_of(request: Request) -> str:
        if request.url.path.startswith("/fhir/"):
            return fhir.allow(request.scope)
        return _routes_allow(request)

    _install_error_handlers(app, allow_of)

    app.include_router(auth_router(services.db, settings))
    app.include_router(audit_router(services.guard, services.blobs))
    app.include_router(attachment_router(services.guard, services.blobs, settings))
    app.include_router(referral_router(services.guard))
    app.include_router(notify_router(services.guard, services.fhir, settings))
    app.include_router(fhir.router())
    imaging = build_imaging(settings, services.db, services.blobs, services.fhir)
    app.state.imaging = imaging
    app.include_router(held_router(services.guard, imaging))
    portal = Portal(settings, services.db, services.guard, services.fhir, services.blobs, imaging)
    app.include_router(portal.router())
    app.mount("/static", portal.static(), name="static")
    dicomweb = DicomwebApi(imaging, services.guard, settings).app()
    _install_error_handlers(dicomweb)
    app.mount("/dicomweb", dicomweb)
    _document_mounted(app, {"/dicomweb": dicomweb})

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        response_class=Response,
        responses=responses(
            {200: {"application/json": {"type": "object"}}}, [503], {"application/json": {}}
        ),
    )
    async def readyz() -> Response:
        """The database and the blob store are reachable (503 otherwise)."""
        checks: dict[str, Any] = {}
        for name, ping in (("database", services.db.ping), ("storage", services.blobs.ping)):
            try:
                await run_in_threadpool(ping)
                checks[name] = "ok"
            except Unavailable as exc:
                checks[name] = exc.message
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            200 if ready else 503,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses=responses({200: {"text/plain": {"type": "string"}}}, []),
    )
    async def metrics_endpoint() -> Response:
        """Prometheus text exposition: request counts and latency by route and status."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
