"""What the post API serves on ``GET /metrics``: :class:`ApiMetrics` (the Prometheus metrics,
one registry per app) and :class:`Timing`, the ASGI middleware that counts requests and times
them by route and status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.applications import Starlette

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
ROUTES = {"/posts": "/posts", "/healthz": "/healthz", "/metrics": "/metrics"}
#: The ``field`` label values of ``lab_api_posts_rejected_total``: a fixed set, so a client
#: cannot mint a time series (an unknown JSON key is counted as ``unknown``, whatever it says).
REJECT_FIELDS = frozenset({
    "post_id", "user_id", "text", "created_at", "media_urls", "lang", "reply_to",  # the post
    "body", "content-type", "content-length", "size", "post", "value", "wait",  # the request
    "server", "broker", "max_in_flight", "resend_alone", "spool", "spool_rows", "spool_bytes",
    "disk_free", "disk",  # the server's side (503)
})


def field_label(field: Any) -> str:
    """``field`` if it is one of :data:`REJECT_FIELDS`, else ``"unknown"``."""
    return field if field in REJECT_FIELDS else "unknown"


class ApiMetrics:
    """The app's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: the scrape stays short to read
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lab_api_requests_total", "HTTP requests", ("route", "status"),
                                registry=r)
        self.latency = Histogram("lab_api_request_duration_seconds",
                                 "time in the app, from request to response start", ("route",),
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.submitted = Counter("lab_api_posts_submitted_total", "posts accepted", registry=r)
        self.acked = Counter("lab_api_posts_acked_total", "posts acked by Kafka", registry=r)
        self.spooled = Counter("lab_api_posts_spooled_total", "posts spooled to disk", registry=r)
        self.failed = Counter("lab_api_posts_failed_total", "posts that failed", registry=r)
        self.rejected = Counter("lab_api_posts_rejected_total",
                                "requests refused, by field (a fixed set: REJECT_FIELDS)",
                                ("field",), registry=r)
        self.in_flight = Gauge("lab_api_posts_in_flight", "posts handed to Kafka, not acked",
                               registry=r)
        self.spool_depth = Gauge("lab_api_spool_depth", "posts waiting in the spool", registry=r)
        self.spool_bytes = Gauge("lab_api_spool_bytes", "bytes of posts waiting in the spool",
                                 registry=r)
        self.replayed = Gauge("lab_api_spool_replayed", "spooled posts replayed to Kafka",
                              registry=r)
        self.broker_healthy = Gauge("lab_api_broker_healthy", "1 if the broker answers",
                                    registry=r)


class Timing:
    """Pure ASGI middleware: requests and latency by route and status (no per-request task,
    unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: Any, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics
        self.starlette: Starlette | None = None
        # the labelled children, looked up once per route (and status): ``labels()`` takes
        # the metric's lock and builds its key on every call
        self._latency: dict[str, Any] = {}
        self._requests: dict[tuple[str, int], Any] = {}

    def _latency_of(self, route: str) -> Any:
        child = self._latency.get(route)
        if child is None:
            child = self._latency[route] = self.metrics.latency.labels(route)
        return child

    def _requests_of(self, route: str, status: int) -> Any:
        child = self._requests.get((route, status))
        if child is None:  # routes are a fixed set and statuses few: a bounded dict
            child = self._requests[(route, status)] = self.metrics.requests.labels(
                route, str(status))
        return child

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = ROUTES.get(path) or ("/posts/{post_id}" if path.startswith("/posts/")
                                     else "other")
        t0 = time.perf_counter()
        status = [500]

        async def timed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                self._latency_of(route).observe(time.perf_counter() - t0)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self._requests_of(route, status[0]).inc()
