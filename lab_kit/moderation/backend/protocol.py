"""What client, service and process manager agree on: routes, limits, settings, the
verdict and the state file.

The service (:mod:`lab_kit.moderation.backend.server`) is reached on loopback over HTTP/1.1
keep-alive, JSON both ways:

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
(the field and the limit are named); 413 body too large; 429 and 503 when overloaded (answered
at once, without any service time; 429 carries ``retry_after_s`` and a ``Retry-After``
header); 503 ``{"error": "injected fault: ..."}`` for an injected error; 404 unknown route.

Also here: :func:`_check_setting` / :func:`_settings` (one validation of the faults and
settings for the CLI, ``POST /faults`` and :class:`~lab_kit.moderation.backend.process.
ModerationBackend`) and :func:`_read_state` (the pid/port JSON the service writes and the
process manager reads back).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_kit.moderation.rules import Verdict

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


def _settings(overrides: dict[str, Any] | None = None) -> dict[str, float | int]:
    """DEFAULT_SETTINGS updated with validated ``overrides`` (ValueError if one is bad)."""
    out = dict(DEFAULT_SETTINGS)
    for key, value in (overrides or {}).items():
        if key not in SETTING_KEYS:
            raise ValueError(f"unknown setting {key!r}; known: {SETTING_KEYS}")
        out[key] = _check_setting(key, value)
    return out


def _read_state(path: Path) -> dict | None:
    """The record in the state file (pid, port, ...), or None if it is missing or bad."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
        return None
    if not isinstance(doc.get("port"), int):
        return None
    return doc
