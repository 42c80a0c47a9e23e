"""Pure-logic tests for lab_kit.metrics (no Kafka needed)."""

import json
import math
import random
import threading
import time

import pandas as pd
import pytest

from lab_kit.metrics import (
    STANDARD_COUNTERS,
    SUMMARY_KEYS,
    CpuMeter,
    LatencyHistogram,
    MetricsRecorder,
    percentiles_ms,
)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------------
# percentile math
# ---------------------------------------------------------------------------


def test_percentiles_ms_exact_nearest_rank():
    s = percentiles_ms([i / 1000 for i in range(100, 0, -1)])  # 1..100 ms, unsorted
    assert tuple(s) == SUMMARY_KEYS
    assert s["count"] == 100
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["p50_ms"] == pytest.approx(50.0)
    assert s["p90_ms"] == pytest.approx(90.0)
    assert s["p99_ms"] == pytest.approx(99.0)
    assert s["p999_ms"] == pytest.approx(100.0)
    assert s["max_ms"] == pytest.approx(100.0)


def test_percentiles_ms_empty():
    s = percentiles_ms([])
    assert s["count"] == 0
    assert all(s[k] is None for k in SUMMARY_KEYS if k != "count")


def test_histogram_uniform_1_to_10000_us():
    h = LatencyHistogram()
    for us in range(1, 10_001):
        h.record(us / 1_000_000)
    s = h.summary_ms()
    assert h.count == s["count"] == 10_000
    assert s["p50_ms"] == pytest.approx(5.0, rel=1e-3)
    assert s["p90_ms"] == pytest.approx(9.0, rel=1e-3)
    assert s["p99_ms"] == pytest.approx(9.9, rel=1e-3)
    assert s["p999_ms"] == pytest.approx(9.99, rel=1e-3)
    assert s["max_ms"] == 10.0  # exact, not the HDR bucket's upper edge
    assert s["mean_ms"] == pytest.approx(5.0005, rel=1e-9)
    assert h.percentile_ms(100) == 10.0
    assert h.percentile_ms(0) == pytest.approx(0.001)
    assert h.clamped == 0


def test_histogram_matches_exact_on_lognormal_sample():
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.005), 0.9) for _ in range(20_000)]
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    exact = percentiles_ms(values)
    approx = h.summary_ms()
    for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"):
        assert approx[key] == pytest.approx(exact[key], rel=0.01), key
    assert approx["max_ms"] == pytest.approx(exact["max_ms"], rel=1e-12)
    assert approx["mean_ms"] == pytest.approx(exact["mean_ms"], rel=1e-9)
    # percentiles never exceed the exact max
    assert approx["p999_ms"] <= approx["max_ms"]


def test_histogram_clamps_out_of_range_and_counts_them():
    h = LatencyHistogram()
    h.record(0.0)  # below 1 us
    h.record(-0.5)  # clock skew: counts as 0
    h.record(120.0)  # above 60 s
    h.record(0.002)  # in range
    assert h.count == 4
    assert h.clamped == 3
    s = h.summary_ms()
    assert s["max_ms"] == 120_000.0  # the real value, even though the bucket is capped
    assert s["p50_ms"] == pytest.approx(0.001, rel=1e-3)  # 0 and -0.5 land on 1 us
    assert h.percentile_ms(99) <= 60_000.0 * 1.001


def test_histogram_empty_summary_and_cdf():
    h = LatencyHistogram()
    s = h.summary_ms()
    assert s["count"] == 0 and s["p99_ms"] is None and s["max_ms"] is None
    assert math.isnan(h.percentile_ms(50))
    cdf = h.cdf()
    assert list(cdf.columns) == ["latency_ms", "fraction"] and cdf.empty


def test_histogram_cdf_is_monotonic_and_ends_at_one():
    h = LatencyHistogram()
    for us in range(1, 10_001):
        h.record(us / 1_000_000)
    cdf = h.cdf(points=50)
    assert len(cdf) == 50
    assert cdf["latency_ms"].is_monotonic_increasing
    assert cdf["fraction"].is_monotonic_increasing
    assert cdf["fraction"].iloc[-1] == 1.0
    assert cdf["latency_ms"].iloc[-1] == pytest.approx(10.0)
    # about half of the values are <= 5 ms
    row = cdf.iloc[(cdf["latency_ms"] - 5.0).abs().argmin()]
    assert row["fraction"] == pytest.approx(row["latency_ms"] / 10.0, abs=0.01)


def test_histogram_merge_and_reset():
    a, b, full = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    rng = random.Random(1)
    for i in range(2000):
        v = rng.uniform(0.0001, 0.05)
        (a if i % 2 else b).record(v)
        full.record(v)
    a.record(100.0)  # clamped
    full.record(100.0)
    assert a.merge(b) is a
    assert a.count == 2001 and a.clamped == 1
    assert a.summary_ms() == pytest.approx(full.summary_ms())
    assert b.count == 1000  # merge leaves the source alone
    c = a.copy()
    a.reset()
    assert a.count == 0 and a.clamped == 0 and a.summary_ms()["max_ms"] is None
    assert c.count == 2001


def test_histogram_buckets_are_under_0_1_percent_wide():
    # p50 of {v, 60 s} is v's bucket (its upper edge): never below v, at most 0.1 % above
    rng = random.Random(3)
    values_us = [1, 2, 999, 2047, 2048, 2049, 4095, 4096, 65_535, 1_000_001, 59_999_999]
    values_us += [rng.randint(1, 60_000_000) for _ in range(200)]
    for us in values_us:
        h = LatencyHistogram()
        h.record_many([us / 1_000_000, 60.0])
        p50_us = h.percentile_ms(50) * 1000.0
        assert us - 1e-6 <= p50_us <= us * (1 + 1 / 1024) + 1e-6, us


def test_histogram_record_many_matches_record():
    rng = random.Random(11)
    values = [rng.lognormvariate(math.log(0.003), 1.2) for _ in range(10_000)] + [-1.0, 99.0]
    one, many = LatencyHistogram(), LatencyHistogram()
    for v in values:
        one.record(v)
    many.record_many(values[:5000])
    many.record_many(values[5000:])
    assert many.summary_ms() == pytest.approx(one.summary_ms())
    assert many.clamped == one.clamped == 2
    pd.testing.assert_frame_equal(many.cdf(50), one.cdf(50))


# ---------------------------------------------------------------------------
# thread safety
# ---------------------------------------------------------------------------


def test_recorder_is_thread_safe():
    rec = MetricsRecorder()
    n_threads, n = 4, 50_000
    barrier = threading.Barrier(n_threads)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(n):
            rec.incr("acked")
            rec.record_latency("ack", 0.001 * (k + 1))
            if i % 10 == 0:
                rec.record_error(f"Err{k}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = rec.counters()
    assert c["acked"] == n_threads * n
    assert c["failed"] == n_threads * n // 10
    assert rec.errors_by_type() == {f"Err{k}": n // 10 for k in range(n_threads)}
    s = rec.summary_ms("ack")
    assert s["count"] == n_threads * n
    assert s["max_ms"] == pytest.approx(4.0)
    ts = rec.timeseries_frame()
    assert int(ts["acked"].sum()) == n_threads * n
    assert int(ts["failed"].sum()) == n_threads * n // 10


def test_standalone_histogram_is_thread_safe():
    h = LatencyHistogram()

    def work() -> None:
        for _ in range(20_000):
            h.record(0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.count == 80_000
    assert h.summary_ms()["p50_ms"] == pytest.approx(1.0, rel=1e-3)


# ---------------------------------------------------------------------------
# time series with a fake clock
# ---------------------------------------------------------------------------


def test_timeseries_buckets_throughput_and_error_rate():
    clock = FakeClock(100.0)
    rec = MetricsRecorder(interval_s=1.0, clock=clock)
    for _ in range(3):
        rec.incr("acked", now=100.2)
    rec.incr("submitted", 4, now=100.1)
    rec.incr("acked", now=101.5)
    rec.record_error("NotLeaderForPartitionError", now=101.7)
    # nothing in bucket 2
    clock.t = 103.1
    rec.incr("acked")  # now=None -> reads the clock
    ts = rec.timeseries_frame()
    assert ts.index.name == "t_s"
    assert list(ts.index) == [0.0, 1.0, 2.0, 3.0]
    assert list(ts["acked"]) == [3, 1, 0, 1]
    assert list(ts["submitted"]) == [4, 0, 0, 0]
    assert list(ts["failed"]) == [0, 1, 0, 0]
    assert list(ts["throughput_per_s"]) == [3.0, 1.0, 0.0, 1.0]
    assert list(ts["error_rate"]) == [0.0, 0.5, 0.0, 0.0]
    assert ts.attrs["interval_s"] == 1.0
    assert rec.counters()["acked"] == 5


def test_timeseries_half_second_interval_scales_throughput():
    rec = MetricsRecorder(interval_s=0.5, clock=FakeClock(0.0))
    rec.incr("acked", 2, now=0.1)
    rec.incr("acked", 3, now=0.6)
    rec.record_error("KafkaTimeoutError", now=0.7)
    ts = rec.timeseries_frame()
    assert list(ts.index) == [0.0, 0.5]
    assert list(ts["throughput_per_s"]) == [4.0, 6.0]
    assert ts["error_rate"].iloc[1] == pytest.approx(0.25)


def test_timeseries_ack_latency_columns():
    rec = MetricsRecorder(interval_s=1.0, clock=FakeClock(0.0))
    rec.record_latency("ack", 0.010, now=0.5)
    rec.record_latency("ack", 0.030, now=0.6)
    rec.record_latency("ack", 0.005, now=2.5)
    rec.record_latency("submit", 0.0001, now=1.5)  # not in the time series
    rec.incr("acked", 3, now=0.5)
    ts = rec.timeseries_frame()
    assert list(ts.index) == [0.0, 1.0, 2.0]
    assert ts["ack_mean_ms"].iloc[0] == pytest.approx(20.0)
    assert ts["ack_max_ms"].iloc[0] == pytest.approx(30.0)
    assert math.isnan(ts["ack_mean_ms"].iloc[1])
    assert ts["ack_max_ms"].iloc[2] == pytest.approx(5.0)
    assert "submit_mean_ms" not in ts.columns


def test_timeseries_bucket_cap_drops_oldest():
    rec = MetricsRecorder(interval_s=1.0, clock=FakeClock(0.0), max_buckets=3)
    for i in range(5):
        rec.incr("acked", i + 1, now=i + 0.5)
    ts = rec.timeseries_frame()
    assert list(ts.index) == [2.0, 3.0, 4.0]
    assert list(ts["acked"]) == [3, 4, 5]
    rec.incr("acked", 100, now=0.5)  # a late write into a dropped bucket
    ts = rec.timeseries_frame()
    assert list(ts.index) == [2.0, 3.0, 4.0]
    assert rec.counters()["acked"] == 115  # totals keep everything


def test_empty_timeseries_frame():
    ts = MetricsRecorder(clock=FakeClock()).timeseries_frame()
    assert ts.empty
    assert ts.index.name == "t_s"
    assert {"throughput_per_s", "error_rate"} <= set(ts.columns)


def test_marks_and_windows_in_seconds_since_start():
    clock = FakeClock(50.0)
    rec = MetricsRecorder(clock=clock)
    assert rec.mark("broker killed", now=52.5) == pytest.approx(2.5)
    rec.mark("broker back", now=58.0)
    rec.add_window(52.5, 58.0, "broker down")
    rec.add_window(10.0, 12.0, "partition", relative=True)
    rec.open_window("slow disk", now=60.0)
    clock.t = 61.0
    ev = rec.events_frame()
    assert list(ev.columns) == ["t_s", "label"]
    assert list(ev["label"]) == ["broker killed", "broker back"]
    assert list(ev["t_s"]) == pytest.approx([2.5, 8.0])
    w = rec.windows
    assert w[0] == pytest.approx((2.5, 8.0, "broker down"))
    assert w[1] == pytest.approx((10.0, 11.0, "slow disk"))  # open: ends "now"
    assert w[2] == pytest.approx((10.0, 12.0, "partition"))
    rec.close_window("slow disk", now=63.0)
    assert (10.0, 13.0, "slow disk") in rec.windows
    with pytest.raises(KeyError):
        rec.close_window("never opened")


# ---------------------------------------------------------------------------
# counters, errors, exports
# ---------------------------------------------------------------------------


def test_record_error_counts_per_type_and_failed():
    rec = MetricsRecorder(clock=FakeClock())
    rec.record_error("KafkaTimeoutError")
    rec.record_error("KafkaTimeoutError")
    rec.record_error("MessageSizeTooLargeError")
    rec.incr("retried", 5)
    rec.incr("moderated")
    c = rec.counters()
    assert c["failed"] == 3
    assert c["retried"] == 5 and c["moderated"] == 1
    assert set(STANDARD_COUNTERS) <= set(c)
    assert c["dead_lettered"] == 0
    assert rec.errors_by_type() == {"KafkaTimeoutError": 2, "MessageSizeTooLargeError": 1}


def test_latency_frame_rows_and_clamps():
    rec = MetricsRecorder(clock=FakeClock())
    rec.record_latency("submit", 0.00002)
    rec.record_latency("ack", 0.004)
    rec.record_latency("ack", 75.0)  # > 60 s
    df = rec.latency_frame()
    assert list(df.columns) == ["name", *SUMMARY_KEYS, "clamped"]
    assert list(df["name"]) == ["submit", "ack"]
    ack = df.set_index("name").loc["ack"]
    assert ack["count"] == 2 and ack["clamped"] == 1
    assert ack["max_ms"] == 75_000.0
    assert df.set_index("name").loc["submit", "p50_ms"] == pytest.approx(0.02, rel=1e-3)
    cdf = rec.cdf_frame("ack")
    assert cdf["fraction"].iloc[-1] == 1.0
    assert rec.cdf_frame("nope").empty
    assert rec.summary_ms("nope")["count"] == 0
    assert rec.histogram("ack").count == 2


def test_client_metrics_frame_flattens_numbers_only():
    sample = {
        "producer-metrics": {
            "record-send-rate": 12.5,
            "request-latency-max": float("-inf"),  # kafka-python: no sample yet
            "batch-size-avg": 512,
            "client-id": "streamsocial",
            "flag": True,
        },
        "producer-node-metrics.node-1": {"request-rate": 3},
        "producer-topic-metrics.posts": {"nested": {"byte-rate": 1.5}},
    }
    df = MetricsRecorder.client_metrics_frame(sample)
    assert list(df.columns) == ["group", "name", "value"]
    assert len(df) == 5
    assert df["value"].dtype == float
    rows = {(g, n): v for g, n, v in df.itertuples(index=False)}
    assert rows[("producer-metrics", "record-send-rate")] == 12.5
    assert rows[("producer-metrics", "batch-size-avg")] == 512.0
    assert math.isnan(rows[("producer-metrics", "request-latency-max")])
    assert rows[("producer-node-metrics.node-1", "request-rate")] == 3.0
    assert rows[("producer-topic-metrics.posts", "nested.byte-rate")] == 1.5
    assert ("producer-metrics", "client-id") not in rows
    assert ("producer-metrics", "flag") not in rows
    assert MetricsRecorder.client_metrics_frame({}).empty


def test_snapshot_is_json_serialisable():
    clock = FakeClock(0.0)
    rec = MetricsRecorder(clock=clock)
    rec.incr("submitted", 3, now=0.1)
    rec.incr("acked", 2, now=0.2)
    rec.record_error("KafkaTimeoutError", now=0.3)
    rec.record_latency("ack", 0.003, now=0.2)
    rec.record_latency("submit", 0.00001)
    rec.mark("broker killed", now=0.25)
    rec.add_window(0.25, 0.9, "broker down")
    clock.t = 1.0
    snap = rec.snapshot()
    text = json.dumps(snap, allow_nan=False)
    back = json.loads(text)
    assert back["counters"]["submitted"] == 3
    assert back["counters"]["failed"] == 1
    assert back["latency_ms"]["ack"]["count"] == 1
    assert back["latency_ms"]["ack"]["max_ms"] == pytest.approx(3.0)
    assert back["errors_by_type"] == {"KafkaTimeoutError": 1}
    assert back["events"] == [[0.25, "broker killed"]]
    assert back["windows"][0][2] == "broker down"
    assert back["elapsed_s"] == pytest.approx(1.0)


def test_reset_clears_everything_and_restarts_clock():
    clock = FakeClock(10.0)
    rec = MetricsRecorder(clock=clock)
    rec.incr("acked", 7, now=10.5)
    rec.record_error("X", now=10.5)
    rec.record_latency("ack", 0.01, now=10.5)
    rec.mark("m", now=10.6)
    rec.add_window(10.0, 11.0, "w")
    clock.t = 20.0
    rec.reset()
    assert rec.start == 20.0
    assert all(v == 0 for v in rec.counters().values())
    assert rec.errors_by_type() == {}
    assert rec.latency_frame().empty
    assert rec.timeseries_frame().empty
    assert rec.windows == [] and rec.events_frame().empty
    rec.incr("acked", now=21.5)
    assert list(rec.timeseries_frame().index) == [1.0]


def test_constructor_validates():
    with pytest.raises(ValueError):
        MetricsRecorder(interval_s=0)
    with pytest.raises(ValueError):
        MetricsRecorder(max_buckets=0)


def test_latency_frame_empty_has_columns():
    df = MetricsRecorder(clock=FakeClock()).latency_frame()
    assert isinstance(df, pd.DataFrame) and df.empty
    assert "p99_ms" in df.columns


def test_cpu_meter_splits_caller_and_background_threads():
    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    cpu = CpuMeter().start()
    t0 = time.perf_counter()
    worker = threading.Thread(target=spin, args=(0.15,))
    worker.start()
    worker.join()
    spin(0.05)
    f = cpu.fields(posts=1000, elapsed_s=time.perf_counter() - t0)
    # per post: caller ~50 µs (0.05 s / 1000), background ~150 µs (the other thread; other
    # threads left running in this test process can only add to it)
    assert 45 <= f["caller_cpu_us_per_post"] <= 80
    assert 140 <= f["background_cpu_us_per_post"] <= 400
    assert f["cpu_us_per_post"] == pytest.approx(
        f["caller_cpu_us_per_post"] + f["background_cpu_us_per_post"], abs=0.02)


def test_nearest_rank_is_exact_where_floats_round_up():
    """p99.9 of 1,000 values is the 999th (99.9 / 100 * 1000 is 999.0000000000001 in floats)."""
    values = [i / 1000.0 for i in range(1, 1001)]  # 1 ms .. 1000 ms
    s = percentiles_ms(values)
    assert s["p999_ms"] == pytest.approx(999.0) and s["max_ms"] == pytest.approx(1000.0)
