"""The client side: :class:`ModerationClient` and the checks of every answer it decodes.

One persistent keep-alive ``http.client`` connection with a per-operation timeout, raising
typed errors (all subclasses of :class:`~lab_kit.moderation.backend.errors.
ModerationBackendError`); :meth:`ModerationClient.moderate_batch` sends many posts in one
request. Not thread-safe: one client per thread. An answer that is not what
:mod:`lab_kit.moderation.backend.protocol` promises raises ``BackendGarbage`` naming the field.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from lab_kit import json_codec
from lab_kit.moderation.backend.errors import (
    BackendBadRequest,
    BackendError,
    BackendGarbage,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
)
from lab_kit.moderation.backend.protocol import ModerationResult
from lab_kit.moderation.rules import LABELS


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
        body = None if payload is None else json_codec.dumps(payload)
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
        doc = json_codec.loads(data)
    except ValueError:
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
