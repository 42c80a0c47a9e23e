"""Exercises of notebook 06 (tuning: acks, linger, batch size, compression).

* q1: ``settings_for(goal)`` returns producer settings for "lowest latency" or "highest
  throughput"; checked against the mechanisms the notebook shows (a batch fills only while it
  lingers at a steady rate; section 2's sweep: the 16 kB default caps a batch) and against
  kafka-python 3.0's own rules for idempotence (offline).
* q2: ``pick(sweep, p99_target_ms)`` chooses, from a sweep's table, the fastest setting that
  keeps ``acks='all'`` and meets a p99 target (offline, pure logic on DataFrames).
* q3: the q1 answer runs on the broker: at a steady rate the throughput settings must put at
  least twice as many posts in each produce request as the latency settings (live).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from lab_kit.exercises.core import CaseFailed, Exercise, Question, Quiz
from lab_kit.harness.open_loop import run_open_loop
from lab_kit.posts import Workload

GOALS = ("lowest latency", "highest throughput")
TARGET_P99_MS = 100  # StreamSocial's target for an ack (a setting of the course, not a measurement)
CODECS = ("gzip", "snappy", "lz4", "zstd")


# --- q1: settings for a goal, checked against rules ----------------------------------------

def _known_keys() -> set[str]:
    from kafka import KafkaProducer  # the keys the very client of the lesson accepts

    return set(KafkaProducer.DEFAULT_CONFIG)


def _codec_available(codec: str) -> bool:
    import kafka.codec as codec_mod

    return bool(getattr(codec_mod, f"has_{codec}", lambda: False)())


def _settings(settings_for: Any, goal: str) -> dict:
    cfg = settings_for(goal)
    if not isinstance(cfg, dict):
        raise CaseFailed(goal, f"returned {cfg!r}, not a dict of producer settings")
    unknown = sorted(set(cfg) - _known_keys())
    if unknown:
        raise CaseFailed(goal, f"{unknown} are not KafkaProducer settings (kafka-python spells "
                               f"them with underscores: linger_ms, batch_size, ...)")
    return cfg


def _keeps_idempotence(goal: str, cfg: dict) -> None:
    if cfg.get("acks", "all") not in ("all", -1):
        raise CaseFailed(goal, f"acks={cfg['acks']!r}: StreamSocial loses nothing, so acks stays "
                               f"'all' whatever the goal")
    if cfg.get("enable_idempotence", True) is False:
        raise CaseFailed(goal, "enable_idempotence=False: retries could then write duplicates")
    if cfg.get("retries", 1) == 0:
        raise CaseFailed(goal, "retries=0 turns idempotence off (kafka-python 3.0 logs a "
                               "warning) and fails a post at its first retriable error")
    if cfg.get("max_in_flight_requests_per_connection", 5) > 5:
        raise CaseFailed(goal, "more than 5 requests in flight turns idempotence off")


def _check_settings_rules(settings_for: Any) -> int:
    lat = _settings(settings_for, "lowest latency")
    tp = _settings(settings_for, "highest throughput")
    for goal, cfg in (("lowest latency", lat), ("highest throughput", tp)):
        _keeps_idempotence(goal, cfg)
        if "linger_ms" not in cfg:
            raise CaseFailed(goal, "say linger_ms: the lab's producer and kafka-python have "
                                   "different defaults (5 and 0)")
        codec = cfg.get("compression_type")
        if codec is not None and (codec not in CODECS or not _codec_available(codec)):
            raise CaseFailed(goal, f"compression_type={codec!r} is not a codec this kafka-python "
                                   f"can use (try lz4 or zstd)")
    if not 0 <= lat["linger_ms"] <= 5:
        raise CaseFailed("lowest latency", f"linger_ms={lat['linger_ms']}: every post may wait "
                                           f"that long for its batch; keep it at 5 or below")
    if not 10 <= tp["linger_ms"] <= TARGET_P99_MS // 2:
        raise CaseFailed("highest throughput",
                         f"linger_ms={tp['linger_ms']}: at least 10 to fill batches at a steady "
                         f"rate, at most {TARGET_P99_MS // 2} so a post's wait for its batch "
                         f"stays well inside the {TARGET_P99_MS} ms ack target")
    if tp.get("batch_size", 16_384) < 65_536:
        raise CaseFailed("highest throughput",
                         f"batch_size={tp.get('batch_size', 16_384)}: the default 16 kB caps a "
                         f"batch before linger does; give it at least 64 kB (65_536)")
    return 2


def _solution_q1(goal):
    if goal == "lowest latency":
        return {"acks": "all", "linger_ms": 0}
    if goal == "highest throughput":
        return {"acks": "all", "linger_ms": 20, "batch_size": 131_072,
                "compression_type": "lz4"}
    raise ValueError(f"goal must be one of 'lowest latency', 'highest throughput': {goal!r}")


def _wrong_q1_acks(goal):  # the classic: buy latency with durability
    if goal == "lowest latency":
        return {"acks": 1, "linger_ms": 0}
    return {"acks": "all", "linger_ms": 20, "batch_size": 131_072}


def _wrong_q1_linger(goal):  # a whole second of linger: batches fill, the ack target is gone
    if goal == "lowest latency":
        return {"acks": "all", "linger_ms": 0}
    return {"acks": "all", "linger_ms": 1000, "batch_size": 131_072}


def _wrong_q1_spelling(goal):
    return {"acks": "all", "linger.ms": 0 if goal == "lowest latency" else 20}


q1 = Exercise(
    name="06.q1 settings for a goal",
    task="settings_for(goal) returns a dict of KafkaProducer settings for 'lowest latency' "
         "and for 'highest throughput'; acks stays 'all'",
    checker=_check_settings_rules,
    hint_text="acks='all' in both; linger_ms 0 to 5 for latency; for throughput linger_ms "
              "10 to 50 and batch_size ≥ 65_536 (compression optional: lz4 or zstd)",
    solution_obj=_solution_q1, wrong=(_wrong_q1_acks, _wrong_q1_linger, _wrong_q1_spelling))


# --- q2: pick from the sweep's table --------------------------------------------------------

def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["acks", "linger_ms", "msgs_per_s", "ack_p50_ms",
                                       "ack_p99_ms"])


_PICK_CASES: list[tuple[str, pd.DataFrame, float, Any]] = [
    ("acks=0 is fastest but does not count",
     _frame([("all", "0", 4_000.0, 3.0, 20.0), ("all", "20", 9_000.0, 12.0, 40.0),
             ("0", "20", 15_000.0, 10.0, 30.0), ("1", "20", 11_000.0, 11.0, 35.0)]), 100, 1),
    ("the fastest misses the p99 target",
     _frame([("all", "5", 7_000.0, 6.0, 60.0), ("all", "50", 12_000.0, 30.0, 140.0),
             ("all", "20", 10_000.0, 14.0, 90.0)]), 100, 2),
    ("a p99 exactly on the target meets it",
     _frame([("all", "5", 7_000.0, 6.0, 60.0), ("all", "20", 10_000.0, 14.0, 100.0)]), 100, 1),
    ("a median under the target is not enough",
     _frame([("all", "5", 7_000.0, 6.0, 45.0), ("all", "50", 12_000.0, 30.0, 80.0)]), 50, 0),
    ("no latency measured (NaN) cannot meet a target",
     _frame([("all", "5", 7_000.0, 6.0, 45.0), ("all", "50", 12_000.0, math.nan, math.nan)]),
     100, 0),
    ("nothing meets the target",
     _frame([("all", "5", 7_000.0, 6.0, 160.0), ("1", "5", 9_000.0, 4.0, 20.0)]), 100, None),
    ("a filtered sweep: its index labels are 4, 7, 9, not row numbers",
     _frame([("all", "5", 7_000.0, 6.0, 60.0), ("0", "20", 15_000.0, 10.0, 30.0),
             ("all", "20", 10_000.0, 14.0, 90.0)]).set_axis([4, 7, 9]), 100, 9),
]


def _check_pick(pick: Any) -> int:
    for case, df, target, want in _PICK_CASES:
        got = pick(df.copy(), target)
        if got is not None and not isinstance(got, (int, str)):
            got = getattr(got, "item", lambda g=got: g)()  # numpy integers are fine
        if got != want:
            raise CaseFailed(case, f"you chose {got!r}, expected {want!r} "
                                   f"(p99 target {target} ms, from:\n{df.to_string()})")
    return len(_PICK_CASES)


def _solution_q2(sweep, p99_target_ms):
    ok = sweep[(sweep["acks"] == "all") & (sweep["ack_p99_ms"] <= p99_target_ms)]
    if ok.empty:
        return None
    return ok["msgs_per_s"].idxmax()


def _wrong_q2_any_acks(sweep, p99_target_ms):
    ok = sweep[sweep["ack_p99_ms"] <= p99_target_ms]
    return None if ok.empty else ok["msgs_per_s"].idxmax()


def _wrong_q2_median(sweep, p99_target_ms):
    ok = sweep[(sweep["acks"] == "all") & (sweep["ack_p50_ms"] <= p99_target_ms)]
    return None if ok.empty else ok["msgs_per_s"].idxmax()


def _wrong_q2_position(sweep, p99_target_ms):
    ok = ((sweep["acks"] == "all") & (sweep["ack_p99_ms"] <= p99_target_ms)).to_numpy()
    if not ok.any():
        return None
    return int(sweep["msgs_per_s"].where(ok, -math.inf).to_numpy().argmax())  # a position


q2 = Exercise(
    name="06.q2 pick a setting from the sweep",
    task="pick(sweep, p99_target_ms) returns the index label of the row with the highest "
         "msgs_per_s among rows with acks 'all' and ack_p99_ms ≤ the target, or None",
    checker=_check_pick,
    hint_text="filter first (acks == 'all' and ack_p99_ms <= target: NaN compares False), "
              "then idxmax() on msgs_per_s; an empty selection means None",
    solution_obj=_solution_q2,
    wrong=(_wrong_q2_any_acks, _wrong_q2_median, _wrong_q2_position))


# --- q3: the q1 answer, run on the broker ---------------------------------------------------

LIVE_RATE = 1_000  # posts/s, a steady rate (a setting)
LIVE_SECONDS = 1.0
MIN_BATCHING_GAIN = 2.0


def _records_per_request(lab: Any, cfg: dict) -> tuple[float, dict]:
    """Send at a steady rate with ``cfg``; kafka-python's records-per-request-avg and the ack
    percentiles of that run."""
    with lab.producer("posts", max_in_flight=100_000, **cfg) as producer:
        producer.submit(Workload(seed=61).posts(1)[0]).result(timeout=30)  # metadata, connection
        producer.metrics.reset()
        run = run_open_loop(producer.submit, Workload(seed=62).iter_posts(), LIVE_RATE,
                            LIVE_SECONDS, freeze_gc=False)
        if not producer.flush(30):
            raise CaseFailed(f"{cfg}", "not every post was acked within 30 s")
        ack = producer.metrics.summary_ms("ack")
        cm = producer.client_metrics().get("producer-metrics", {})
    if ack["count"] < run.submitted:
        raise CaseFailed(f"{cfg}", f"{ack['count']} of {run.submitted} posts acked")
    return float(cm.get("records-per-request-avg") or 0.0), ack


def _check_live(settings_for: Any, *, lab: Any) -> int:
    lat, tp = (_settings(settings_for, g) for g in GOALS)
    for goal, cfg in (("lowest latency", lat), ("highest throughput", tp)):
        _keeps_idempotence(goal, cfg)
    lat_rpr, lat_ack = _records_per_request(lab, lat)
    tp_rpr, tp_ack = _records_per_request(lab, tp)
    gain = tp_rpr / lat_rpr if lat_rpr else math.inf
    print(f"one run at {LIVE_RATE:,} posts/s for {LIVE_SECONDS:g} s, this machine:")
    for goal, rpr, ack in (("lowest latency", lat_rpr, lat_ack),
                           ("highest throughput", tp_rpr, tp_ack)):
        print(f"  {goal:18s} {rpr:6.1f} posts per request, ack p50 {ack['p50_ms']:.1f} ms, "
              f"p99 {ack['p99_ms']:.1f} ms")
    if gain < MIN_BATCHING_GAIN:
        raise CaseFailed("batching on the broker",
                         f"your throughput settings put {gain:.1f}× as many posts in a request "
                         f"as your latency settings; expected ≥ {MIN_BATCHING_GAIN:g}×")
    return 1


def _wrong_q3_swapped(goal):
    return _solution_q1("highest throughput" if goal == "lowest latency" else "lowest latency")


q3 = Exercise(
    name="06.q3 your settings on the broker",
    task="the same settings_for(goal), run at a steady 1,000 posts/s: the throughput settings "
         "must pack at least 2× as many posts per produce request",
    checker=_check_live,
    hint_text="at a steady rate a batch holds what arrives within linger_ms: a longer linger "
              "(and room in batch_size) packs more posts per request",
    solution_obj=_solution_q1, wrong=(_wrong_q3_swapped,), needs_broker=True)


recap = Quiz("06 recap", [
    Question("The throughput sweep and the latency runs are separate measurements. Why?",
             {"a": "a flood measures queueing, not the setting's latency",
              "b": "the broker cannot do both at once",
              "c": "to save time"}, "a",
             "As fast as possible, every post waits behind the ones before it: that wait is the "
             "queue, not linger or acks. Latency is measured at a steady, moderate rate."),
    Question("At a steady rate, what does linger_ms cost a post?",
             {"a": "nothing, it only fills batches", "b": "up to linger_ms of waiting for its "
              "batch to leave", "c": "exactly linger_ms on every post"}, "b",
             "A batch leaves when it is full or when it has lingered; its first post waits the "
             "longest, its last almost nothing."),
    Question("Why do you compare medians of several runs instead of one run per setting?",
             {"a": "the first run warms the broker up", "b": "one run on a shared machine can be "
              "off by more than the difference between two settings", "c": "medians are larger"},
             "b",
             "The dots of the sweep scatter around each median; a difference smaller than that "
             "scatter is not a finding."),
    Question("kafka-python 3.0 with acks=1 and enable_idempotence left at its default: what "
             "happens?",
             {"a": "it raises", "b": "idempotence is turned off, with a warning",
              "c": "acks is raised to 'all'"}, "b",
             "Idempotence needs acks='all'; a conflicting acks you set yourself turns it off "
             "(kafka-python 3.0's KafkaProducer.__init__). Set enable_idempotence=True to get "
             "an error instead."),
])

EXERCISES = [q1, q2, q3]
