"""A second opinion on the API's latency: Debian's ``hey``, a load tool nobody here wrote.

The lab's own driver (:mod:`lab_kit.harness.http_load`) is an open loop in Python; a bug in it
(or its own ceiling) would bend every latency the API benchmark reports. :func:`run_hey` drives
the same server with `hey <https://github.com/rakyll/hey>`_ (Go; ``apt-get install hey``) at the
same rate and reads its per-request CSV, so the two can be put side by side in one run
(``python -m lab_kit bench api --cross-check``).

What differs, and how to read it: hey is a *closed* loop (``-c`` workers, each waits for its
answer before the next request, each held to ``rate / workers`` requests per second). While the
server keeps up the two loops offer the same load and should agree; when it falls behind, hey
sends less and its latencies leave out the wait the server caused (coordinated omission), so
hey's p99 is then a lower bound and its achieved rate drops below the target. hey sends one
body over and over: :data:`HEY_USER`'s post without a ``post_id`` (the API gives each one
its own), so its posts can be counted on the topic by their key. hey's CSV has a row per
*answered* request only: transport errors (refused, timed out) are left out of it, so
``errors`` counts non-2xx answers, and a shortfall in ``achieved_rate`` shows the rest.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab_kit import json_codec
from lab_kit.metrics import percentiles_ms

__all__ = ["HEY_USER", "hey_path", "parse_hey_csv", "run_hey"]

HEY_USER = "user-hey"
INSTALL_HINT = "install Debian's hey (apt-get install hey) or put a hey binary on PATH"


def hey_path() -> str | None:
    return shutil.which("hey")


def parse_hey_csv(text: str, seconds: float, rate: float) -> dict[str, Any]:
    """hey's ``-o csv`` (one row per request: ``response-time`` in s, ``status-code``, ...)
    as the same summary keys the lab's driver reports."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and ("response-time" not in rows[0] or "status-code" not in rows[0]):
        raise ValueError(f"hey's CSV has no response-time/status-code columns: "
                         f"{list(rows[0])}")
    latencies = [float(r["response-time"]) for r in rows]
    statuses = [int(r["status-code"] or 0) for r in rows]
    ok = sum(1 for s in statuses if 200 <= s < 300)
    p = percentiles_ms(latencies)

    def r3(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {"driver": "hey", "target_rate": rate, "seconds": seconds, "sent": len(rows),
            "accepted": ok, "achieved_rate": round(ok / seconds, 1) if seconds > 0 else None,
            "p50_ms": r3(p["p50_ms"]), "p99_ms": r3(p["p99_ms"]), "p999_ms": r3(p["p999_ms"]),
            "max_ms": r3(p["max_ms"]), "errors": len(rows) - ok}


def run_hey(url: str, rate: float, seconds: float, *, workers: int = 256,
            timeout_s: float = 30.0,
            on_exit: Callable[[], Any] | None = None) -> dict[str, Any]:
    """``hey`` POSTs :data:`HEY_USER`'s post to ``url`` + ``/posts`` at ``rate`` for
    ``seconds`` with ``workers`` connections; its summary (see :func:`parse_hey_csv`).
    ``on_exit`` runs as soon as hey has exited, before its CSV is read (a CPU reading that
    should see hey's work, not the parsing)."""
    exe = hey_path()
    if exe is None:
        raise RuntimeError(f"the cross-check needs hey: {INSTALL_HINT}")
    if not 1 <= rate <= 50_000 or not 1 <= seconds <= 600 or not 1 <= workers <= 1024:
        raise ValueError(f"rate (1-50000), seconds (1-600), workers (1-1024): got {rate}, "
                         f"{seconds}, {workers}")
    body = json_codec.dumps({"user_id": HEY_USER, "text": "Checking in from a load tool "
                             "nobody at StreamSocial wrote."})
    with tempfile.TemporaryDirectory(prefix="lab-hey-") as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        cmd = [exe, "-z", f"{seconds:g}s", "-c", str(workers), "-q", f"{rate / workers:.4f}",
               "-m", "POST", "-T", "application/json", "-D", str(body_file),
               "-t", str(max(1, round(timeout_s))), "-o", "csv", url.rstrip("/") + "/posts"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=seconds + timeout_s + 60)
    if on_exit is not None:
        on_exit()
    if proc.returncode != 0:
        raise RuntimeError(f"hey exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    out = parse_hey_csv(proc.stdout, seconds, rate)
    out["workers"] = workers
    return out
