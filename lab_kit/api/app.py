"""StreamSocial's post-submission HTTP API: the user's side of the async producer.

An ASGI app (Starlette) served by uvicorn on 127.0.0.1. Routes:

* ``POST /posts`` — a post as JSON (``user_id``, ``text``, optional ``post_id``,
  ``media_urls``, ``lang``, ``reply_to``, ``created_at``). Validated with
  :func:`lab_kit.posts.validate_post`, handed to ``AsyncPostProducer.submit()`` and answered
  ``202 {"post_id", "status": "accepted", "delivery"}`` **without waiting for Kafka**
  (``delivery`` is ``pending``, or ``spooled`` while the broker is down). The query parameter
  ``wait=ack`` waits for the delivery through the asyncio bridge
  (:mod:`lab_kit.producer.asyncio_bridge`) and answers ``201`` (any other ``wait`` is 400);
  past ``wait_ack_timeout_s`` (10 s) it answers ``504`` with ``delivery: pending``: the post
  stays accepted, only the wait ended.
  Bad input: ``400`` (not JSON, or nested too deeply), ``408`` (the body did not arrive whole
  within ``body_timeout_s``), ``409`` (``post_id`` already taken, see below), ``413`` (body
  over ``max_body_bytes``, checked before it is read whole), ``415`` (not
  ``application/json``), ``422`` (a rule of the post: :func:`lab_kit.posts.validate_post`).
  Always ``{"error", "field", "limit"}``, never a traceback (``/posts/...`` 404s and 405s too).
* **Backpressure, the contract**: when the API cannot accept a post *durably* it answers
  ``503`` with ``Retry-After`` and the same JSON body, and the post was not accepted: the
  producer's in-flight bound under ``block``/``reject`` (``field`` ``max_in_flight``,
  ``Retry-After: 1``); the spool at its cap while the broker is away (``spool_rows``,
  ``spool_bytes``, ``disk_free``; ``spool_max_rows``/``spool_max_bytes``, defaults 1,000,000
  posts and 256 MiB, see :mod:`lab_kit.producer.spool`) or the disk full (``disk``),
  ``Retry-After: 5``; shutting down (``server``). What a ``202`` promises: the post is on
  Kafka, in the client's buffer (memory), or in the spool (on disk, committed to SQLite's WAL
  with ``synchronous=NORMAL``: it survives a kill of this process, not a power cut). A post
  in the client's buffer dies with the process (kill -9, the OOM killer) before Kafka or the
  spool has it: a 202 survives ``SIGTERM`` (shutdown spools what is left), not ``kill -9``.
  ``?wait=ack`` (201) answers once Kafka acknowledged the post (``acks=all``;
  ``"acknowledged": true``) or the spool has it committed *and fsynced* (a group commit: the
  requests waiting share one fsync of the WAL, :meth:`lab_kit.producer.spool.Spool.sync`).
  ``"durable"`` means what the lab's vocabulary says: true for the fsynced spool row, and for
  an ack only on a topic whose every ack is on two brokers or more (``acks=all``, replication
  factor and ``min.insync.replicas`` at least 2: :func:`lab_kit.topics.ack_is_durable`, read
  from the broker at startup); on the lab's one broker an ack is one copy, so ``false``.
  Either way a 201's post no longer depends on this process: it survives ``kill -9`` of
  every worker (``python -m lab_kit drill api-crash`` shows both
  answers side by side). uvicorn adds its own plain ``503`` past
  ``limit_concurrency`` (:data:`~lab_kit.api.errors.LIMIT_CONCURRENCY`) connections.
* **A client-chosen** ``post_id`` (1-64 of ``A-Z a-z 0-9 . _ : -``) is unique among the posts
  this worker tracks: a second post with an id in the table is refused ``409`` and nothing is
  sent; the first keeps its status row (a retry of an accepted post gets 409 too: it was
  accepted already). Ids older than the last ``max_tracked`` posts, or taken on another
  worker, are not checked: omit ``post_id`` to get a fresh uuid.
* ``GET /posts/{post_id}`` — ``pending | acked | spooled | failed`` and the moderation
  verdict once ``moderation.results`` has one. The table is bounded (``max_tracked``,
  oldest forgotten first): an unknown or forgotten id is ``404``.
* ``GET /healthz`` — liveness, plus broker health, in-flight count and spool depth (read from
  the spool's counters: no ``COUNT(*)`` on a request).
* ``GET /metrics`` — Prometheus text format (``prometheus_client``): requests by route and
  status, latency histograms, posts submitted/acked/spooled/failed/rejected, in flight. Every
  label value comes from a fixed set (:data:`lab_kit.api.metrics.REJECT_FIELDS`, routes).

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

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lab_kit import broker
from lab_kit.api.body import parse_post, read_body
from lab_kit.api.errors import (
    API_CLIENTS,
    BLOCKING_TIMEOUT_S,
    BODY_TIMEOUT_S,
    DEFAULT_API_CLIENT,
    MAX_BODY_BYTES,
    MAX_TRACKED,
    RETRY_AFTER_BUSY_S,
    RETRY_AFTER_FULL_S,
    VARIANTS,
    WAIT_ACK_TIMEOUT_S,
    ApiError,
)
from lab_kit.api.metrics import ApiMetrics, Timing, field_label
from lab_kit.api.status import StatusTable, VerdictReader
from lab_kit.json_codec import dumps
from lab_kit.producer import BackpressureError, ProducerClosedError
from lab_kit.producer.asyncio_bridge import AioPostProducer, wrap_future
from lab_kit.producer.spool import SpoolError, SpoolFullError
from lab_kit.topics import MODERATION_RESULTS, POSTS, acks_durable_on

# the name it logged under as lab_kit/api.py ("lab_kit.api: lab_kit.api closed: ...")
log = logging.getLogger("lab_kit.api")


#: a worker's spool file, by slot number (``SPOOL_SLOT.format("*")`` globs them all)
SPOOL_SLOT = "api-{}.spool.db"


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
        return spool_dir / SPOOL_SLOT.format(n), handle
    raise RuntimeError(f"no free spool slot in {spool_dir}")


def wait_for_ack(query_string: bytes) -> bool:
    """``?wait=ack`` as a query parameter (not a substring of the query): True for
    ``wait=ack``, False without ``wait``, 400 for any other value."""
    if not query_string:
        return False
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("wait")
    if values is None:
        return False
    if values != ["ack"] * len(values):
        raise ApiError(400, "wait", "ack", "wait: the only value is ack (?wait=ack)")
    return True


def _shutting_down() -> ApiError:
    return ApiError(503, "server", "running", "server: shutting down",
                    retry_after=RETRY_AFTER_FULL_S)


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
                 verdicts: bool | None, producer_config: dict | None, freeze_gc: bool,
                 body_timeout_s: float = BODY_TIMEOUT_S,
                 wait_ack_timeout_s: float = WAIT_ACK_TIMEOUT_S):
        if variant not in VARIANTS:
            raise ValueError(f"variant: {variant!r} is not one of {VARIANTS}")
        if max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: must be >= 1024, got {max_body_bytes}")
        self.variant, self.topic, self.bootstrap = variant, topic, bootstrap
        self.spool_dir, self.max_body_bytes = spool_dir, max_body_bytes
        self.body_timeout_s = body_timeout_s
        if not 0 < wait_ack_timeout_s <= 300:
            raise ValueError(f"wait_ack_timeout_s: must be in (0, 300] s, got {wait_ack_timeout_s}")
        self.wait_ack_timeout_s = wait_ack_timeout_s
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
        # Kafka's ack is durable only on a replicated topic (topics.ack_is_durable): False
        # until the broker has described the topic, and on the lab's one broker
        self.ack_durable = False
        self._stopped = threading.Event()  # set by close(): the durability thread stops

        self.starlette = Starlette(routes=[
            Route("/posts/{post_id}", self.get_post, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
        ], lifespan=self.lifespan, exception_handlers={
            HTTPException: self.http_error, Exception: self.server_error})
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
        # the spool's counters: a scrape never counts the table (nor waits for its lock)
        metrics.spool_depth.set_function(lambda: p.spool.rows if p.spool is not None else 0)
        metrics.spool_bytes.set_function(
            lambda: p.spool.payload_bytes if p.spool is not None else 0)
        metrics.broker_healthy.set_function(lambda: 1.0 if p.healthy else 0.0)
        metrics.replayed.set_function(lambda: p.metrics.counters_fast("replayed"))
        client_config = {"bootstrap_servers": servers, **cfg}
        self.reader = None
        if self.verdicts:
            self.reader = VerdictReader(client_config, MODERATION_RESULTS, self.table)
            self.reader.start()
        self.aio, self.spool_path, self.closing = aio, spool_path, False
        self._stopped.clear()
        threading.Thread(target=self._learn_ack_durability, args=(client_config, p.acks),
                         name="lab-api-durability", daemon=True).start()
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        log.info("lab_kit.api %s: producer on %s, spool %s", self.variant, self.topic,
                 spool_path)

    def _learn_ack_durability(self, client_config: dict, acks: Any) -> None:
        """Ask the broker how ``topic`` is replicated (off the loop, retried while the broker
        is away); until it answers, a 201 for an acked post says ``"durable": false``."""
        while True:
            try:
                self.ack_durable = acks_durable_on(client_config, self.topic, acks)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. no broker yet: ask again later
                log.debug("topic %s not described yet: %r", self.topic, exc)
            if self._stopped.wait(5.0):  # shutting down: stop asking
                return

    async def close(self) -> None:
        """Refuse new posts, stop the verdict reader, close the producer (flush, or spool)."""
        self.closing = True
        self._stopped.set()
        if self.reader is not None:
            self.reader.stop()
        report = await self.aio.close(timeout=30)
        # the vocabulary of the lessons: acked is not yet "delivered" (read back), a post left
        # in the spool is not delivered either (the next API on this spool sends it), and
        # "failed" is what neither Kafka, the spool nor the dead-letter topic holds
        (log.warning if report.lost == 0 else log.error)(
            "lab_kit.api closed: accepted %d; acked by Kafka %d; left in the spool on disk %d "
            "(not delivered yet: the next API on this spool sends them); lost %d (in neither "
            "Kafka, the spool nor the DLQ)", report.accepted, report.acked,
            report.spooled_pending, report.lost)
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
        extra: list[tuple[bytes, bytes]] = []
        try:
            wait_ack = wait_for_ack(scope.get("query_string", b""))
            body = await read_body(headers, receive, self.max_body_bytes, self.body_timeout_s)
            post = parse_post(body, headers.get(b"content-type", b"").decode("latin-1"))
            status, payload = await self.accept(post, wait_ack)
        except ApiError as err:
            self.metrics.rejected.labels(field_label(err.field)).inc()
            status, payload = err.status, err.body()
            extra = [(k.encode(), v.encode()) for k, v in err.headers().items()]
        except Exception:  # noqa: BLE001 - a bug: logged here, a JSON 500 for the client
            log.exception("POST /posts failed")
            status, payload = 500, {"error": "server: internal error (logged)",
                                    "field": "server", "limit": None}
        data = dumps(payload)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode()), *extra]})
        await send({"type": "http.response.body", "body": data})

    async def accept(self, post: Any, wait_ack: bool) -> tuple[int, dict]:
        aio = self.aio
        if self.closing or aio is None:
            raise _shutting_down()
        if post.post_id in self.table:  # never overwrite another post's status row
            raise ApiError(409, "post_id", "unique", f"post_id: {post.post_id} was accepted "
                           "already; the first post keeps it (omit post_id for a new one)")
        if self.variant == "blocking":
            return self.accept_blocking(post)
        try:
            pf = aio.submit(post)  # returns at once: the ack comes on the sender thread
        except BackpressureError as exc:
            raise ApiError(503, exc.field, exc.limit, str(exc),
                           retry_after=RETRY_AFTER_BUSY_S) from None
        except SpoolFullError as exc:  # the cap, or the disk: not accepted, try later
            raise ApiError(503, exc.field, exc.limit, str(exc),
                           retry_after=RETRY_AFTER_FULL_S) from None
        except SpoolError as exc:  # locked, gone, corrupt: cannot promise durability either
            log.error("POST /posts: the spool refused a post: %s", exc)
            raise ApiError(503, "spool", "writable spool", str(exc),
                           retry_after=RETRY_AFTER_FULL_S) from None
        except ProducerClosedError:
            raise _shutting_down() from None
        self.metrics.submitted.inc()
        self.table.add(post.post_id, ("pending", None, None))
        pf.add_done_callback(self.on_done)
        if wait_ack:
            try:  # the asyncio bridge: the loop keeps serving; the wait has an end
                d = await asyncio.wait_for(wrap_future(pf), self.wait_ack_timeout_s)
            except TimeoutError:
                return 504, {"post_id": post.post_id, "status": "accepted",
                             "delivery": "pending",
                             "error": f"no answer from Kafka within wait_ack_timeout_s="
                                      f"{self.wait_ack_timeout_s:g}; the post stays accepted "
                                      f"(GET /posts/{post.post_id} tells how it ends)"}
            except Exception as exc:  # noqa: BLE001
                return 502, {"post_id": post.post_id, "status": "failed", "error": str(exc)}
            if d.outcome == "spooled":  # committed; durable once the WAL is fsynced, and one
                try:                    # fsync serves every request waiting (group commit)
                    await asyncio.to_thread(aio.producer.spool.sync)
                except Exception as exc:  # noqa: BLE001 - the post stays accepted, not durable
                    return 503, {"post_id": post.post_id, "status": "accepted",
                                 "delivery": "spooled", "durable": False,
                                 "error": f"spool: fsync failed ({exc}); the post stays in "
                                          f"the spool, committed but not on the disk yet"}
            acked = d.outcome == "acked"  # else spooled, and the fsync above made it durable
            return 201, {"post_id": post.post_id, "status": "accepted", "delivery": d.outcome,
                         "acknowledged": acked, "durable": self.ack_durable if acked else True,
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
            shown = post_id if len(post_id) <= 80 else post_id[:80] + "..."
            return JSONResponse({"error": f"post_id: {shown} is unknown (or older than the "
                                          f"last {self.max_tracked} posts)", "field": "post_id",
                                 "limit": self.max_tracked}, status_code=404)
        return JSONResponse({"post_id": post_id, "delivery": row[0], "partition": row[1],
                             "offset": row[2], "moderation": verdict})

    async def healthz(self, request: Request) -> Response:
        p = self.aio.producer if self.aio else None
        return JSONResponse({
            "status": "ok", "variant": self.variant, "topic": self.topic, "pid": os.getpid(),
            "client": p.kafka_client if p else None,
            "broker_healthy": bool(p and p.healthy), "in_flight": p.in_flight if p else 0,
            "spool_depth": p.spool.rows if p and p.spool is not None else 0,  # a counter
            "tracked": len(self.table)})

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's 404/405 (and any HTTPException) with the API's JSON error body."""
        status = getattr(exc, "status_code", 400)
        err = ApiError(status, "route", None, f"route: {request.method} {request.url.path[:80]}"
                       f" -> {getattr(exc, 'detail', '')}")
        return JSONResponse(err.body(), status_code=status, headers=getattr(exc, "headers", None))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        """A bug in a route: logged by the server, a JSON 500 (no traceback) for the client."""
        return JSONResponse({"error": "server: internal error (logged)", "field": "server",
                             "limit": None}, status_code=500)

    async def metrics_route(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(*, variant: str = "async", topic: str = POSTS, bootstrap: str | None = None,
               spool_dir: str | Path | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               max_tracked: int = MAX_TRACKED, verdicts: bool | None = None,
               producer_config: dict | None = None, freeze_gc: bool = False,
               spool_max_rows: int | None = None, spool_max_bytes: int | None = None,
               body_timeout_s: float = BODY_TIMEOUT_S,
               wait_ack_timeout_s: float = WAIT_ACK_TIMEOUT_S,
               client: str = DEFAULT_API_CLIENT) -> Any:
    """The ASGI app. The producer is made at startup (lifespan) and closed at shutdown.

    ``freeze_gc`` (the served process, ``python -m lab_kit api``): once started, move every
    object alive then out of the garbage collector's sight (:func:`gc.freeze`). A full
    collection walks all the objects the process holds, with the event loop stopped: 55-95 ms
    here for the modules, the app and the Kafka client, which live until exit anyway.

    ``POST /posts`` is a plain ASGI handler; the other routes and the lifespan are a
    Starlette app (``app.starlette``); ``app.metrics`` is the Prometheus registry's owner.
    The state and the routes are a :class:`PostApi`'s.

    ``spool_max_rows`` / ``spool_max_bytes``: the spool's caps (None: the producer's defaults,
    1,000,000 posts and 256 MiB); past them a post is refused with 503 + ``Retry-After``.
    ``wait_ack_timeout_s``: how long ``?wait=ack`` waits for Kafka before ``504`` (the post
    stays accepted). ``client``: the producer's Kafka client (``kafka-python`` or
    ``confluent``, :data:`~lab_kit.api.errors.API_CLIENTS`)."""
    if client not in API_CLIENTS:
        raise ValueError(f"client: {client!r} is not one of {API_CLIENTS}")
    caps = {k: v for k, v in (("spool_max_rows", spool_max_rows),
                              ("spool_max_bytes", spool_max_bytes)) if v is not None}
    return PostApi(variant=variant, topic=topic, bootstrap=bootstrap, spool_dir=spool_dir,
                   max_body_bytes=max_body_bytes, max_tracked=max_tracked, verdicts=verdicts,
                   producer_config={"client": client, **caps, **(producer_config or {})},
                   freeze_gc=freeze_gc,
                   body_timeout_s=body_timeout_s, wait_ack_timeout_s=wait_ack_timeout_s).asgi


def create_app_from_env() -> Any:
    """uvicorn's factory (one call per worker process): settings from ``LAB_API_*``
    (``LAB_API_CLIENT``: the producer's Kafka client; ``LAB_API_SPOOL_MAX_ROWS`` and
    ``LAB_API_SPOOL_MAX_BYTES``: the spool's caps)."""
    env = os.environ
    rows, size = env.get("LAB_API_SPOOL_MAX_ROWS"), env.get("LAB_API_SPOOL_MAX_BYTES")
    return create_app(variant=env.get("LAB_API_VARIANT", "async"),
                      topic=env.get("LAB_API_TOPIC", POSTS),
                      bootstrap=env.get("LAB_API_BOOTSTRAP") or None,
                      spool_dir=env.get("LAB_API_SPOOL_DIR") or None,
                      max_body_bytes=int(env.get("LAB_API_MAX_BODY_BYTES", MAX_BODY_BYTES)),
                      verdicts={"1": True, "0": False}.get(env.get("LAB_API_VERDICTS", "")),
                      spool_max_rows=int(rows) if rows else None,
                      spool_max_bytes=int(size) if size else None, freeze_gc=True,
                      client=env.get("LAB_API_CLIENT") or DEFAULT_API_CLIENT)
