"""StreamSocial's post-submission HTTP API: the user's side of the async producer.

An ASGI app (Starlette) served by uvicorn on 127.0.0.1. Routes:

* ``POST /posts`` — a post as JSON (``user_id``, ``text``, optional ``post_id``,
  ``media_urls``, ``lang``, ``reply_to``, ``created_at``). Validated with
  :func:`lab_kit.posts.validate_post`, handed to ``AsyncPostProducer.submit()`` and answered
  ``202 {"post_id", "status": "accepted", "delivery"}`` **without waiting for Kafka**
  (``delivery`` is ``pending``, or ``spooled`` while the broker is down). ``?wait=ack`` waits
  for the delivery through the asyncio bridge (:mod:`lab_kit.producer.asyncio_bridge`) and
  answers ``201``.
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

import contextlib
import fcntl
import gc
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lab_kit import broker
from lab_kit.api.body import parse_post, read_body
from lab_kit.api.errors import BLOCKING_TIMEOUT_S, MAX_BODY_BYTES, MAX_TRACKED, VARIANTS, ApiError
from lab_kit.api.metrics import ApiMetrics, Timing
from lab_kit.api.status import StatusTable, VerdictReader
from lab_kit.producer import BackpressureError, ProducerClosedError
from lab_kit.producer.asyncio_bridge import AioPostProducer, wrap_future
from lab_kit.topics import MODERATION_RESULTS, POSTS

# the name it logged under as lab_kit/api.py ("WARNING lab_kit.api: lab_kit.api closed: ...")
log = logging.getLogger("lab_kit.api")


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
    b = broker.current() or broker.ensure()
    return b.client_config()


class PostApi:
    """One app: its settings, its state and its routes (see :func:`create_app`).

    Settings: ``variant``, ``topic``, ``bootstrap``, ``spool_dir``, ``max_body_bytes``,
    ``max_tracked``, ``verdicts``, ``producer_config``, ``freeze_gc``. State: ``metrics``
    (:class:`ApiMetrics`), ``table`` (:class:`StatusTable`), and from startup to shutdown
    ``aio`` (the producer behind the asyncio bridge), ``spool_path``, ``reader`` (the
    :class:`VerdictReader`, if ``verdicts``) and ``closing``. ``asgi`` is what uvicorn serves:
    the :class:`Timing` middleware around :meth:`dispatch`; ``starlette`` serves all but
    ``POST /posts`` (and runs :meth:`lifespan`).
    """

    def __init__(self, *, variant: str, topic: str, bootstrap: str | None,
                 spool_dir: str | Path | None, max_body_bytes: int, max_tracked: int,
                 verdicts: bool | None, producer_config: dict | None, freeze_gc: bool):
        if variant not in VARIANTS:
            raise ValueError(f"variant: {variant!r} is not one of {VARIANTS}")
        if max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: must be >= 1024, got {max_body_bytes}")
        self.variant, self.topic, self.bootstrap = variant, topic, bootstrap
        self.spool_dir, self.max_body_bytes = spool_dir, max_body_bytes
        self.max_tracked = max_tracked
        self.verdicts = (topic == POSTS) if verdicts is None else verdicts
        self.producer_config, self.freeze_gc = producer_config, freeze_gc

        self.metrics = ApiMetrics()
        self.table = StatusTable(max_tracked)
        self.aio: AioPostProducer | None = None  # from startup on
        self.spool_path: Path | None = None
        self.reader: VerdictReader | None = None
        self.closing = False
        self._spool_lock: Any = None

        self.starlette = Starlette(routes=[
            Route("/posts/{post_id}", self.get_post, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
        ], lifespan=self.lifespan)
        self.starlette.state.metrics = self.metrics
        self.starlette.state.table = self.table
        self.asgi = Timing(self.dispatch, self.metrics)
        self.asgi.starlette = self.starlette

    # --- startup and shutdown (Starlette's lifespan) ---------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.close()

    async def start(self) -> None:
        """The producer (on a free spool slot), the gauges that read it, the verdict reader."""
        cfg = _client_config(self.bootstrap)
        servers = cfg.pop("bootstrap_servers")
        sdir = Path(self.spool_dir) if self.spool_dir else Path(os.environ.get(
            "LAB_STATE_DIR", Path.home() / ".cache" / "lab_kit")) / "api-spool"
        spool_path, self._spool_lock = _spool_slot(sdir)
        aio = await AioPostProducer.create(servers, self.topic, spool_path=str(spool_path),
                                           **cfg, **(self.producer_config or {}))
        p = aio.producer
        metrics = self.metrics
        metrics.in_flight.set_function(lambda: p.in_flight)
        metrics.spool_depth.set_function(lambda: len(p.spool) if p.spool is not None else 0)
        metrics.broker_healthy.set_function(lambda: 1.0 if p.healthy else 0.0)
        metrics.replayed.set_function(lambda: p.metrics.counters_fast("replayed"))
        self.reader = None
        if self.verdicts:
            self.reader = VerdictReader({"bootstrap_servers": servers, **cfg},
                                        MODERATION_RESULTS, self.table)
            self.reader.start()
        self.aio, self.spool_path, self.closing = aio, spool_path, False
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        log.info("lab_kit.api %s: producer on %s, spool %s", self.variant, self.topic,
                 spool_path)

    async def close(self) -> None:
        """Refuse new posts, stop the verdict reader, close the producer (flush, or spool)."""
        self.closing = True
        if self.reader is not None:
            self.reader.stop()
        report = await self.aio.close(timeout=30)
        log.warning("lab_kit.api closed: accepted %d, acked %d, spooled (left on disk) "
                    "%d, lost %d", report.accepted, report.acked, report.spooled_pending,
                    report.lost)
        self._spool_lock.close()

    # --- POST /posts -----------------------------------------------------------------------------

    async def dispatch(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/posts" and scope["method"] == "POST":
            await self.post_posts(scope, receive, send)
        else:  # everything else (and the lifespan) through Starlette
            await self.starlette(scope, receive, send)

    async def post_posts(self, scope: dict, receive: Callable, send: Callable) -> None:
        """POST /posts as a plain ASGI handler: the hot path skips Starlette's request,
        routing and response objects (about half of the server's CPU per post)."""
        headers = dict(scope["headers"])
        try:
            body = await read_body(headers, receive, self.max_body_bytes)
            post = parse_post(body, headers.get(b"content-type", b"").decode("latin-1"))
            status, payload = await self.accept(post,
                                                b"wait=ack" in scope.get("query_string", b""))
        except ApiError as err:
            self.metrics.rejected.labels(err.field).inc()
            status, payload = err.status, {"error": str(err), "field": err.field,
                                           "limit": err.limit}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def accept(self, post: Any, wait_ack: bool) -> tuple[int, dict]:
        aio = self.aio
        if self.closing:
            raise ApiError(503, "server", "running", "server: shutting down")
        if self.variant == "blocking":
            return self.accept_blocking(post)
        try:
            pf = aio.submit(post)  # returns at once: the ack comes on the sender thread
        except BackpressureError as exc:
            raise ApiError(503, exc.field, exc.limit, str(exc)) from None
        except ProducerClosedError:
            raise ApiError(503, "server", "running", "server: shutting down") from None
        self.metrics.submitted.inc()
        self.table.add(post.post_id, ("pending", None, None))
        pf.add_done_callback(self.on_done)
        if wait_ack:
            try:
                d = await wrap_future(pf)  # the asyncio bridge: the loop keeps serving
            except Exception as exc:  # noqa: BLE001
                return 502, {"post_id": post.post_id, "status": "failed", "error": str(exc)}
            return 201, {"post_id": post.post_id, "status": "accepted", "delivery": d.outcome,
                         "partition": d.partition, "offset": d.offset}
        row, _ = self.table.get(post.post_id)
        return 202, {"post_id": post.post_id, "status": "accepted",
                     "delivery": row[0] if row else "pending"}

    def accept_blocking(self, post: Any) -> tuple[int, dict]:
        # THE MISTAKE, on purpose: send().get() inside async def blocks the event loop
        # for a whole broker round trip (or, with the broker down, up to the timeout).
        try:
            d = self.aio.producer.submit_sync(post, timeout=BLOCKING_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            self.metrics.failed.inc()
            raise ApiError(503, "broker", f"{BLOCKING_TIMEOUT_S} s",
                           f"broker: {type(exc).__name__}: {exc}") from None
        self.metrics.submitted.inc()
        self.metrics.acked.inc()
        self.table.add(post.post_id, ("acked", d.partition, d.offset))
        return 202, {"post_id": post.post_id, "status": "accepted", "delivery": "acked"}

    def on_done(self, pf: Any) -> None:  # sender thread (or the loop, for spooled posts)
        exc = pf.exception(0)
        if exc is not None:
            self.metrics.failed.inc()
            self.table.update(pf.post_id, ("failed", None, None))
            return
        d = pf.result(0)
        if d.outcome == "acked":
            self.metrics.acked.inc()
        else:
            self.metrics.spooled.inc()
        self.table.update(pf.post_id, (d.outcome, d.partition, d.offset))

    # --- the other routes (Starlette) ------------------------------------------------------------

    async def get_post(self, request: Request) -> Response:
        post_id = request.path_params["post_id"]
        row, verdict = self.table.get(post_id)
        if row is None:
            return JSONResponse({"error": f"post_id: {post_id} is unknown (or older than the "
                                          f"last {self.max_tracked} posts)", "field": "post_id",
                                 "limit": self.max_tracked}, status_code=404)
        return JSONResponse({"post_id": post_id, "delivery": row[0], "partition": row[1],
                             "offset": row[2], "moderation": verdict})

    async def healthz(self, request: Request) -> Response:
        p = self.aio.producer if self.aio else None
        return JSONResponse({
            "status": "ok", "variant": self.variant, "topic": self.topic, "pid": os.getpid(),
            "broker_healthy": bool(p and p.healthy), "in_flight": p.in_flight if p else 0,
            "spool_depth": len(p.spool) if p and p.spool is not None else 0,
            "tracked": len(self.table)})

    async def metrics_route(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


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
    Starlette app (``app.starlette``); ``app.metrics`` is the Prometheus registry's owner.
    The state and the routes are a :class:`PostApi`'s."""
    return PostApi(variant=variant, topic=topic, bootstrap=bootstrap, spool_dir=spool_dir,
                   max_body_bytes=max_body_bytes, max_tracked=max_tracked, verdicts=verdicts,
                   producer_config=producer_config, freeze_gc=freeze_gc).asgi


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
