"""Reading a pipeline run's results: first verdicts, steady rate, timeline, CPU per post.

Pure functions of what was read back (no Kafka here): :func:`first_verdicts` (each post's
first non-recheck result; duplicates, missing), :func:`steady_rate` (results per second with
the ramps trimmed off), :func:`build_timeline` (the per-second rows of a report),
:func:`cpu_per_post` (CPU µs per post of each :data:`STAGES` entry) and :func:`ceiling` (the
costliest stage and the cores a target rate would need at the measured cost).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from lab_kit.machine import cpu_count

STEADY_TRIM = 0.10  # achieved_rate leaves out the first and last 10 % of the results' span
STAGES = ("producer", "moderation", "backend", "broker")


def first_verdicts(results: dict[str, list[dict]], ids: list[str]
                   ) -> tuple[dict[str, dict], int, int]:
    """({post_id: its first non-recheck result}, duplicates, missing) for ``ids``."""
    firsts: dict[str, dict] = {}
    duplicates = missing = 0
    for pid in ids:
        own = [r for r in results.get(pid, ()) if r.get("source") != "recheck"]
        if not own:
            missing += 1
            continue
        duplicates += len(own) - 1
        firsts[pid] = min(own, key=lambda r: r.get("moderated_at") or 0.0)
    return firsts, duplicates, missing


def steady_rate(times: list[float], trim: float = STEADY_TRIM) -> float | None:
    """Events per second between the first and last ``trim`` of their span."""
    if len(times) < 2:
        return None
    times = sorted(times)
    lo, hi = times[0], times[-1]
    if hi <= lo:
        return None
    a, b = lo + trim * (hi - lo), hi - trim * (hi - lo)
    n = sum(1 for t in times if a <= t <= b)
    return n / (b - a)


def build_timeline(samples: list[dict], firsts: dict[str, dict], t0: float,
                   lag_keys: tuple[str, ...] = ("lag",),
                   events: dict[str, list[float]] | None = None) -> list[dict]:
    """Per-second rows ``{t_s, offered, moderated, lag, degraded}`` (+ other lag keys, and a
    count per second for each list of epoch times in ``events``)."""
    moderated: Counter[int] = Counter()
    degraded: Counter[int] = Counter()
    for r in firsts.values():
        k = max(0, int((r.get("moderated_at") or t0) - t0))
        moderated[k] += 1
        degraded[k] += bool(r.get("degraded"))
    extra = {name: Counter(max(0, int(t - t0)) for t in times)
             for name, times in (events or {}).items()}
    by_t = {s["t_s"]: s for s in samples}
    last = max([*by_t, *moderated, *(k for c in extra.values() for k in c), 0])
    rows = []
    for k in range(last + 1):
        s = by_t.get(k, {})
        row = {"t_s": k, "offered": s.get("offered", 0), "moderated": moderated[k],
               **{key: s.get(key) for key in lag_keys}, "degraded": degraded[k],
               **{name: c[k] for name, c in extra.items()}}
        rows.append(row)
    return rows


def cpu_per_post(before: dict, after: dict, posts: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for stage in STAGES:
        a, b = before.get(stage), after.get(stage)
        out[stage] = None if a is None or b is None or posts <= 0 else round(
            (b - a) / posts * 1e6, 2)
    return out


def ceiling(cpu: dict[str, float | None]) -> dict[str, Any] | None:
    known = {k: v for k, v in cpu.items() if v is not None}
    if not known:
        return None
    stage = max(known, key=known.get)
    total = sum(known.values())
    return {"stage": stage, "stage_cpu_us_per_post": known[stage],
            "total_cpu_us_per_post": round(total, 2),
            "cores_at_10000_per_s": round(total * 10_000 / 1e6, 2),
            "cores_at_100000_per_s": round(total * 100_000 / 1e6, 2),
            "cores_here": cpu_count(),
            "not_measured": [k for k, v in cpu.items() if v is None]}
