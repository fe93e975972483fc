"""The request middleware: the request id, one JSON log line per request, and Prometheus
request counts and latency by route template and status (`/metrics`, with the counters of
alliance.metrics)."""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alliance import metrics as kernel_metrics
from alliance import trace
from server.logs import access_log

#: prometheus-client's multiprocess mode: the folder each worker writes its metrics to.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "alliance_http_requests_total",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "alliance_http_request_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def render(self) -> bytes:
        """Every worker's counts: with PROMETHEUS_MULTIPROC_DIR set (`alliance serve
        --workers N` sets it before the workers start) each process writes its metrics to
        files there and any worker answers with the sum; else this process's own."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry) + generate_latest(kernel_metrics.REGISTRY)


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task overhead). Each HTTP request gets its id
    (alliance.trace: the caller's `X-Request-ID` when acceptable, else a new one), answered in
    the `X-Request-ID` header, and one line on the `alliance.access` log once it is done."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        root = str(scope.get("root_path", ""))
        request_id = trace.request_id_from(Headers(scope=scope).get(trace.HEADER))
        # Handlers outside this middleware (the 500 page) find the id in the scope.
        scope[trace.SCOPE_KEY] = request_id
        serving, token = trace.begin(request_id, scope.get(trace.FORWARDED_KEY))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[trace.HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            trace.end(token)
            route: object = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            # A mounted application (DICOMweb) matches below its mount point: label its routes
            # with the whole path, as a client sees it.
            mounted = str(scope.get("root_path", ""))[len(root) :]
            if template != "unmatched" and not template.startswith(mounted):
                template = mounted + template
            method = scope.get("method", "")
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(elapsed)
            client = scope.get("client")
            access_log.info(
                "%s %s %s",
                method,
                scope.get("path", ""),
                status,
                extra={
                    "request_id": request_id,
                    "user": serving.user,
                    "hospital": serving.hospital,
                    "method": method,
                    "route": template,
                    "path": scope.get("path", ""),
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": client[0] if client else None,
                },
            )
