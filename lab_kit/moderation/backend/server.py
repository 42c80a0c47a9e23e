"""The service: a stdlib :class:`~http.server.ThreadingHTTPServer` bound to loopback only.

Run it with ``python -m lab_kit.moderation.backend --port P`` (the old name
``python -m lab_kit.moderation_backend`` still works). Routes, bodies and status codes are in
:mod:`lab_kit.moderation.backend.protocol`; this file answers them.

**Cost model.** Each moderation request sleeps ``request_ms * (1 + U(-0.25, +0.25)) +
n * post_ms`` (``n`` posts; a seeded RNG; defaults 1.0 ms and 0.02 ms) plus the injected
latency ``max(0, latency_ms + U(-jitter_ms, +jitter_ms))`` (once per request). The sleep
models work that runs elsewhere (a model server); the real scoring CPU
(:func:`lab_kit.moderation.rules.score_post`, with a per-process
:class:`~lab_kit.moderation.rules.RepeatTracker`) happens too. Then, per request, with
probability ``error_rate`` it answers HTTP 503, else with probability ``garbage_rate`` a 200
whose body is not JSON, else the verdicts.

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

**Browsers.** The service binds loopback, but a page a student's browser opens can still
aim at it (a form posted cross-origin, or a name rebound to 127.0.0.1). So every request
must carry a loopback ``Host`` (``localhost``, ``127.x.x.x``, ``[::1]``, any port), else
**403** ``{"field": "Host"}`` (DNS rebinding), and the admin routes (``POST /faults``,
``POST /faults/reset``) take only ``Content-Type: application/json``, else **415**
``{"field": "Content-Type"}``: a cross-origin page can send that type only after a CORS
preflight, which this service never grants.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import psutil

from lab_kit import json_codec
from lab_kit.machine import write_json_atomic
from lab_kit.moderation.backend.protocol import (
    BURST_S,
    DEFAULT_HOST,
    DEFAULT_SETTINGS,
    FAULT_KEYS,
    IDLE_TIMEOUT_S,
    MAX_BATCH_BODY_BYTES,
    MAX_BATCH_POSTS,
    MAX_BODY_BYTES,
    MODULE,
    REQUEST_JITTER,
    SETTING_KEYS,
    _check_setting,
    _read_state,
    _settings,
)
from lab_kit.moderation.rules import RepeatTracker, score_post, score_post_fields

# the first line of the one-file module's docstring, kept as the --help description
_DESCRIPTION = ("StreamSocial moderation backend: a real local HTTP service, its process "
                "manager and client.")


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


def _number(x: float) -> str:
    """50000.0 -> "50000", 2.5 -> "2.5" (never an exponent)."""
    return str(int(x)) if x == int(x) else repr(x)


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


def _loopback_host(value: str | None) -> bool:
    """True if a ``Host`` header names this machine's loopback: ``localhost``, 127.x.x.x or
    [::1], with or without a port."""
    host = (value or "").strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        self._send(status, json_codec.dumps(doc), headers=headers)

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
            return json_codec.loads_lenient(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise _RequestError(400, f"invalid JSON body: {e}", "body") from None

    def _dispatch(self, routes: dict[str, Any]) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        route = routes.get(path)
        try:
            if not _loopback_host(self.headers.get("Host")):
                self.close_connection = True
                raise _RequestError(
                    403, f"Host {self.headers.get('Host')!r} is not a loopback name "
                    f"(localhost, 127.x.x.x, [::1]): refused", "Host")
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

    def _require_json_type(self) -> None:
        """The admin routes: only ``application/json`` (a browser sends it cross-origin only
        after a CORS preflight, which this service does not answer)."""
        ctype = (self.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        if ctype != "application/json":
            self.close_connection = True  # the body (if any) is left unread
            raise _RequestError(
                415, f"Content-Type must be application/json, got {ctype or 'none'!r}",
                "Content-Type")

    def _set_faults(self) -> None:
        self._require_json_type()
        self._send_json(200, self.server.state.update(self._read_json()))

    def _reset_faults(self) -> None:
        self._require_json_type()
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
            return json_codec.dumps({"results": results, "latency_ms": latency_ms})

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
    p = _OneLineArgumentParser(prog=f"python -m {MODULE}", description=_DESCRIPTION)
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

