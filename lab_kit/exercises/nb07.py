"""Exercises of notebook 07 (the instructor demo): read what the class just watched.

* q1: ``outage_windows(frame)`` finds the outages in the dashboard's per-second frame (the
  one :meth:`lab_kit.metrics.MetricsRecorder.timeseries_frame` returns), offline on frames
  built like it; given the demo's own frame and shaded windows, it also checks that every
  window it found lies on a fault the instructor pressed.
* q2: ``api_degraded(metrics_text)`` decides from the post API's ``GET /metrics`` text
  whether users are being served as promised (offline, on text rendered by the API's own
  Prometheus registry, :class:`lab_kit.api.metrics.ApiMetrics`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lab_kit.api.metrics import ApiMetrics
from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz

# --- q1: the outage windows in the dashboard's frame ----------------------------------------


def _frame(acked: list[int], submitted: list[int] | None = None,
           interval_s: float = 1.0, spooled: list[int] | None = None,
           replayed: list[int] | None = None) -> pd.DataFrame:
    """A frame shaped like ``timeseries_frame()``: counts per bucket, indexed by ``t_s``.
    Unless given, every post of a bucket without acks is ``spooled``, and nothing replayed."""
    submitted = submitted if submitted is not None else [100] * len(acked)
    n = len(acked)
    if spooled is None:
        spooled = [s if a == 0 else 0 for a, s in zip(acked, submitted, strict=True)]
    df = pd.DataFrame({"submitted": submitted, "acked": acked, "failed": [0] * n,
                       "spooled": spooled, "replayed": replayed or [0] * n},
                      index=pd.Index([i * interval_s for i in range(n)], name="t_s", dtype=float))
    df["throughput_per_s"] = df["acked"] / interval_s
    df.attrs["interval_s"] = interval_s
    return df


_OUTAGE_CASES: list[tuple[str, pd.DataFrame, list[tuple[float, float]]]] = [
    ("one pause", _frame([100, 100, 100, 0, 0, 0, 250, 100]), [(3.0, 6.0)]),
    ("no outage at all", _frame([100, 95, 105, 100]), []),
    ("load stopped is not an outage",
     _frame([100, 100, 0, 0, 0, 100], submitted=[100, 100, 0, 0, 0, 100]), []),
    ("a pause, then a kill",
     _frame([100, 0, 0, 100, 100, 0, 0, 0, 0, 300]), [(1.0, 3.0), (5.0, 9.0)]),
    ("still down at the end of the frame", _frame([100, 100, 0, 0]), [(2.0, 4.0)]),
    ("half-second buckets", _frame([50, 0, 0, 0, 50], interval_s=0.5), [(0.5, 2.0)]),
    ("half-second buckets, still down at the end", _frame([50, 50, 0, 0], interval_s=0.5),
     [(1.0, 2.0)]),
    ("one bad second", _frame([100, 0, 100]), [(1.0, 2.0)]),
    # after the fault new posts queue behind the replay: submitted, not spooled, not acked yet
    ("posts queued behind the spool's replay",
     _frame([100, 0, 0, 0, 0, 300], spooled=[0, 100, 100, 0, 0, 0],
            replayed=[0, 0, 0, 150, 50, 0]), [(1.0, 5.0)]),
]


def _as_windows(got: Any) -> list[tuple[float, float]]:
    try:
        return [(round(float(s), 6), round(float(e), 6)) for s, e in got]
    except (TypeError, ValueError) as exc:
        raise CaseFailed("what you returned",
                         f"{got!r} is not a list of (start_s, end_s) pairs") from exc


def _check_real_frame(windows_found: list[tuple[float, float]],
                      shaded: list[tuple[float, float, str]], interval_s: float) -> None:
    """Every window found overlaps a fault the dashboard shaded (give or take one bucket). It
    need not lie inside one: after the fault, posts still queue behind the spool's replay,
    so an outage seen from the acks can last longer than the fault itself."""
    if not windows_found:
        raise CaseFailed("this demo's frame", "you found no outage, but the dashboard shaded "
                                              f"{len(shaded)} fault window(s)")
    for start, end in windows_found:
        if not any(start < e + interval_s and end > s - interval_s for s, e, _ in shaded):
            raise CaseFailed("this demo's frame", f"({start}, {end}) lies on no shaded fault "
                                                  f"window: {shaded}")


def _check_outages(outage_windows: Any, *, frame: pd.DataFrame | None = None,
                   windows: list | None = None) -> int:
    for case, df, want in _OUTAGE_CASES:
        got = _as_windows(outage_windows(df.copy()))
        if got != want:
            raise CaseFailed(case, f"you found {got}, expected {want} in\n"
                                   f"{df[['submitted', 'acked', 'spooled']].T.to_string()}")
    cases = len(_OUTAGE_CASES)
    if frame is not None and windows:
        interval = float(frame.attrs.get("interval_s", 1.0))
        _check_real_frame(_as_windows(outage_windows(frame.copy())),
                          [(float(s), float(e), str(label)) for s, e, label in windows],
                          interval)
        cases += 1
    return cases


def _solution_q1(frame):
    interval = frame.attrs.get("interval_s", 1.0)
    down = (frame["submitted"] > 0) & (frame["acked"] == 0)
    windows, start = [], None
    for t, is_down in down.items():
        if is_down and start is None:
            start = t
        elif not is_down and start is not None:
            windows.append((start, t))
            start = None
    if start is not None:
        windows.append((start, frame.index[-1] + interval))
    return windows


def _wrong_q1_idle(frame):  # no acks at all is not enough: nobody may be posting
    fake = frame.assign(submitted=1)
    fake.attrs = frame.attrs
    return _solution_q1(fake)


def _wrong_q1_end(frame):  # the last bad bucket's start, not its end
    return [(s, e - frame.attrs.get("interval_s", 1.0)) for s, e in _solution_q1(frame)]


def _wrong_q1_first(frame):
    return _solution_q1(frame)[:1]


def _wrong_q1_spooled(frame):  # marks "spooled > 0": misses the posts queued behind the replay
    fake = frame.assign(submitted=frame["spooled"], acked=0)
    fake.attrs = frame.attrs
    return _solution_q1(fake)


def _wrong_q1_one_second(frame):  # a window still open at the end closes 1 s later, always
    fake = frame.copy()
    fake.attrs = {**frame.attrs, "interval_s": 1.0}
    return _solution_q1(fake)


q1 = Exercise(
    name="07.q1 the outage windows",
    task="outage_windows(frame) returns [(start_s, end_s), ...]: the runs of buckets in which "
         "posts were submitted and none was acked",
    checker=_check_outages,
    hint_text="mark each bucket (submitted > 0 and acked == 0), then walk the index: a window "
              "opens at the first marked bucket and closes at the start of the next unmarked "
              "one (or at the last bucket + frame.attrs['interval_s'])",
    solution_obj=_solution_q1, wrong=(_wrong_q1_idle, _wrong_q1_end, _wrong_q1_first,
                                   _wrong_q1_spooled, _wrong_q1_one_second))


# --- q2: is the post API degraded? (its /metrics text) --------------------------------------

WITHIN_TARGET = 0.99  # share of /posts requests answered within 100 ms: the course's target


def sample_metrics_text(healthy: int = 1, spool: int = 0, fast: int = 0, slow: int = 0,
            slow_healthz: int = 0, replayed: int = 0) -> str:
    """``GET /metrics`` text as the post API renders it, from its own registry. ``spool``
    posts wait in the spool now; ``replayed`` more went through it earlier and are back on
    Kafka (counted in ``lab_api_posts_spooled_total``, which never goes down)."""
    m = ApiMetrics()
    m.broker_healthy.set(healthy)
    m.spool_depth.set(spool)
    m.replayed.set(replayed)
    for seconds, n, route in ((0.003, fast, "/posts"), (0.3, slow, "/posts"),
                              (0.4, slow_healthz, "/healthz")):
        for _ in range(n):
            m.latency.labels(route).observe(seconds)
        if n:
            m.requests.labels(route, "202" if route == "/posts" else "200").inc(n)
    m.submitted.inc(fast + slow)
    m.acked.inc(max(0, fast + slow - spool))
    m.spooled.inc(spool + replayed)
    return generate_latest(m.registry).decode()


_DEGRADED_CASES = [
    ("healthy, nobody posting yet", {}, False),
    ("healthy, 1,000 fast requests", {"fast": 1000}, False),
    ("broker unreachable", {"healthy": 0, "fast": 200}, True),
    ("broker back, 40 posts still in the spool", {"spool": 40, "fast": 500}, True),
    ("2 % of /posts answered after 100 ms", {"fast": 980, "slow": 20}, True),
    ("0.5 % after 100 ms: inside the target", {"fast": 995, "slow": 5}, False),
    ("exactly 99 % within 100 ms: not fewer than the target", {"fast": 990, "slow": 10}, False),
    ("the spool drained: 300 posts spooled earlier, all replayed",
     {"fast": 1000, "replayed": 300}, False),
    ("slow /healthz answers are not users' posts", {"fast": 1000, "slow_healthz": 200}, False),
]


def _check_degraded(api_degraded: Any) -> int:
    for case, state, want in _DEGRADED_CASES:
        got = api_degraded(sample_metrics_text(**state))
        if not isinstance(got, bool) and type(got).__name__ != "bool_":
            raise CaseFailed(case, f"returned {got!r}: return True or False")
        if bool(got) != want:
            raise CaseFailed(case, f"you said degraded={bool(got)}, expected {want}")
    return len(_DEGRADED_CASES)


def _solution_q2(metrics_text):

    healthy = spool = within = total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            posts = s.labels.get("route") == "/posts"
            if s.name == "lab_api_broker_healthy":
                healthy = s.value
            elif s.name == "lab_api_spool_depth":
                spool = s.value
            elif s.name == "lab_api_request_duration_seconds_bucket" and posts \
                    and float(s.labels["le"]) == 0.1:
                within = s.value
            elif s.name == "lab_api_request_duration_seconds_count" and posts:
                total = s.value
    slow = total > 0 and within / total < 0.99
    return healthy < 1 or spool > 0 or slow


def _wrong_q2_broker_only(metrics_text):
    return "lab_api_broker_healthy 0.0" in metrics_text


def _signals(metrics_text: str) -> dict[str, float]:
    """What the wrong answers below read: the gauges, the spooled counter, /posts' latency."""
    out = dict.fromkeys(("healthy", "depth", "spooled_total", "within", "total"), 0.0)
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            posts = s.labels.get("route") == "/posts"
            if s.name == "lab_api_broker_healthy":
                out["healthy"] = s.value
            elif s.name == "lab_api_spool_depth":
                out["depth"] = s.value
            elif s.name == "lab_api_posts_spooled_total":
                out["spooled_total"] = s.value
            elif s.name == "lab_api_request_duration_seconds_bucket" and posts \
                    and float(s.labels["le"]) == 0.1:
                out["within"] = s.value
            elif s.name == "lab_api_request_duration_seconds_count" and posts:
                out["total"] = s.value
    return out


def _wrong_q2_spooled_counter(metrics_text):  # a counter never goes down: read the depth
    m = _signals(metrics_text)
    return m["healthy"] < 1 or m["spooled_total"] > 0 or \
        (m["total"] > 0 and m["within"] / m["total"] < 0.99)


def _wrong_q2_at_most(metrics_text):  # "99 % or fewer" instead of "fewer than 99 %"
    m = _signals(metrics_text)
    return m["healthy"] < 1 or m["depth"] > 0 or \
        (m["total"] > 0 and m["within"] / m["total"] <= 0.99)


def _wrong_q2_all_routes(metrics_text):

    healthy = spool = within = total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "lab_api_broker_healthy":
                healthy = s.value
            elif s.name == "lab_api_spool_depth":
                spool = s.value
            elif s.name == "lab_api_request_duration_seconds_bucket" \
                    and float(s.labels["le"]) == 0.1:
                within += s.value
            elif s.name == "lab_api_request_duration_seconds_count":
                total += s.value
    return healthy < 1 or spool > 0 or (total > 0 and within / total < 0.99)


q2 = Exercise(
    name="07.q2 is the post API degraded?",
    task="api_degraded(metrics_text) returns True when the broker is unreachable, posts wait "
         "in the spool, or fewer than 99 % of /posts requests were answered within 100 ms",
    checker=_check_degraded,
    hint_text="prometheus_client.parser.text_string_to_metric_families(text) gives samples "
              "with .name, .labels, .value; the share within 100 ms is the bucket "
              "le='0.1' over _count, for route='/posts' only",
    solution_obj=_solution_q2, wrong=(_wrong_q2_broker_only, _wrong_q2_all_routes,
                                   _wrong_q2_spooled_counter, _wrong_q2_at_most))


recap = Quiz("07 recap", [
    Question("The broker was frozen. Why did the ack latency climb while submit() stayed "
             "fast?",
             {"a": "submit() only hands the post to the producer (or its spool); the ack waits "
                   "for the broker",
              "b": "a paused broker answers faster", "c": "the producer switched to acks=0"},
             "a",
             "Accepting a post and Kafka acknowledging it are two moments: the demo shows the "
             "gap between them."),
    Question("What does the 'lost' of the status line count?",
             {"a": "the producer's failed counter",
              "b": "posts accepted but never read back from the topic, by post id",
              "c": "posts still in the spool"}, "b",
             "Lost is counted by reading back, never from the producer's own counters."),
    Question("The demo ends with the broker still down and posts in the spool. Are they lost?",
             {"a": "yes", "b": "not lost: left on disk, and reported as such until replayed",
              "c": "they are delivered"}, "b",
             "A post in the spool is accepted and durable, not delivered; the report says how "
             "many wait there instead of folding them into 'lost 0'."),
    Question("What does killing the only broker of this lab not show?",
             {"a": "that the producer spools and replays",
              "b": "that a replicated cluster keeps acknowledged posts through a leader change",
              "c": "that submit() stays fast"}, "b",
             "One node has one copy: a leader change, a follower that lags, min.insync.replicas "
             "all need a cluster (the leader-failover drill, on three nodes)."),
])

EXERCISES = [q1, q2]

