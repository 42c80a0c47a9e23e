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


#: the rows of the per-stage profile, in the order a post goes through them: (stage, part,
#: key), the key being the load thread group (:func:`~lab_kit.harness.service_process.
#: thread_cpu_s`) or the stage phase (:data:`~lab_kit.moderation.profile.PHASES`, ``other``)
PROFILE_ROWS = (
    ("load producer", "caller thread: submit()", "caller"),
    ("load producer", "client thread (kafka-python network / librdkafka poll)", "client"),
    ("load producer", "other threads (sampler, producer workers, librdkafka's C threads)",
     "other"),
    ("broker", "JVM, every request (posts, results, fetches, commits)", None),
    ("moderation stage", "consume: poll()", "consume"),
    ("moderation stage", "decode: JSON -> Post", "decode"),
    ("moderation stage", "dispatch: chunks to the backend pool", "dispatch"),
    ("moderation stage", "backend call, client side", "backend_client"),
    ("moderation stage", "results: encode + produce", "results"),
    ("moderation stage", "delivery reports", "delivery_reports"),
    ("moderation stage", "commit", "commit"),
    ("moderation stage", "client threads, GC, loop (the rest)", "other"),
    ("backend", "backend call, server side (HTTP, rules)", None),
    ("e2e reader", "results read back", None),
)


def profile_table(before: dict, after: dict, posts: int, stage_profile: dict | None,
                  reader_cpu_s: float | None) -> dict[str, Any]:
    """CPU µs per post of each part of each stage.

    The load's threads come from the bench process (``load_threads`` of the snapshots), the
    broker and the backend from their processes, the stage's phases from its members' own
    :class:`~lab_kit.moderation.profile.StageProfile`: their shares of the members' CPU,
    applied to the stage's CPU measured over the same window as the rest. The e2e reader is
    the read-back of the results topic after the run.
    """
    per_post = cpu_per_post(before, after, posts)
    lt0, lt1 = before.get("load_threads") or {}, after.get("load_threads") or {}
    phases = (stage_profile or {}).get("phases_cpu_s") or {}
    phase_total = sum(phases.values())
    rows = []
    for stage, part, key in PROFILE_ROWS:
        us: float | None = None
        if stage == "load producer" and posts > 0:
            if key in lt0 and key in lt1:
                us = max(0.0, lt1[key] - lt0[key]) / posts * 1e6  # a thread that ended
        elif stage == "moderation stage":
            measured = per_post.get("moderation")
            if measured is not None and phase_total > 0:
                us = measured * phases.get(key, 0.0) / phase_total
        elif stage == "e2e reader":
            us = None if reader_cpu_s is None or posts <= 0 else reader_cpu_s / posts * 1e6
        elif stage in ("broker", "backend"):
            us = per_post.get(stage)
        rows.append({"stage": stage, "part": part,
                     "cpu_us_per_post": None if us is None else round(us, 2)})
    known = [r["cpu_us_per_post"] for r in rows if r["cpu_us_per_post"] is not None]
    return {"rows": rows, "total_cpu_us_per_post": round(sum(known), 1),
            "not_measured": [f"{r['stage']}: {r['part']}" for r in rows
                             if r["cpu_us_per_post"] is None]}


def format_profile(profile: dict[str, Any]) -> str:
    """The profile as a plain-text table (what ``bench pipeline --profile`` prints)."""
    lines = [f"  {'stage':<17} {'part':<55} {'µs/post':>8}"]
    for r in profile["rows"]:
        v = r["cpu_us_per_post"]
        lines.append(f"  {r['stage']:<17} {r['part']:<55} "
                     f"{'-' if v is None else format(v, '.1f'):>8}")
    lines.append(f"  {'total':<17} {'':<55} {profile['total_cpu_us_per_post']:>8.1f}")
    return "\n".join(lines)
