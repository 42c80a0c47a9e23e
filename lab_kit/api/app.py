"""StreamSocial's post-submission HTTP API: the user's side of the async producer.

An ASGI app (Starlette) served by uvicorn on 127.0.0.1. Routes:

* ``POST /posts`` — a post as JSON (``user_id``, ``text``, optional ``post_id``,
  ``media_urls``, ``lang``, ``reply_to``, ``created_at``). Validated with
  :func:`lab_kit.posts.validate_post`, handed to ``AsyncPostProducer.submit()`` and answered
  ``202 {"post_id", "status": "accepted", "delivery"}`` **without waiting for Kafka**
  (``delivery`` is ``pending``, or ``spooled`` while the broker is down). ``?wait=ack`` waits
  for the delivery through the asyncio bridge (:mod:`lab_kit.aio`) and answers ``201``.
  Bad input: ``400`` (not JSON), ``413`` (body over ``max_body_bytes``, checked before it is
  read whole), ``415`` (not ``application/json``), ``422`` (a rule of the post), ``503``
  (backpressure or shutting down), always ``{"error", "field", "limit"}``.
* ``GET /posts/{post_id}`` — ``pending | acked | spooled | failed`` and the moderation
  verdict once ``moderation.results`` has one. The table is bounded (``max_tracked``,
  oldest forgotten first): an unknown or forgotten id is ``404``.
* ``GET /healthz`` — liveness, plus broker health, in-flight count and spool depth.
* ``GET /metrics`` — Prometheus text format (``prometheus_client``): requests by route and
  status, latency histograms, posts submitted/acked/spooled/failed/rejected, in flight.

``variant="blocking"`` (``--variant blocking``) is the lesson's mistake, kept out of the
default app: ``POST /posts`` calls ``send().get()`` (``submit_sync``) inside ``async def``, so
the event loop stands still for every ack and every other request waits.

``python -m lab_kit.api [--host 127.0.0.1] [--port 8000] [--workers N]`` serves it (loopback by
default). SIGTERM: uvicorn stops accepting, the lifespan shutdown closes the producer
(flush, or spool what is left). Each worker process has its own producer and spool file
(``api-<slot>.spool.db``, the slot held by a file lock, so a restarted worker replays what
a killed one left) and its own ``/metrics``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lab_kit.machine import free_port
from lab_kit.posts import PostValidationError, validate_post
from lab_kit.producer import BackpressureError, ProducerClosedError
from lab_kit.topics import MODERATION_RESULTS, POSTS

log = logging.getLogger(__name__)

VARIANTS = ("async", "blocking")
#: a valid post is at most ~45 kB of JSON (5,000 characters of text, 10 URLs of 2,048)
MAX_BODY_BYTES = 64 * 1024
MAX_TRACKED = 100_000
BLOCKING_TIMEOUT_S = 5.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
ROUTES = {"/posts": "/posts", "/healthz": "/healthz", "/metrics": "/metrics"}


class ApiError(Exception):
    def __init__(self, status: int, field: str, limit: Any, message: str):
        self.status, self.field, self.limit = status, field, limit
        super().__init__(message)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self), "field": self.field, "limit": self.limit},
                            status_code=self.status)


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
        self.rejected = Counter("lab_api_posts_rejected_total", "requests refused, by field",
                                ("field",), registry=r)
        self.in_flight = Gauge("lab_api_posts_in_flight", "posts handed to Kafka, not acked",
                               registry=r)
        self.spool_depth = Gauge("lab_api_spool_depth", "posts waiting in the spool", registry=r)
        self.replayed = Gauge("lab_api_spool_replayed", "spooled posts replayed to Kafka",
                              registry=r)
        self.broker_healthy = Gauge("lab_api_broker_healthy", "1 if the broker answers",
                                    registry=r)


class StatusTable:
    """post_id -> (delivery, partition, offset), bounded: the oldest ids are forgotten.

    Written from the event loop (new posts) and the sender thread (acks), hence the lock.
    """

    def __init__(self, max_tracked: int = MAX_TRACKED):
        self.max_tracked = max_tracked
        # An OrderedDict, not a dict: ``del d[next(iter(d))]`` on a plain dict walks past
        # every slot deleted before it, ~36 us per post once full here (popitem: ~1.6 us).
        self._rows: OrderedDict[str, tuple] = OrderedDict()
        self._verdicts: dict[str, dict] = {}
        self._lock = threading.Lock()

    def add(self, post_id: str, row: tuple) -> None:
        with self._lock:
            self._rows.pop(post_id, None)
            self._rows[post_id] = row
            while len(self._rows) > self.max_tracked:
                old, _row = self._rows.popitem(last=False)
                self._verdicts.pop(old, None)

    def update(self, post_id: str, row: tuple) -> None:
        with self._lock:
            if post_id in self._rows:  # keeps its place in the order
                self._rows[post_id] = row

    def verdict(self, post_id: str, verdict: dict) -> None:
        with self._lock:
            if post_id in self._rows:
                self._verdicts[post_id] = verdict

    def get(self, post_id: str) -> tuple[tuple | None, dict | None]:
        with self._lock:
            return self._rows.get(post_id), self._verdicts.get(post_id)

    def __len__(self) -> int:
        return len(self._rows)


class VerdictReader(threading.Thread):
    """Reads ``moderation.results`` from its end and files verdicts of tracked posts."""

    def __init__(self, client_config: dict, topic: str, table: StatusTable):
        super().__init__(daemon=True, name="lab-api-verdicts")
        self.client_config, self.topic, self.table = client_config, topic, table
        self._stop_event = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = None
        while not self._stop_event.is_set():
            try:
                if consumer is None:
                    consumer = KafkaConsumer(self.topic, **self.client_config, group_id=None,
                                             auto_offset_reset="latest",
                                             enable_auto_commit=False)
                for records in consumer.poll(timeout_ms=500).values():
                    for rec in records:
                        try:
                            v = json.loads(rec.value)
                            self.table.verdict(v["post_id"], {
                                k: v.get(k) for k in ("label", "score", "degraded", "source")})
                        except (ValueError, KeyError, TypeError):
                            continue
            except Exception:  # noqa: BLE001 - broker down: try again later
                self._stop_event.wait(2.0)
        if consumer is not None:
            consumer.close()

    def stop(self) -> None:
        self._stop_event.set()


class _Timing:
    """Pure ASGI middleware: requests and latency by route and status (no per-request task,
    unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: Any, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics
        self.starlette: Starlette | None = None

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
                self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()


async def _read_body(headers: dict[bytes, bytes], receive: Callable, limit: int) -> bytes:
    """The body, refused (413) before it is read whole when it is over ``limit`` bytes."""
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "content-length", "integer",
                           "content-length: not a number") from None
        if size > limit:
            raise ApiError(413, "body", limit,
                           f"body: {size} bytes exceeds the limit of {limit} bytes")
    chunks, size, more = [], 0, True
    while more:  # chunked uploads: count as they come
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "body", limit, "body: the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body", limit, f"body: more than the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _parse_post(body: bytes, content_type: str) -> Any:
    if not content_type.split(";")[0].strip().lower() == "application/json":
        raise ApiError(415, "content-type", "application/json",
                       f"content-type: {content_type or 'none'} is not application/json")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "body", "UTF-8 JSON object", "body: not valid UTF-8") from None
    except ValueError as exc:
        raise ApiError(400, "body", "UTF-8 JSON object", f"body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body", "JSON object",
                       f"body: a JSON {type(data).__name__} is not an object")
    try:
        return validate_post(data)
    except PostValidationError as exc:
        raise ApiError(422, exc.field, exc.limit, str(exc)) from exc


def _spool_slot(spool_dir: Path) -> tuple[Path, Any]:
    """The first free ``api-<n>.spool.db`` in ``spool_dir`` (held by a lock on its .lock)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    for n in range(64):
        handle = open(spool_dir / f"api-{n}.lock", "w")  # noqa: SIM115 - held while we live
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return spool_dir / f"api-{n}.spool.db", handle
    raise RuntimeError(f"no free spool slot in {spool_dir}")


def _client_config(bootstrap: str | None) -> dict:
    if bootstrap:
        return {"bootstrap_servers": bootstrap}
    from lab_kit import broker

    b = broker.current() or broker.ensure()
    return b.client_config()


def create_app(*, variant: str = "async", topic: str = POSTS, bootstrap: str | None = None,
               spool_dir: str | Path | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               max_tracked: int = MAX_TRACKED, verdicts: bool | None = None,
               producer_config: dict | None = None, freeze_gc: bool = False) -> Any:
    """The ASGI app. The producer is made at startup (lifespan) and closed at shutdown.

    ``freeze_gc`` (the served process, ``python -m lab_kit api``): once started, move every
    object alive then out of the garbage collector's sight (:func:`gc.freeze`). A full
    collection walks all the objects the process holds, with the event loop stopped: 55-95 ms
    here for the modules, the app and the Kafka client, which live until exit anyway.

    ``POST /posts`` is a plain ASGI handler; the other routes and the lifespan are a
    Starlette app (``app.starlette``); ``app.metrics`` is the Prometheus registry's owner."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {VARIANTS}")
    if max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes: must be >= 1024, got {max_body_bytes}")
    from lab_kit.producer.asyncio_bridge import AioPostProducer, wrap_future

    metrics = ApiMetrics()
    table = StatusTable(max_tracked)
    state: dict[str, Any] = {}
    verdicts = (topic == POSTS) if verdicts is None else verdicts

    def on_done(pf: Any) -> None:  # sender thread (or the loop, for spooled posts)
        exc = pf.exception(0)
        if exc is not None:
            metrics.failed.inc()
            table.update(pf.post_id, ("failed", None, None))
            return
        d = pf.result(0)
        if d.outcome == "acked":
            metrics.acked.inc()
        else:
            metrics.spooled.inc()
        table.update(pf.post_id, (d.outcome, d.partition, d.offset))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        cfg = _client_config(bootstrap)
        servers = cfg.pop("bootstrap_servers")
        sdir = Path(spool_dir) if spool_dir else Path(os.environ.get(
            "LAB_STATE_DIR", Path.home() / ".cache" / "lab_kit")) / "api-spool"
        spool_path, lock = _spool_slot(sdir)
        aio = await AioPostProducer.create(servers, topic, spool_path=str(spool_path),
                                           **cfg, **(producer_config or {}))
        p = aio.producer
        metrics.in_flight.set_function(lambda: p.in_flight)
        metrics.spool_depth.set_function(lambda: len(p.spool) if p.spool is not None else 0)
        metrics.broker_healthy.set_function(lambda: 1.0 if p.healthy else 0.0)
        metrics.replayed.set_function(lambda: p.metrics.counters_fast("replayed"))
        reader = None
        if verdicts:
            reader = VerdictReader({"bootstrap_servers": servers, **cfg}, MODERATION_RESULTS,
                                   table)
            reader.start()
        state.update(aio=aio, spool_path=spool_path, closing=False)
        if freeze_gc:
            gc.collect()
            gc.freeze()
        log.info("lab_kit.api %s: producer on %s, spool %s", variant, topic, spool_path)
        try:
            yield
        finally:
            state["closing"] = True
            if reader is not None:
                reader.stop()
            report = await aio.close(timeout=30)
            log.warning("lab_kit.api closed: accepted %d, acked %d, spooled (left on disk) "
                        "%d, lost %d", report.accepted, report.acked, report.spooled_pending,
                        report.lost)
            lock.close()

    async def accept(post: Any, wait_ack: bool) -> tuple[int, dict]:
        aio = state["aio"]
        if state["closing"]:
            raise ApiError(503, "server", "running", "server: shutting down")
        if variant == "blocking":
            # THE MISTAKE, on purpose: send().get() inside async def blocks the event loop
            # for a whole broker round trip (or, with the broker down, up to the timeout).
            try:
                d = aio.producer.submit_sync(post, timeout=BLOCKING_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                metrics.failed.inc()
                raise ApiError(503, "broker", f"{BLOCKING_TIMEOUT_S} s",
                               f"broker: {type(exc).__name__}: {exc}") from None
            metrics.submitted.inc()
            metrics.acked.inc()
            table.add(post.post_id, ("acked", d.partition, d.offset))
            return 202, {"post_id": post.post_id, "status": "accepted", "delivery": "acked"}
        try:
            pf = aio.submit(post)  # returns at once: the ack comes on the sender thread
        except BackpressureError as exc:
            raise ApiError(503, exc.field, exc.limit, str(exc)) from None
        except ProducerClosedError:
            raise ApiError(503, "server", "running", "server: shutting down") from None
        metrics.submitted.inc()
        table.add(post.post_id, ("pending", None, None))
        pf.add_done_callback(on_done)
        if wait_ack:
            try:
                d = await wrap_future(pf)  # the asyncio bridge: the loop keeps serving
            except Exception as exc:  # noqa: BLE001
                return 502, {"post_id": post.post_id, "status": "failed", "error": str(exc)}
            return 201, {"post_id": post.post_id, "status": "accepted", "delivery": d.outcome,
                         "partition": d.partition, "offset": d.offset}
        row, _ = table.get(post.post_id)
        return 202, {"post_id": post.post_id, "status": "accepted",
                     "delivery": row[0] if row else "pending"}

    async def post_posts(scope: dict, receive: Callable, send: Callable) -> None:
        """POST /posts as a plain ASGI handler: the hot path skips Starlette's request,
        routing and response objects (about half of the server's CPU per post)."""
        headers = dict(scope["headers"])
        try:
            body = await _read_body(headers, receive, max_body_bytes)
            post = _parse_post(body, headers.get(b"content-type", b"").decode("latin-1"))
            status, payload = await accept(post, b"wait=ack" in scope.get("query_string", b""))
        except ApiError as err:
            metrics.rejected.labels(err.field).inc()
            status, payload = err.status, {"error": str(err), "field": err.field,
                                           "limit": err.limit}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def get_post(request: Request) -> Response:
        post_id = request.path_params["post_id"]
        row, verdict = table.get(post_id)
        if row is None:
            return JSONResponse({"error": f"post_id: {post_id} is unknown (or older than the "
                                          f"last {max_tracked} posts)", "field": "post_id",
                                 "limit": max_tracked}, status_code=404)
        return JSONResponse({"post_id": post_id, "delivery": row[0], "partition": row[1],
                             "offset": row[2], "moderation": verdict})

    async def healthz(request: Request) -> Response:
        aio = state.get("aio")
        p = aio.producer if aio else None
        return JSONResponse({
            "status": "ok", "variant": variant, "topic": topic, "pid": os.getpid(),
            "broker_healthy": bool(p and p.healthy), "in_flight": p.in_flight if p else 0,
            "spool_depth": len(p.spool) if p and p.spool is not None else 0,
            "tracked": len(table)})

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[
        Route("/posts/{post_id}", get_post, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.metrics = metrics
    app.state.table = table

    async def dispatch(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/posts" and scope["method"] == "POST":
            await post_posts(scope, receive, send)
        else:  # everything else (and the lifespan) through Starlette
            await app(scope, receive, send)

    timed = _Timing(dispatch, metrics)
    timed.starlette = app
    return timed


def create_app_from_env() -> Any:
    """uvicorn's factory (one call per worker process): settings from ``LAB_API_*``."""
    env = os.environ
    return create_app(variant=env.get("LAB_API_VARIANT", "async"),
                      topic=env.get("LAB_API_TOPIC", POSTS),
                      bootstrap=env.get("LAB_API_BOOTSTRAP") or None,
                      spool_dir=env.get("LAB_API_SPOOL_DIR") or None,
                      max_body_bytes=int(env.get("LAB_API_MAX_BODY_BYTES", MAX_BODY_BYTES)),
                      verdicts={"1": True, "0": False}.get(env.get("LAB_API_VERDICTS", "")),
                      freeze_gc=True)


# --- command line -------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (1-8)")
    p.add_argument("--variant", choices=VARIANTS, default="async",
                   help="blocking = send().get() inside async def (the lesson's mistake)")
    p.add_argument("--topic", default=POSTS)
    p.add_argument("--bootstrap", default=None, help="default: the lab's broker")
    p.add_argument("--spool-dir", default=None,
                   help="default $LAB_STATE_DIR/api-spool (one spool file per worker)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    p.add_argument("--verdicts", choices=("auto", "on", "off"), default="auto",
                   help="read moderation.results for GET /posts/{id} (auto: on for 'posts')")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``python -m lab_kit api ...`` (registered by lab_kit.cli)."""
    p = sub.add_parser("api", help="serve the post-submission HTTP API (uvicorn)")
    add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    if not 1 <= args.workers <= 8:
        raise ValueError(f"--workers must be between 1 and 8, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_body_bytes < 1024:
        raise ValueError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    os.environ.update({
        "LAB_API_VARIANT": args.variant, "LAB_API_TOPIC": args.topic,
        "LAB_API_BOOTSTRAP": args.bootstrap or "", "LAB_API_SPOOL_DIR": args.spool_dir or "",
        "LAB_API_MAX_BODY_BYTES": str(args.max_body_bytes),
        "LAB_API_VERDICTS": {"on": "1", "off": "0"}.get(args.verdicts, "")})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run("lab_kit.api:create_app_from_env", factory=True, host=args.host,
                port=args.port, workers=args.workers, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
    return 0


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab_kit.api", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return main(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --- a served API for notebooks, benches, drills and tests ---------------------------------------

class ApiServer:
    """``python -m lab_kit.api`` in a child process, on a free loopback port.

    ``with ApiServer(topic=...) as api: httpx.post(api.url + "/posts", json=...)``;
    ``stop()`` sends SIGTERM (the app flushes, or spools what is left) and waits.
    """

    def __init__(self, *, variant: str = "async", topic: str = POSTS, workers: int = 1,
                 port: int | None = None, spool_dir: str | Path | None = None,
                 verdicts: str = "auto", bootstrap: str | None = None,
                 log_path: str | Path | None = None):
        self.variant, self.topic, self.workers = variant, topic, workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spool_dir, self.verdicts, self.bootstrap = spool_dir, verdicts, bootstrap
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> ApiServer:
        cmd = [sys.executable, "-m", "lab_kit.api", "--port", str(self.port),
               "--variant", self.variant, "--topic", self.topic,
               "--workers", str(self.workers), "--verdicts", self.verdicts]
        if self.spool_dir:
            cmd += ["--spool-dir", str(self.spool_dir)]
        if self.bootstrap:
            cmd += ["--bootstrap", self.bootstrap]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out if self.log_path else None)
        self.wait_ready(timeout_s)
        return self

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/healthz", timeout=5).json()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = ""
                if self.log_path and Path(self.log_path).exists():
                    tail = ": " + Path(self.log_path).read_text(errors="replace")[-1500:]
                raise RuntimeError(f"the API exited with code {self.proc.returncode}{tail}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the API did not answer on {self.url} within {timeout_s} s")

    def counters(self) -> dict[str, float]:
        """The ``lab_api_*`` samples of ``/metrics`` without labels (posts, spool, broker)."""
        import httpx

        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("lab_api_") and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    def wait_drained(self, timeout_s: float = 120.0) -> dict:
        """Wait until nothing is in flight and the spool is empty (the broker must be up)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        h: dict = {"in_flight": None, "spool_depth": None}
        while time.monotonic() < deadline:
            try:
                h = self.health()
            except httpx.HTTPError:  # a stalled (blocking) server: ask again
                continue
            if not (h["in_flight"] or h["spool_depth"]):
                break
            time.sleep(0.2)
        return h

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> ApiServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the instructor demo's "users posting" panel --------------------------------------------------

class UsersPostingFeed:
    """Polls an API's ``/metrics`` and turns counters into what a dashboard panel shows:
    requests/s, accepted/s, spooled/s, rejected/s, the share of requests answered within
    100 ms since the last poll (from the latency histogram), broker health, spool depth.

    ``feed = UsersPostingFeed(api.url); row = feed.poll()`` once a second.
    """

    def __init__(self, url: str):
        self.url = url
        self._last: tuple[float, dict[str, float]] | None = None

    def _scrape(self) -> dict[str, float]:
        import httpx

        out: dict[str, float] = {}
        for line in httpx.get(self.url + "/metrics", timeout=2).text.splitlines():
            if not line.startswith("lab_api_"):
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("lab_api_requests_total"):
                key = "requests"
            elif name.startswith("lab_api_posts_rejected_total"):
                key = "rejected"
            elif name == 'lab_api_request_duration_seconds_bucket{le="0.1",route="/posts"}':
                key = "posts_within_100ms"
            elif name == 'lab_api_request_duration_seconds_count{route="/posts"}':
                key = "posts_requests"
            elif "{" in name:
                continue
            else:
                key = name.removeprefix("lab_api_")
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def poll(self) -> dict[str, float | None]:
        now, cur = time.monotonic(), self._scrape()
        prev_t, prev = self._last or (now, cur)
        self._last = (now, cur)
        dt = max(now - prev_t, 1e-9)

        def rate(k: str) -> float:
            return round((cur.get(k, 0.0) - prev.get(k, 0.0)) / dt, 1) if now > prev_t else 0.0

        n = cur.get("posts_requests", 0.0) - prev.get("posts_requests", 0.0)
        fast = cur.get("posts_within_100ms", 0.0) - prev.get("posts_within_100ms", 0.0)
        return {"requests_per_s": rate("requests"),
                "accepted_per_s": rate("posts_submitted_total"),
                "spooled_per_s": rate("posts_spooled_total"),
                "rejected_per_s": rate("rejected"),
                "within_100ms": round(fast / n, 4) if n else None,
                "broker_healthy": cur.get("broker_healthy"),
                "spool_depth": cur.get("spool_depth"),
                "in_flight": cur.get("posts_in_flight")}


if __name__ == "__main__":
    sys.exit(cli())
