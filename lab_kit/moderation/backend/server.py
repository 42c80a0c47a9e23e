"""StreamSocial moderation backend: a real local HTTP service, its process manager and client.

Three parts:

* **The service** (``python -m lab_kit.moderation_backend --port P``): a stdlib
  :class:`~http.server.ThreadingHTTPServer` bound to loopback only.

  ========================  ===================================================================
  ``POST /moderate``        ``{"post_id","user_id","text"}`` ->
                            ``{"post_id","label","score","reasons","latency_ms"}``
                            (body at most 64 KiB)
  ``POST /moderate/batch``  ``{"posts": [{"post_id","user_id","text"}, ...]}`` (1 to
                            :data:`MAX_BATCH_POSTS` = 1000 posts, body at most 4 MiB) ->
                            ``{"results": [...], "latency_ms"}``: one entry per post, same
                            order, ``{"post_id","label","score","reasons"}`` or, for a bad post,
                            ``{"post_id": <as given or null>, "error", "field"}`` (one bad post
                            never fails the others)
  ``GET /health``           ``{"ok": true, "pid", "port", "uptime_s", "requests", "posts",
                            "rejected_429", "rejected_503", "in_flight", ...faults, ...settings}``
  ``GET /faults``           the current fault model and settings
  ``POST /faults``          update some of the faults ``latency_ms``, ``jitter_ms``,
                            ``error_rate``, ``garbage_rate`` and of the settings ``request_ms``,
                            ``post_ms``, ``capacity_per_s``, ``max_concurrent`` (unspecified
                            keys keep their value); answers like ``GET /faults``
  ``POST /faults/reset``    back to no faults and to the settings the process started with
  ========================  ===================================================================

  ``/health`` and ``/faults`` are never subject to faults, capacity or concurrency limits.

  **Status codes** of the moderation routes: 200; 400 ``{"error", "field"}`` for a bad request
  (the field and the limit are named); 413 body too large; 429 and 503 when overloaded (see
  below, answered at once, without any service time); 503 ``{"error": "injected fault: ..."}``
  for an injected error; 404 unknown route.

  **Cost model.** Each moderation request sleeps ``request_ms * (1 + U(-0.25, +0.25)) +
  n * post_ms`` (``n`` posts; a seeded RNG; defaults 1.0 ms and 0.02 ms) plus the injected
  latency ``max(0, latency_ms + U(-jitter_ms, +jitter_ms))`` (once per request). The sleep
  models work that runs elsewhere (a model server); the real scoring CPU
  (:func:`lab_kit.rules.score_post`, with a per-process :class:`~lab_kit.rules.RepeatTracker`)
  happens too. Then, per request, with probability ``error_rate`` it answers HTTP 503, else with
  probability ``garbage_rate`` a 200 whose body is not JSON, else the verdicts.

  **Capacity.** Two limits are checked, in this order, before any of that:

  * ``max_concurrent`` (default 16, 0 = unlimited): requests being served at once. One more
    gets **503** ``{"error": "overloaded: N requests in progress", "field": "max_concurrent"}``.
  * ``capacity_per_s`` (default 50000 posts/s, 0 = unlimited): a token bucket of posts,
    refilled at that rate, holding at most ``BURST_S`` = 0.2 s worth (at least 1 post). A
    request of ``n`` posts needs ``min(n, burst)`` tokens and takes ``n``: a batch bigger than
    the burst is admitted when the bucket is full and leaves it in debt, so one max batch can
    always get through and the long-run rate never exceeds the capacity. Too few tokens ->
    **429** ``{"error": "overloaded: capacity N posts/s", "field": "capacity_per_s",
    "retry_after_s": x}`` with a ``Retry-After`` header (whole seconds, rounded up).

  Settings are CLI flags (``--request-ms``, ``--post-ms``, ``--capacity-per-s``,
  ``--max-concurrent``), can be changed at run time through ``POST /faults`` (a new capacity
  starts with a full bucket) and go back to their start values on ``POST /faults/reset``.
  Counters in ``/health``: ``requests`` and ``posts`` admitted (including injected faults),
  ``rejected_429``, ``rejected_503``, ``errors_injected``, ``garbage_injected``. No
  per-request logging.

* **The process manager** :class:`ModerationBackend`: starts the service as a detached
  process (like a broker), and produces *real* outages: :meth:`~ModerationBackend.stop`,
  :meth:`~ModerationBackend.kill` (SIGKILL), :meth:`~ModerationBackend.pause` (SIGSTOP: the
  port still accepts connections but nothing answers), :meth:`~ModerationBackend.set_faults`
  (slow / failing / garbage answers, or other settings). A JSON state file lets another
  process find it again (:meth:`ModerationBackend.load`). Only a pid whose command line
  contains ``lab_kit.moderation_backend`` and whose start time matches the record is ever
  signalled.

* **The client** :class:`ModerationClient`: one persistent keep-alive ``http.client``
  connection with a per-operation timeout, raising typed errors (all subclasses of
  :class:`ModerationBackendError`); :meth:`ModerationClient.moderate_batch` sends many posts in
  one request. Not thread-safe: one client per thread.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import psutil

from lab_kit.machine import write_json_atomic
from lab_kit.moderation.rules import LABELS, RepeatTracker, Verdict, score_post, score_post_fields

__all__ = [
    "ModerationBackendError",
    "BackendUnavailable",
    "BackendTimeout",
    "BackendError",
    "BackendGarbage",
    "BackendBadRequest",
    "BackendOverloaded",
    "ModerationResult",
    "ModerationClient",
    "ModerationBackend",
    "default_state_dir",
    "FAULT_KEYS",
    "SETTING_KEYS",
    "DEFAULT_SETTINGS",
    "MAX_BATCH_POSTS",
    "main",
]

MODULE = "lab_kit.moderation.backend"
# a backend started before the package layout ran as this module: still found, still stoppable
LEGACY_MODULES = ("lab_kit.moderation_backend",)
DEFAULT_HOST = "127.0.0.1"
FAULT_KEYS = ("latency_ms", "jitter_ms", "error_rate", "garbage_rate")
SETTING_KEYS = ("request_ms", "post_ms", "capacity_per_s", "max_concurrent")
DEFAULT_SETTINGS: dict[str, float | int] = {
    "request_ms": 1.0,  # fixed service time per moderation request
    "post_ms": 0.02,  # service time per post
    "capacity_per_s": 50_000.0,  # token bucket of posts per second (0 = unlimited)
    "max_concurrent": 16,  # requests served at once (0 = unlimited)
}
REQUEST_JITTER = 0.25  # request_ms varies by +-25 % (seeded RNG)
BURST_S = 0.2  # the token bucket holds this many seconds' worth of posts
MAX_BATCH_POSTS = 1000
MAX_BODY_BYTES = 64 * 1024  # POST /moderate and the admin routes
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024  # POST /moderate/batch
IDLE_TIMEOUT_S = 30.0  # server closes idle keep-alive connections after this
STATE_FILE_NAME = "backend.json"
LOG_FILE_NAME = "backend.log"


# =========================================================================================
# Errors and result
# =========================================================================================


class ModerationBackendError(Exception):
    """Base class of all client-side moderation backend errors.

    ``retryable`` tells whether trying again later (or falling back) makes sense.
    """

    retryable = True


class BackendUnavailable(ModerationBackendError):
    """Connection refused / reset / closed: the backend process is not there."""


class BackendTimeout(ModerationBackendError):
    """No answer within the client's timeout (slow or paused backend)."""


class BackendError(ModerationBackendError):
    """The backend answered an HTTP 5xx (or another unexpected non-200 status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BackendOverloaded(BackendError):
    """The backend refused the request because it is at capacity, before doing any work:
    HTTP 429 (more posts per second than its ``capacity_per_s``) or an "overloaded" 503
    (``max_concurrent`` requests already in progress). Shed load or retry after
    ``retry_after_s`` seconds (0.0 when the backend gave no hint). ``field`` names the limit."""

    def __init__(
        self,
        message: str,
        status: int = 429,
        retry_after_s: float = 0.0,
        field: str | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s
        self.field = field


class BackendGarbage(ModerationBackendError):
    """The backend answered 200 but the body is not JSON or not the expected schema."""


class BackendBadRequest(ModerationBackendError):
    """HTTP 400: the request itself is wrong (a client bug); retrying will not help."""

    retryable = False

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ModerationResult:
    """A verdict from the backend. ``latency_ms`` is server-side, ``rtt_ms`` client-side."""

    label: str
    score: float
    reasons: tuple[str, ...]
    latency_ms: float
    post_id: str | int | None = None
    rtt_ms: float = 0.0

    @property
    def verdict(self) -> Verdict:
        return Verdict(self.label, self.score, self.reasons)


# =========================================================================================
# Client
# =========================================================================================


def _parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"expected a URL like http://127.0.0.1:8081, got {url!r}")
    return parts.hostname, parts.port


def _snippet(data: bytes, n: int = 60) -> str:
    return repr(data[:n]) + ("..." if len(data) > n else "")


class ModerationClient:
    """HTTP client for the moderation backend over one persistent keep-alive connection.

    ``timeout_s`` bounds every socket operation (connect, send, each receive). After any
    failure the connection is dropped and the next call reconnects, so the same client keeps
    working after the backend is restarted. If a *reused* connection turns out to be closed
    by the server (idle timeout, restart) the request is retried once on a fresh connection.

    **Not thread-safe**: use one client per thread (concurrent use raises ``RuntimeError``).
    The connection is the client's state, so several threads sharing one client would
    serialize on it anyway; one client per thread gives one connection per thread.
    """

    def __init__(self, url: str, timeout_s: float = 0.5) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.url = url.rstrip("/")
        self.host, self.port = _parse_url(self.url)
        self.timeout_s = float(timeout_s)
        self._conn: http.client.HTTPConnection | None = None
        self._busy = threading.Lock()

    def __repr__(self) -> str:
        return f"ModerationClient({self.url!r}, timeout_s={self.timeout_s})"

    def __enter__(self) -> ModerationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- public API ------------------------------------------------------------------------

    def moderate(self, post_id: str | int, user_id: str, text: str) -> ModerationResult:
        """Ask the backend for a verdict. Raises a :class:`ModerationBackendError` subclass."""
        t0 = time.perf_counter()
        payload = {"post_id": post_id, "user_id": user_id, "text": text}
        _status, doc = self._call("POST", "/moderate", payload)
        rtt_ms = (time.perf_counter() - t0) * 1000.0
        return _parse_result(doc, post_id, rtt_ms)

    def moderate_batch(
        self, posts: Sequence[tuple[str | int, str, str]]
    ) -> list[ModerationResult | BackendBadRequest]:
        """Verdicts for many ``(post_id, user_id, text)`` posts in ONE request.

        Returns one entry per post, in order: a :class:`ModerationResult`, or a
        :class:`BackendBadRequest` *instance* (not raised; ``.field`` names the bad field) for
        a post the backend refused on its own. ``latency_ms`` / ``rtt_ms`` are those of the
        whole request. An empty ``posts`` returns ``[]`` without a request. Whole-request
        failures raise as for :meth:`moderate`: :class:`BackendOverloaded` (429, or 503
        "overloaded"), :class:`BackendError` (other 5xx), :class:`BackendGarbage` (not JSON,
        wrong schema, wrong number of results), :class:`BackendBadRequest` (e.g. more than
        :data:`MAX_BATCH_POSTS` posts), :class:`BackendTimeout`, :class:`BackendUnavailable`.
        """
        if not posts:
            return []
        t0 = time.perf_counter()
        payload = {"posts": [{"post_id": p, "user_id": u, "text": t} for p, u, t in posts]}
        _status, doc = self._call("POST", "/moderate/batch", payload)
        rtt_ms = (time.perf_counter() - t0) * 1000.0
        return _parse_batch(doc, posts, rtt_ms)

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")[1]

    def get_faults(self) -> dict[str, float]:
        return self._call("GET", "/faults")[1]

    def set_faults(self, **faults: float) -> dict[str, float]:
        """Update some fault knobs (:data:`FAULT_KEYS`) and/or settings (:data:`SETTING_KEYS`);
        returns the full fault model and settings."""
        return self._call("POST", "/faults", faults)[1]

    def reset_faults(self) -> dict[str, float]:
        return self._call("POST", "/faults/reset", {})[1]

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("ModerationClient is not thread-safe: use one client per thread")
        try:
            status, data = self._roundtrip(method, path, payload)
        finally:
            self._busy.release()
        return status, _decode(status, data)

    def _roundtrip(self, method: str, path: str, payload: Any) -> tuple[int, bytes]:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout_s
                )
            conn = self._conn
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except TimeoutError as e:
                self.close()
                raise BackendTimeout(
                    f"no answer from {self.url}{path} within {self.timeout_s:g}s"
                ) from e
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
                # includes http.client.RemoteDisconnected
                self.close()
                if reused and attempt == 0:
                    continue  # stale keep-alive connection: retry once on a fresh one
                raise BackendUnavailable(f"connection to {self.url} lost: {e!r}") from e
            except http.client.IncompleteRead as e:
                self.close()
                raise BackendUnavailable(f"{self.url} closed mid-answer: {e!r}") from e
            except http.client.HTTPException as e:
                self.close()
                raise BackendGarbage(f"malformed HTTP answer from {self.url}: {e!r}") from e
            except OSError as e:  # ConnectionRefusedError, unreachable, ...
                self.close()
                raise BackendUnavailable(f"cannot reach {self.url}: {e!r}") from e
        raise AssertionError("unreachable")  # pragma: no cover


def _decode(status: int, data: bytes) -> Any:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    if status == 200:
        if doc is None:
            raise BackendGarbage(f"response body is not JSON: {_snippet(data)}")
        return doc
    is_dict = isinstance(doc, dict)
    field = doc.get("field") if is_dict else None
    msg = doc.get("error") if is_dict else _snippet(data)
    if status == 400:
        raise BackendBadRequest(f"HTTP 400: {msg}", field=field)
    if status == 429 or (status == 503 and isinstance(msg, str) and msg.startswith("overloaded")):
        retry = doc.get("retry_after_s") if is_dict else None
        if isinstance(retry, bool) or not isinstance(retry, int | float) or not retry >= 0:
            retry = 0.0
        raise BackendOverloaded(
            f"HTTP {status}: {msg}", status=status, retry_after_s=float(retry), field=field
        )
    raise BackendError(f"HTTP {status}: {_snippet(data)}", status=status)


def _parse_result(doc: Any, post_id: str | int, rtt_ms: float) -> ModerationResult:
    if not isinstance(doc, dict):
        raise BackendGarbage(f"expected a JSON object, got {type(doc).__name__}")
    for key in ("post_id", "label", "score", "reasons", "latency_ms"):
        if key not in doc:
            raise BackendGarbage(f"answer lacks field {key!r}")
    label, score, reasons, latency = doc["label"], doc["score"], doc["reasons"], doc["latency_ms"]
    if doc["post_id"] != post_id:
        raise BackendGarbage(f"field 'post_id' is {doc['post_id']!r}, expected {post_id!r}")
    if label not in LABELS:
        raise BackendGarbage(f"field 'label' is {label!r}, not one of {LABELS}")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise BackendGarbage(f"field 'score' is {score!r}, not a number in [0, 1]")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise BackendGarbage(f"field 'reasons' is {reasons!r}, not a list of strings")
    if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
        raise BackendGarbage(f"field 'latency_ms' is {latency!r}, not a number >= 0")
    return ModerationResult(
        label, float(score), tuple(reasons), float(latency), post_id=post_id, rtt_ms=rtt_ms
    )


_LABEL_SET = frozenset(LABELS)


def _bad_result(i: int, key: str, value: Any, problem: str) -> BackendGarbage:
    return BackendGarbage(f"results[{i}]{key} is {_snippet(repr(value).encode())}, {problem}")


def _parse_batch(
    doc: Any, posts: Sequence[tuple[str | int, str, str]], rtt_ms: float
) -> list[ModerationResult | BackendBadRequest]:
    """Check a ``/moderate/batch`` answer against the posts sent. On the hot path (thousands
    of posts per second), so one tight loop with exact type checks."""
    if not isinstance(doc, dict):
        raise BackendGarbage(f"expected a JSON object, got {type(doc).__name__}")
    results, latency = doc.get("results"), doc.get("latency_ms")
    if type(results) is not list:
        raise BackendGarbage(f"field 'results' is {_snippet(repr(results).encode())}, "
                             "not a list")
    if len(results) != len(posts):
        raise BackendGarbage(f"{len(results)} results for {len(posts)} posts")
    if isinstance(latency, bool) or not isinstance(latency, int | float) or not latency >= 0:
        raise BackendGarbage(f"field 'latency_ms' is {latency!r}, not a number >= 0")
    latency = float(latency)
    out: list[ModerationResult | BackendBadRequest] = []
    append = out.append
    for (post_id, _user, _text), r in zip(posts, results, strict=False):  # same length
        if type(r) is not dict:
            raise _bad_result(len(out), "", r, "not an object")
        label = r.get("label")
        if type(label) is str and label in _LABEL_SET:
            score, reasons = r.get("score"), r.get("reasons")
            if r.get("post_id") != post_id:
                raise _bad_result(len(out), ".post_id", r.get("post_id"), f"not {post_id!r}")
            ts = type(score)
            if not ((ts is float or ts is int) and 0 <= score <= 1):
                raise _bad_result(len(out), ".score", score, "not a number in [0, 1]")
            if type(reasons) is not list or (
                reasons and not all(type(x) is str for x in reasons)
            ):
                raise _bad_result(len(out), ".reasons", reasons, "not a list of strings")
            append(ModerationResult(label, float(score), tuple(reasons), latency, post_id,
                                    rtt_ms))
        elif label is None and type(r.get("error")) is str:
            echoed, field = r.get("post_id"), r.get("field")
            if echoed is not None and echoed != post_id:
                raise _bad_result(len(out), ".post_id", echoed, f"not {post_id!r}")
            append(BackendBadRequest(f"post {post_id!r}: {r['error']}",
                                     field=field if type(field) is str else None))
        else:
            raise _bad_result(len(out), ".label", label, f"not one of {LABELS}")
    return out


# =========================================================================================
# Server
# =========================================================================================


class _RequestError(Exception):
    """An error answer: ``{"error": message, "field": field, **extra}`` plus ``headers``."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.extra, self.headers = extra or {}, headers or {}


def _check_setting(key: str, value: Any, name: str | None = None) -> float | int:
    """``value`` validated for the fault or setting ``key`` (see :data:`FAULT_KEYS`,
    :data:`SETTING_KEYS`): a finite number >= 0, a rate within [0, 1], ``max_concurrent`` a
    whole number (returned as int). Raises ``ValueError`` naming ``name`` (default ``key``)."""
    name = name or key
    if key not in FAULT_KEYS and key not in SETTING_KEYS:
        raise ValueError(f"unknown setting {key!r}; known: {FAULT_KEYS + SETTING_KEYS}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if key.endswith("_rate") and not 0 <= value <= 1:
        raise ValueError(f"{name} must be within [0, 1], got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if key == "max_concurrent":
        if value != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _number(x: float) -> str:
    """50000.0 -> "50000", 2.5 -> "2.5" (never an exponent)."""
    return str(int(x)) if x == int(x) else repr(x)


def _settings(overrides: dict[str, Any] | None = None) -> dict[str, float | int]:
    """DEFAULT_SETTINGS updated with validated ``overrides`` (ValueError if one is bad)."""
    out = dict(DEFAULT_SETTINGS)
    for key, value in (overrides or {}).items():
        if key not in SETTING_KEYS:
            raise ValueError(f"unknown setting {key!r}; known: {SETTING_KEYS}")
        out[key] = _check_setting(key, value)
    return out


class _ServiceState:
    """Faults, settings, admission control (concurrency + token bucket), RNG, repeat tracker
    and counters shared by the handler threads. Everything mutable is guarded by ``lock``."""

    def __init__(self, seed: int, settings: dict[str, Any] | None = None) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.faults = dict.fromkeys(FAULT_KEYS, 0.0)
        self.initial_settings = _settings(settings)
        self.settings = dict(self.initial_settings)
        self.tracker = RepeatTracker(max_users=10_000, window_s=60.0)
        self.started = time.monotonic()
        self.counters = {
            "requests": 0,
            "posts": 0,
            "errors_injected": 0,
            "garbage_injected": 0,
            "rejected_429": 0,
            "rejected_503": 0,
        }
        self.in_flight = 0
        self._fill_bucket()

    def _fill_bucket(self) -> None:  # lock held (or not shared yet)
        self.tokens = self._burst()
        self.refilled_at = time.monotonic()

    def _burst(self) -> float:
        return max(1.0, self.settings["capacity_per_s"] * BURST_S)

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return {**self.faults, **self.settings}

    def update(self, changes: Any) -> dict[str, float]:
        if not isinstance(changes, dict):
            raise _RequestError(400, "body must be a JSON object", "body")
        clean: dict[str, float | int] = {}
        for key, value in changes.items():
            if key not in FAULT_KEYS and key not in SETTING_KEYS:
                raise _RequestError(
                    400, f"unknown fault or setting {key!r}; known: {FAULT_KEYS + SETTING_KEYS}",
                    key,
                )
            try:
                clean[key] = _check_setting(key, value, f"field {key!r}")
            except ValueError as e:
                raise _RequestError(400, str(e), key) from None
        with self.lock:
            capacity = self.settings["capacity_per_s"]
            for key, value in clean.items():
                (self.faults if key in FAULT_KEYS else self.settings)[key] = value
            if self.settings["capacity_per_s"] != capacity:
                self._fill_bucket()
            return {**self.faults, **self.settings}

    def reset(self) -> dict[str, float]:
        with self.lock:
            self.faults = dict.fromkeys(FAULT_KEYS, 0.0)
            self.settings = dict(self.initial_settings)
            self._fill_bucket()
            return {**self.faults, **self.settings}

    def health(self) -> dict[str, Any]:
        with self.lock:
            return {**self.counters, "in_flight": self.in_flight, **self.faults,
                    **self.settings}

    def admit(self, n: int) -> tuple[float, str, int]:
        """Admit one moderation request of ``n`` posts, or raise the 503/429 answer at once.

        Returns (delay s, outcome ok|error|garbage, garbage kind); the caller must call
        :meth:`release` once the answer is sent.
        """
        with self.lock:
            s, c = self.settings, self.counters
            limit = s["max_concurrent"]
            if limit and self.in_flight >= limit:
                c["rejected_503"] += 1
                raise _RequestError(
                    503, f"overloaded: {self.in_flight} requests in progress", "max_concurrent"
                )
            rate = s["capacity_per_s"]
            if rate:
                now = time.monotonic()
                burst = self._burst()
                tokens = min(burst, self.tokens + (now - self.refilled_at) * rate)
                self.refilled_at = now
                need = min(n, burst)
                if tokens < need:
                    self.tokens = tokens
                    c["rejected_429"] += 1
                    retry_s = math.ceil((need - tokens) / rate * 1000.0) / 1000.0
                    raise _RequestError(
                        429,
                        f"overloaded: capacity {_number(rate)} posts/s",
                        "capacity_per_s",
                        extra={"retry_after_s": retry_s},
                        headers={"Retry-After": str(max(1, math.ceil(retry_s)))},
                    )
                self.tokens = tokens - n
            self.in_flight += 1
            c["requests"] += 1
            c["posts"] += n
            rng, f = self.rng, self.faults
            service_ms = s["request_ms"] * (1.0 + rng.uniform(-REQUEST_JITTER, REQUEST_JITTER))
            service_ms += n * s["post_ms"]
            jitter = rng.uniform(-f["jitter_ms"], f["jitter_ms"]) if f["jitter_ms"] else 0.0
            added_ms = max(0.0, f["latency_ms"] + jitter)
            outcome = "ok"
            if f["error_rate"] and rng.random() < f["error_rate"]:
                outcome = "error"
                c["errors_injected"] += 1
            elif f["garbage_rate"] and rng.random() < f["garbage_rate"]:
                outcome = "garbage"
                c["garbage_injected"] += 1
            garbage_kind = rng.randrange(3)
        return (service_ms + added_ms) / 1000.0, outcome, garbage_kind

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1


_GARBAGE_BODIES = (
    b'{"post_id": "p1", "label": "appr',  # truncated JSON
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",  # a proxy error page
    b"\x00\xff\xfeOK\x13\x37",  # binary noise
)


def _require(doc: dict, key: str, types: tuple[type, ...], what: str) -> Any:
    if key not in doc:
        raise _RequestError(400, f"missing field {key!r}", key)
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise _RequestError(400, f"field {key!r} must be {what}", key)
    return value


def _item_error(item: Any) -> dict[str, Any]:
    """The per-post error entry of a batch answer for a post that is not valid."""
    if not isinstance(item, dict):
        return {"post_id": None, "error": "post must be a JSON object", "field": "post"}
    try:
        _require(item, "post_id", (str, int), "a string or an integer")
        _require(item, "user_id", (str,), "a string")
        _require(item, "text", (str,), "a string")
    except _RequestError as e:
        return {"post_id": item.get("post_id"), "error": e.message, "field": e.field}
    raise AssertionError("_item_error() called for a valid post")  # pragma: no cover


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "StreamSocialModeration/1.0"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- helpers ---------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc).encode("utf-8"), headers=headers)

    def _read_json(self, max_bytes: int = MAX_BODY_BYTES) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise _RequestError(411, "Content-Length required", "Content-Length")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise _RequestError(400, "bad Content-Length", "Content-Length") from None
        if n < 0 or n > max_bytes:
            self.close_connection = True
            raise _RequestError(413, f"body larger than {max_bytes} bytes", "body")
        raw = self.rfile.read(n)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise _RequestError(400, f"invalid JSON body: {e}", "body") from None

    def _dispatch(self, routes: dict[str, Any]) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        route = routes.get(path)
        try:
            if route is None:
                raise _RequestError(404, f"no route {self.command} {path}", "path")
            route()
        except _RequestError as e:
            self._send_json(e.status, {"error": e.message, "field": e.field, **e.extra},
                            headers=e.headers)

    def _serve(self, n_posts: int, answer: Callable[[], bytes]) -> None:
        """Admission control, cost model and faults around one moderation request; the
        ``answer()`` body (the real scoring) is only computed for an "ok" outcome."""
        state = self.server.state
        delay_s, outcome, garbage_kind = state.admit(n_posts)  # 429/503 raised at once
        try:
            time.sleep(delay_s)
            if outcome == "error":
                self._send_json(503, {"error": "injected fault: service unavailable"})
            elif outcome == "garbage":
                self._send(200, _GARBAGE_BODIES[garbage_kind % len(_GARBAGE_BODIES)])
            else:
                self._send(200, answer())
        finally:
            state.release()

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch({"/health": self._health, "/faults": self._get_faults})

    def do_POST(self) -> None:
        self._dispatch(
            {
                "/moderate": self._moderate,
                "/moderate/batch": self._moderate_batch,
                "/faults": self._set_faults,
                "/faults/reset": self._reset_faults,
            }
        )

    def _health(self) -> None:
        st = self.server.state
        doc = {
            "ok": True,
            "pid": os.getpid(),
            "port": self.server.server_address[1],
            "uptime_s": round(time.monotonic() - st.started, 3),
            **st.health(),
        }
        self._send_json(200, doc)

    def _get_faults(self) -> None:
        self._send_json(200, self.server.state.snapshot())

    def _set_faults(self) -> None:
        self._send_json(200, self.server.state.update(self._read_json()))

    def _reset_faults(self) -> None:
        if self.headers.get("Content-Length"):
            self._read_json()  # drain the (ignored) body to keep the connection usable
        self._send_json(200, self.server.state.reset())

    def _moderate(self) -> None:
        t0 = time.perf_counter()
        doc = self._read_json()
        if not isinstance(doc, dict):
            raise _RequestError(400, "body must be a JSON object", "body")
        post_id = _require(doc, "post_id", (str, int), "a string or an integer")
        user_id = _require(doc, "user_id", (str,), "a string")
        text = _require(doc, "text", (str,), "a string")
        tracker = self.server.state.tracker

        def answer() -> bytes:
            verdict = score_post(user_id, text, repeat_tracker=tracker, post_id=post_id)
            return json.dumps(
                {
                    "post_id": post_id,
                    "label": verdict.label,
                    "score": verdict.score,
                    "reasons": list(verdict.reasons),
                    "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3),
                }
            ).encode("utf-8")

        self._serve(1, answer)

    def _moderate_batch(self) -> None:
        t0 = time.perf_counter()
        doc = self._read_json(MAX_BATCH_BODY_BYTES)
        if not isinstance(doc, dict):
            raise _RequestError(400, "body must be a JSON object", "body")
        if "posts" not in doc:
            raise _RequestError(400, "missing field 'posts'", "posts")
        posts = doc["posts"]
        if not isinstance(posts, list) or not posts:
            raise _RequestError(
                400,
                f"field 'posts' must be a non-empty list of at most {MAX_BATCH_POSTS} posts",
                "posts",
            )
        if len(posts) > MAX_BATCH_POSTS:
            raise _RequestError(
                400,
                f"field 'posts' has {len(posts)} posts, more than the limit of "
                f"{MAX_BATCH_POSTS}",
                "posts",
            )
        tracker = self.server.state.tracker

        def answer() -> bytes:
            results: list[dict[str, Any]] = []
            append = results.append
            for item in posts:  # hot loop: exact type checks, errors only for bad posts
                if type(item) is dict:
                    get = item.get
                    post_id, user_id, text = get("post_id"), get("user_id"), get("text")
                    tp = type(post_id)
                    if (tp is str or tp is int) and type(user_id) is str and type(text) is str:
                        label, score, reasons = score_post_fields(user_id, text, tracker, post_id)
                        append({"post_id": post_id, "label": label, "score": score,
                                "reasons": reasons})
                        continue
                append(_item_error(item))
            latency_ms = round((time.perf_counter() - t0) * 1000.0, 3)
            return json.dumps({"results": results, "latency_ms": latency_ms}).encode("utf-8")

        self._serve(len(posts), answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # rebind the same port right after a kill/restart
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], state: _ServiceState) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # client gave up (timeout) or went away: normal in this lab
        print(f"moderation backend: error serving {client_address}: {exc!r}", file=sys.stderr)


def _check_loopback(host: str) -> str:
    if host == "localhost":
        return DEFAULT_HOST
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is None or addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"host must be a loopback IPv4 address (127.x.x.x), got {host!r}")
    return host


def _read_state(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
        return None
    if not isinstance(doc.get("port"), int):
        return None
    return doc


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def serve(host: str = DEFAULT_HOST, port: int = 0, state_file: Path | None = None,
          seed: int = 0, settings: dict[str, Any] | None = None) -> None:
    """Run the service in the current process until SIGTERM/SIGINT. ``settings``: some of
    :data:`SETTING_KEYS` (the rest keep :data:`DEFAULT_SETTINGS`)."""
    host = _check_loopback(host)
    server = _Server((host, port), _ServiceState(seed, settings))
    actual_port = server.server_address[1]
    me = psutil.Process()
    if state_file is not None:
        write_json_atomic(
            state_file,
            {
                "pid": me.pid,
                "create_time": me.create_time(),
                "host": host,
                "port": actual_port,
                "url": f"http://{host}:{actual_port}",
                "module": MODULE,
                "started_at": time.time(),
                "settings": server.state.initial_settings,
            },
        )
    signal.signal(signal.SIGTERM, _raise_exit)
    print(f"moderation backend pid={me.pid} listening on http://{host}:{actual_port}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
        if state_file is not None:
            doc = _read_state(state_file)
            if doc is not None and doc["pid"] == me.pid:
                with contextlib.suppress(OSError):
                    state_file.unlink()
        c = server.state.counters
        print(f"moderation backend pid={me.pid} stopped after {c['requests']} requests",
              file=sys.stderr, flush=True)


class _OneLineArgumentParser(argparse.ArgumentParser):
    """Command-line errors as one line (no usage block): ``prog: error: what (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> None:
    p = _OneLineArgumentParser(prog=f"python -m {MODULE}",
                               description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = pick a free one)")
    p.add_argument("--host", default=DEFAULT_HOST, help="loopback address to bind")
    p.add_argument("--state-file", type=Path, default=None, help="write pid/port JSON here")
    p.add_argument("--seed", type=int, default=0, help="seed of the latency/fault RNG")
    d = DEFAULT_SETTINGS
    p.add_argument("--request-ms", type=float, default=d["request_ms"],
                   help="service time per moderation request, ms (default %(default)s)")
    p.add_argument("--post-ms", type=float, default=d["post_ms"],
                   help="service time per post, ms (default %(default)s)")
    p.add_argument("--capacity-per-s", type=float, default=d["capacity_per_s"],
                   help="posts per second before HTTP 429, 0 = unlimited (default %(default)s)")
    p.add_argument("--max-concurrent", type=int, default=d["max_concurrent"],
                   help="requests at once before HTTP 503, 0 = unlimited (default %(default)s)")
    a = p.parse_args(argv)
    settings = {}
    try:
        host = _check_loopback(a.host)
        for key in SETTING_KEYS:
            flag = "--" + key.replace("_", "-")
            settings[key] = _check_setting(key, getattr(a, key), flag)
    except ValueError as e:
        p.error(str(e))
    serve(host, a.port, a.state_file, a.seed, settings)


# =========================================================================================
# Process manager
# =========================================================================================


def default_state_dir() -> Path:
    from lab_kit import lab_env
    return lab_env.state_dir() / "moderation"  # follows LAB_STATE_DIR, like the broker


def _exited(pid: int | None, create_time: float | None) -> bool:
    """True once that process is gone or a zombie. (Not :func:`_verified_process`: while a
    killed process is torn down its command line reads empty, yet it still holds its port.)"""
    if pid is None or pid <= 0:
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return create_time is not None and abs(proc.create_time() - create_time) > 0.5
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:  # someone else's process: it exists
        return False


def _verified_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live (non-zombie) backend process with that pid, or None. Never a stranger."""
    if _exited(pid, create_time):
        return None
    try:
        proc = psutil.Process(pid)
        names = (MODULE, *LEGACY_MODULES)
        return proc if any(n in part for part in proc.cmdline() for n in names) else None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class ModerationBackend:
    """Start, stop, kill, pause and resume a moderation backend process.

    >>> backend = ModerationBackend(state_dir=tmp).start()      # doctest: +SKIP
    >>> client = ModerationClient(backend.url, timeout_s=0.5)   # doctest: +SKIP
    >>> backend.kill(); backend.restart()                      # same port # doctest: +SKIP

    The process is detached (own session): it survives the Python process that started it,
    until :meth:`stop`/:meth:`kill`. ``state_dir`` holds ``backend.json`` (pid, port, start
    time, settings) and ``backend.log`` (the process' stdout/stderr).

    ``request_ms``, ``post_ms``, ``capacity_per_s`` and ``max_concurrent`` are the service's
    cost model and capacity (see the module docstring; defaults in :data:`DEFAULT_SETTINGS`),
    passed on the command line at every :meth:`start` / :meth:`restart`; ``ValueError`` if one
    is out of range. :meth:`set_faults` changes them at run time, :meth:`reset_faults` puts
    these start values back.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = DEFAULT_HOST,
        seed: int = 0,
        startup_timeout_s: float = 10.0,
        request_ms: float = DEFAULT_SETTINGS["request_ms"],
        post_ms: float = DEFAULT_SETTINGS["post_ms"],
        capacity_per_s: float = DEFAULT_SETTINGS["capacity_per_s"],
        max_concurrent: int = int(DEFAULT_SETTINGS["max_concurrent"]),
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_file = self.state_dir / STATE_FILE_NAME
        self.log_file = self.state_dir / LOG_FILE_NAME
        self.host = _check_loopback(host)
        self.seed = seed
        self.settings: dict[str, float | int] = _settings(
            {"request_ms": request_ms, "post_ms": post_ms, "capacity_per_s": capacity_per_s,
             "max_concurrent": max_concurrent}
        )
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._create_time: float | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        status = "running" if self.is_running() else "stopped"
        return f"<ModerationBackend {status} pid={self._pid} url={self.url}>"

    def __enter__(self) -> ModerationBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- properties ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def url(self) -> str | None:
        return None if self._port is None else f"http://{self.host}:{self._port}"

    # -- discovery -------------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str] | None = None) -> ModerationBackend | None:
        """The backend recorded in ``state_dir`` if it is still running, else None."""
        self = cls(state_dir)
        doc = _read_state(self.state_file)
        if doc is None:
            return None
        if _verified_process(doc["pid"], doc.get("create_time")) is None:
            return None
        self.host = _check_loopback(doc.get("host", DEFAULT_HOST))
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            self.settings = _settings(doc.get("settings"))  # so restart() keeps them
        self._pid, self._port = doc["pid"], doc["port"]
        self._create_time = doc.get("create_time")
        return self

    @classmethod
    def ensure(
        cls, state_dir: str | os.PathLike[str] | None = None, port: int | None = None
    ) -> ModerationBackend:
        """Reuse the running backend of ``state_dir`` or start one (notebook friendly)."""
        found = cls.load(state_dir)
        if found is not None and (port is None or found.port == port):
            return found
        if found is not None:
            found.stop()
        return cls(state_dir).start(port)

    # -- lifecycle -------------------------------------------------------------------------

    def _process(self) -> psutil.Process | None:
        if self._proc is not None:
            self._proc.poll()  # reap our own child if it died, so it is not a zombie
        return _verified_process(self._pid, self._create_time)

    def is_running(self) -> bool:
        """True while the process exists (also when paused)."""
        return self._process() is not None

    def is_paused(self) -> bool:
        proc = self._process()
        try:
            return proc is not None and proc.status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return False

    def start(self, port: int | None = None) -> ModerationBackend:
        """Spawn the service (``port=None``: a free port chosen by the OS) and wait for it."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running; stop() or restart() it")
        other = ModerationBackend.load(self.state_dir)
        if other is not None:
            raise RuntimeError(
                f"a backend is already running for {self.state_dir} (pid {other.pid}, "
                f"{other.url}); use ModerationBackend.load() / ensure() or stop it first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        cmd = [
            sys.executable, "-m", MODULE,
            "--host", self.host,
            "--port", str(port or 0),
            "--state-file", str(self.state_file),
            "--seed", str(self.seed),
        ]
        for key, value in self.settings.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (pkg_root, env.get("PYTHONPATH", "")) if p
        )
        with open(self.log_file, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        self._proc, self._pid, self._create_time = proc, proc.pid, None
        try:
            self._wait_ready(proc, port)
        except BaseException:
            self._terminate(signal.SIGKILL, timeout_s=5.0)
            raise
        return self

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int | None) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"moderation backend exited with code {proc.returncode} during startup;"
                    f" log tail ({self.log_file}):\n{self.log_tail()}"
                )
            doc = _read_state(self.state_file)
            if doc is not None and doc["pid"] == proc.pid:
                self._port, self._create_time = doc["port"], doc.get("create_time")
                try:
                    if ModerationClient(self.url, timeout_s=1.0).health().get("ok") is True:
                        return
                except ModerationBackendError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"moderation backend (port {port or 'auto'}) not healthy after "
                    f"{self.startup_timeout_s:g}s; log tail ({self.log_file}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, max_bytes: int = 2000) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "<no log>"

    def _wait_gone(self, timeout_s: float) -> bool:
        """Wait until our process is gone (or a zombie); reap it if it is our child."""
        if self._proc is not None and self._proc.pid == self._pid:
            try:
                self._proc.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self._pid, os.WNOHANG)  # type: ignore[arg-type]
            if _exited(self._pid, self._create_time):
                return True
            time.sleep(0.02)
        return False

    def _terminate(self, sig: int, timeout_s: float) -> None:
        proc = self._process()
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
            if sig != signal.SIGKILL:
                os.kill(proc.pid, signal.SIGCONT)  # a paused process must wake up to exit
        if not self._wait_gone(timeout_s) and sig != signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                if self._process() is not None:
                    os.kill(proc.pid, signal.SIGKILL)
            self._wait_gone(5.0)

    def _forget_state_file(self) -> None:
        doc = _read_state(self.state_file)
        if doc is not None and doc["pid"] == self._pid:
            with contextlib.suppress(OSError):
                self.state_file.unlink()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful stop: SIGTERM (and SIGCONT if paused), SIGKILL after ``timeout_s``."""
        self._terminate(signal.SIGTERM, timeout_s)
        self._forget_state_file()

    def kill(self) -> None:
        """Crash it: SIGKILL, no cleanup by the process (the state file stays, stale)."""
        self._terminate(signal.SIGKILL, timeout_s=5.0)

    def _signal(self, sig: int) -> None:
        proc = self._process()
        if proc is None:
            raise RuntimeError(f"{self!r} is not running")
        os.kill(proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts TCP connections but nothing answers (timeouts)."""
        self._signal(signal.SIGSTOP)
        self._wait_paused(True)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)
        self._wait_paused(False)

    def _wait_paused(self, paused: bool, timeout_s: float = 5.0) -> None:
        """Signals are delivered asynchronously: wait until the kernel shows the new state."""
        deadline = time.monotonic() + timeout_s
        while self.is_paused() != paused and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self) -> ModerationBackend:
        """Stop if running, then start again on the SAME port (clients just reconnect)."""
        if self._port is None:
            raise RuntimeError("restart() needs a backend that was started or loaded before")
        port = self._port
        self.stop()
        return self.start(port)

    # -- fault injection / introspection -------------------------------------------------------

    def client(self, timeout_s: float = 0.5) -> ModerationClient:
        if self.url is None:
            raise RuntimeError("backend not started")
        return ModerationClient(self.url, timeout_s=timeout_s)

    def _admin(self) -> ModerationClient:
        return self.client(timeout_s=5.0)

    def health(self) -> dict[str, Any]:
        with self._admin() as c:
            return c.health()

    def faults(self) -> dict[str, float]:
        with self._admin() as c:
            return c.get_faults()

    def set_faults(self, **faults: float) -> dict[str, float]:
        """Update fault knobs (``latency_ms``, ``jitter_ms``, ``error_rate``, ``garbage_rate``)
        and/or settings (``request_ms``, ``post_ms``, ``capacity_per_s``, ``max_concurrent``)
        of the running process; returns all of them. Not remembered across a restart."""
        with self._admin() as c:
            return c.set_faults(**faults)

    def reset_faults(self) -> dict[str, float]:
        """No faults, and the settings this process was started with."""
        with self._admin() as c:
            return c.reset_faults()


if __name__ == "__main__":
    main()
