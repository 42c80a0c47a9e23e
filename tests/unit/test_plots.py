"""Figure-structure tests for lab_kit.plots (Agg backend, synthetic data, no Kafka)."""

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lab_kit import plots  # noqa: E402
from lab_kit.metrics import MetricsRecorder  # noqa: E402


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


WINDOWS = [(3.0, 5.0, "broker down"), (7.0, 8.0, "partition")]


def _render(fig: Figure) -> None:
    fig.savefig(io.BytesIO(), format="png")


@pytest.fixture
def recorder() -> MetricsRecorder:
    """10 s of traffic: 100 acks/s, a failure burst in 3..5 s with spooling, replay at 5..6 s."""
    rec = MetricsRecorder(interval_s=1.0, clock=FakeClock(0.0))
    rng = np.random.default_rng(3)
    for sec in range(10):
        now = sec + 0.5
        rec.incr("submitted", 100, now=now)
        if 3 <= sec < 5:
            rec.incr("acked", 50, now=now)
            for _ in range(50):
                rec.record_error("KafkaTimeoutError", now=now)
            rec.incr("spooled", 50, now=now)
        else:
            rec.incr("acked", 100, now=now)
        if sec == 5:
            rec.incr("replayed", 100, now=now)
        for v in rng.lognormal(np.log(0.004), 0.5, size=50):
            rec.record_latency("ack", float(v), now=now)
            rec.record_latency("submit", float(v) / 200)
    rec.add_window(3.0, 5.0, "broker down")
    rec.add_window(7.0, 8.0, "partition")
    return rec


def test_latency_percentiles_grouped_bars(recorder):
    lf = recorder.latency_frame()
    fig = plots.latency_percentiles({
        "ack (dict)": recorder.summary_ms("ack"),
        "submit (row)": lf.set_index("name").loc["submit"],
        "ack (1-row frame)": lf[lf["name"] == "ack"],
        "partial": {"p50_ms": 1.0, "p99_ms": None},
    })
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.patches) == 4 * 4  # 4 percentiles x 4 contenders
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["p50", "p90", "p99", "p99.9"]
    assert len(ax.get_legend().get_texts()) == 4
    assert "ms" in ax.get_ylabel()
    # the dict contender's p99 bar has the recorder's p99 height
    assert ax.patches[2].get_height() == pytest.approx(recorder.summary_ms("ack")["p99_ms"])
    _render(fig)


def test_latency_percentiles_rejects_ambiguous_frame():
    df = pd.DataFrame({"name": ["a", "b"], "p50_ms": [1.0, 2.0]})
    with pytest.raises(ValueError):
        plots.latency_percentiles({"x": df})


def test_latency_cdf_one_line_per_label(recorder):
    fig = plots.latency_cdf({
        "ack": recorder.cdf_frame("ack"),
        "submit": recorder.cdf_frame("submit"),
        "empty": recorder.cdf_frame("missing"),
    })
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ack", "submit"]
    assert ax.lines[0].get_ydata()[-1] == 1.0
    _render(fig)


def test_throughput_over_time_shades_windows(recorder):
    ts = recorder.timeseries_frame()
    fig = plots.throughput_over_time(ts, recorder.windows, events=[(3.0, "kill")])
    (ax,) = fig.axes
    assert len(ax.patches) == 2  # one axvspan per window
    data_lines = [ln for ln in ax.lines if ln.get_label() == "acked msgs/s"]
    assert len(data_lines) == 1
    assert list(data_lines[0].get_ydata()) == [100, 100, 100, 50, 50, 100, 100, 100, 100, 100]
    texts = {t.get_text() for t in ax.texts}
    assert {"broker down", "partition"} <= texts
    assert "msgs/s" in ax.get_ylabel() and "(s)" in ax.get_xlabel()
    _render(fig)


def test_throughput_without_windows_has_no_patches(recorder):
    fig = plots.throughput_over_time(recorder.timeseries_frame())
    (ax,) = fig.axes
    assert len(ax.patches) == 0 and len(ax.lines) == 1


def test_error_rate_with_spool_axis(recorder):
    ts = recorder.timeseries_frame()
    fig = plots.error_rate_over_time(ts, WINDOWS)
    assert len(fig.axes) == 2
    ax, ax2 = fig.axes
    assert len(ax.lines) == 1
    assert max(ax.lines[0].get_ydata()) == pytest.approx(50.0)  # 50 failed / 100 done, as %
    assert len(ax.patches) == 2
    assert sorted(ln.get_label() for ln in ax2.lines) == ["replayed (count)", "spooled (count)"]
    assert "%" in ax.get_ylabel()
    _render(fig)


def test_error_rate_without_spool_columns_has_one_axis():
    ts = pd.DataFrame({"error_rate": [0.0, 0.1, 0.0]},
                      index=pd.Index([0.0, 1.0, 2.0], name="t_s"))
    fig = plots.error_rate_over_time(ts)
    assert len(fig.axes) == 1
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx([0.0, 10.0, 0.0])


def test_sync_vs_async_two_panels_skip_missing():
    results = {
        "sync": {"msgs_per_s": 450.0, "submit_p50_ms": 2.1, "submit_p99_ms": 6.0,
                 "ack_p50_ms": 2.1, "ack_p99_ms": 6.0},
        "async": {"msgs_per_s": 42_000.0, "submit_p50_ms": 0.02, "submit_p99_ms": 0.09,
                  "ack_p50_ms": None},
        "broken": {"submit_p50_ms": 0.5},
    }
    fig = plots.sync_vs_async(results)
    ax_tp, ax_lat = fig.axes
    assert len(ax_tp.patches) == 2  # "broken" has no msgs_per_s
    assert sorted(p.get_height() for p in ax_tp.patches) == [450.0, 42_000.0]
    # sync 4 + async 2 (ack None / missing skipped) + broken 1
    assert len(ax_lat.patches) == 7
    assert ax_lat.get_yscale() == "log"
    assert [t.get_text() for t in ax_lat.get_xticklabels()] == [
        "submit p50", "submit p99", "ack p50", "ack p99"]
    _render(fig)


def test_sync_vs_async_without_ack_keys_drops_ack_groups():
    fig = plots.sync_vs_async({"sync": {"msgs_per_s": 1.0, "submit_p50_ms": 1.0},
                               "async": {"msgs_per_s": 9.0, "submit_p99_ms": 0.1}})
    _, ax_lat = fig.axes
    assert [t.get_text() for t in ax_lat.get_xticklabels()] == ["submit p50", "submit p99"]
    assert len(ax_lat.patches) == 2


def test_timeline_lines_per_present_column():
    rec = MetricsRecorder(interval_s=0.5, clock=FakeClock(0.0))
    rec.incr("submitted", 10, now=0.1)
    rec.incr("acked", 10, now=0.6)
    rec.incr("spooled", 4, now=0.7)
    ts = rec.timeseries_frame()
    fig = plots.timeline(ts, ["submitted", "acked", "spooled", "moderated"], WINDOWS)
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.lines] == ["submitted", "acked", "spooled"]
    assert list(ax.lines[1].get_ydata()) == [0.0, 20.0]  # 10 per 0.5 s -> 20 per s
    assert len(ax.patches) == 2
    assert "per second" in ax.get_ylabel()
    _render(fig)


def test_tuning_sweep_hue_lines_sorted_by_x():
    df = pd.DataFrame({
        "linger_ms": [20, 0, 5, 20, 0, 5],
        "msgs_per_s": [9000, 4000, 7000, 6000, 2500, np.nan],
        "acks": ["1", "1", "1", "all", "all", "all"],
    })
    fig = plots.tuning_sweep(df, x="linger_ms", y="msgs_per_s", hue="acks")
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    assert [ln.get_label() for ln in ax.lines] == ["acks=1", "acks=all"]
    assert list(ax.lines[0].get_xdata()) == [0, 5, 20]
    assert list(ax.lines[1].get_xdata()) == [0, 20]  # NaN y dropped
    assert ax.get_xlabel() == "linger (ms)"
    _render(fig)
    fig2 = plots.tuning_sweep(df, x="linger_ms", y="msgs_per_s")
    assert len(fig2.axes[0].lines) == 1


def test_with_runs_puts_each_run_behind_its_own_line_in_its_colour():
    runs = pd.DataFrame({"linger_ms": [0, 0, 5, 5, 0, 0, 5, 5],
                         "msgs_per_s": [1, 2, 3, 4, 5, 6, 7, 8],
                         "acks": ["all"] * 4 + ["1"] * 4})
    medians = runs.groupby(["acks", "linger_ms"], as_index=False)["msgs_per_s"].median()
    fig = plots.with_runs(plots.tuning_sweep(medians, x="linger_ms", y="msgs_per_s",
                                             hue="acks"), runs, "linger_ms", "msgs_per_s", "acks")
    (ax,) = fig.axes
    dots = ax.collections
    assert [len(d.get_offsets()) for d in dots] == [4, 4]  # one scatter per hue, every run
    for line, d in zip(ax.lines, dots, strict=True):  # the same colour as the medians' line
        assert np.allclose(matplotlib.colors.to_rgba(line.get_color())[:3],
                           d.get_facecolor()[0][:3])
    assert sorted(d.get_offsets()[:, 1].tolist()[0] for d in dots) == [1.0, 5.0]
    _render(fig)


def test_plots_accept_empty_frames():
    ts = MetricsRecorder(clock=FakeClock()).timeseries_frame()
    for fig in (plots.throughput_over_time(ts), plots.error_rate_over_time(ts),
                plots.timeline(ts, ["acked"]), plots.latency_cdf({}),
                plots.latency_percentiles({})):
        assert isinstance(fig, Figure)
        _render(fig)


def test_cpu_per_post_stacks_caller_and_background():
    fig = plots.cpu_per_post({
        "sync": {"caller_cpu_us_per_post": 90.0, "background_cpu_us_per_post": 350.0},
        "async": {"caller_cpu_us_per_post": 30.0, "background_cpu_us_per_post": 12.0},
        "no cpu": {"msgs_per_s": 5.0},
    })
    (ax,) = fig.axes
    widths = [(p.get_x(), p.get_width()) for p in ax.patches]
    assert widths == [(0.0, 90.0), (0.0, 30.0), (90.0, 350.0), (30.0, 12.0)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sync", "async"]
    assert [t.get_text() for t in ax.texts] == [" 440.0 µs", " 42.0 µs"]
    _render(fig)


def test_callback_timeline_one_lane_per_model():
    rows = [{"model": m, "i": i, "submitted_at_s": i * 0.001, "callback_at_s": 0.01 + i * 0.001,
             "callback_thread": t, "resumed_at_s": (0.012 + i * 0.001) if m == "asyncio" else None,
             "resumed_thread": "loop" if m == "asyncio" else None}
            for m, t in (("kafka-python", "sender"), ("confluent", "poll"), ("asyncio", "sender"))
            for i in range(3)]
    fig = plots.callback_timeline(pd.DataFrame(rows))
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["kafka-python", "confluent", "asyncio"]
    labels = ax.get_legend_handles_labels()[1]
    assert labels.count("submit") == 1 and "await resumed on loop" in labels
    assert {"callback on sender", "callback on poll"} <= set(labels)
    _render(fig)


def test_cpu_per_post_without_data_says_so():
    (ax,) = plots.cpu_per_post({"sync": {"msgs_per_s": 1.0}}).axes
    assert "no data" in ax.texts[0].get_text()


# --- notebook 08: moderation at scale ------------------------------------------------------

MODES = pd.DataFrame({
    "mode": ["one_at_a_time", "concurrent", "batched"],
    "batch_size": [1, 1, 100], "concurrency": [1, 16, 4],
    "posts": [1000, 1000, 1000], "seconds": [3.3, 1.1, 0.4],
    "posts_per_s": [300.0, 900.0, 2500.0], "backend_calls": [1000, 1000, 10],
})


def test_moderation_modes_bars_per_mode_log_scale():
    fig = plots.moderation_modes(MODES)
    ax_tp, ax_calls = fig.axes
    assert [p.get_height() for p in ax_tp.patches] == [300.0, 900.0, 2500.0]
    assert [p.get_height() for p in ax_calls.patches] == [1000, 1000, 10]
    assert ax_tp.get_yscale() == "log" and ax_calls.get_yscale() == "log"
    ticks = [t.get_text() for t in ax_tp.get_xticklabels()]
    assert ticks[0].startswith("one_at_a_time") and "batch 100 × 4" in ticks[2]
    assert [t.get_text() for t in ax_tp.texts] == ["300/s", "900/s", "2,500/s"]
    assert [t.get_text() for t in ax_calls.texts] == ["1,000", "1,000", "10"]
    _render(fig)


def test_moderation_modes_without_calls_has_one_panel():
    fig = plots.moderation_modes(MODES[["mode", "posts_per_s"]])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["one_at_a_time", "concurrent",
                                                          "batched"]
    assert len(ax.patches) == 3
    _render(fig)


def test_scale_out_bars_and_perfect_scaling_line():
    df = pd.DataFrame({"processes": [2, 1], "posts": [5000, 5000],
                       "posts_per_s": [3000.0, 2000.0]})
    fig = plots.scale_out(df)
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == [2000.0, 3000.0]  # sorted by processes
    (ideal,) = ax.lines
    assert list(ideal.get_ydata()) == [2000.0, 4000.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 process", "2 processes"]
    assert [t.get_text() for t in ax.texts] == ["2,000/s", "3,000/s"]
    _render(fig)


def test_scale_out_with_no_rates_says_so():
    (ax,) = plots.scale_out(pd.DataFrame({"processes": [1], "posts_per_s": [None]})).axes
    assert "no data" in ax.texts[0].get_text()


OVERLOAD = {
    "capacity_per_s": 300.0,
    "overload_window": [1.0, 5.0],
    "timeline": [
        {"t_s": 0, "offered": 150, "moderated": 150, "lag": 0, "recheck_lag": 0,
         "degraded": 0, "rechecked": 0},
        {"t_s": 1, "offered": 600, "moderated": 580, "lag": 120, "recheck_lag": 200,
         "degraded": 290, "rechecked": 0},
        {"t_s": 2, "offered": 600, "moderated": 610, "lag": None, "recheck_lag": 480,
         "degraded": 300, "rechecked": 0},
        {"t_s": 6, "offered": 150, "moderated": 160, "lag": 0, "recheck_lag": 100,
         "degraded": 0, "rechecked": 380},
    ],
}


def test_overload_timeline_three_panels_window_and_capacity():
    fig = plots.overload_timeline(OVERLOAD)
    ax_rate, ax_lag, ax_deg = fig.axes
    labels = [ln.get_label() for ln in ax_rate.lines]
    assert labels == ["offered", "moderated", "re-checked", "backend capacity 300/s"]
    assert list(ax_rate.lines[0].get_ydata()) == [150, 600, 600, 150]
    assert list(ax_rate.lines[3].get_ydata()) == [300.0, 300.0]  # axhline at the capacity
    assert list(ax_rate.lines[0].get_xdata()) == [0, 1, 2, 6]
    lag = ax_lag.lines[0].get_ydata()
    assert lag[1] == 120 and np.isnan(lag[2])  # a missed sample stays a gap
    assert [ln.get_label() for ln in ax_lag.lines] == ["posts waiting (stage)",
                                                       "waiting for a recheck"]
    assert list(ax_deg.lines[0].get_ydata()) == [0, 290, 300, 0]
    for ax in (ax_rate, ax_lag, ax_deg):  # the overload window shaded on every panel
        (span,) = ax.patches
        x0, x1 = span.get_window_extent().x0, span.get_window_extent().x1
        t0, t1 = ax.transData.inverted().transform([(x0, 0), (x1, 0)])[:, 0]
        assert t0 == pytest.approx(1.0) and t1 == pytest.approx(5.0)
    assert "overload" in {t.get_text() for t in ax_rate.texts}
    _render(fig)


def test_overload_timeline_minimal_and_empty():
    rows = [{"t_s": k, "offered": 10, "moderated": 10, "lag": 0, "degraded": 0}
            for k in range(3)]
    fig = plots.overload_timeline({"timeline": rows, "overload_window": [0.5, 1.5]})
    ax_rate, ax_lag, _ = fig.axes
    assert [ln.get_label() for ln in ax_rate.lines] == ["offered", "moderated"]
    assert len(ax_lag.lines) == 1
    _render(fig)
    empty = plots.overload_timeline({"timeline": []})
    assert "no data" in empty.axes[0].texts[0].get_text()
    _render(empty)


def test_cpu_profile_one_bar_per_part_coloured_by_stage_unmeasured_labelled():
    profile = {"rows": [
        {"stage": "load producer", "part": "caller thread: submit()", "cpu_us_per_post": 38.6},
        {"stage": "moderation stage", "part": "decode: JSON -> Post", "cpu_us_per_post": 7.7},
        {"stage": "moderation stage", "part": "commit", "cpu_us_per_post": 0.8},
        {"stage": "e2e reader", "part": "results read back", "cpu_us_per_post": None},
    ], "total_cpu_us_per_post": 47.1}
    fig = plots.cpu_profile(profile)
    (ax,) = fig.axes
    assert [round(p.get_width(), 1) for p in ax.patches] == [38.6, 7.7, 0.8, 0.0]
    assert ax.patches[1].get_facecolor() == ax.patches[2].get_facecolor()
    assert ax.patches[0].get_facecolor() != ax.patches[1].get_facecolor()
    texts = [t.get_text().strip() for t in ax.texts]
    assert texts == ["38.6", "7.7", "0.8", "not measured"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "load producer", "moderation stage", "e2e reader"]
    assert "total 47" in ax.get_title()
    _render(fig)


def test_cpu_profile_without_rows_says_so():
    (ax,) = plots.cpu_profile({"rows": []}).axes
    assert "no data" in ax.texts[0].get_text()


# --- notebook 02's figures ----------------------------------------------------------------
def test_offsets_per_user_draws_one_line_per_user_in_submit_order():
    # user c's second post got the lower offset: the figure must show it, not sort it away
    deliveries = pd.DataFrame({"user_id": ["a", "b", "a", "a", "c", "c"],
                               "submitted": [3.0, 1.0, 1.0, 2.0, 1.5, 2.5],
                               "offset": [12, 5, 10, 11, 7, 3]})
    fig = plots.offsets_per_user(deliveries)
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].get_lines()}
    assert lines == {"a": [10, 11, 12], "b": [5], "c": [7, 3]}


def test_batch_outcomes_colours_each_post_by_its_outcome_against_the_limit():
    posts = pd.DataFrame({"bytes": [100, 5000, 120], "outcome": ["acked", "error", "acked"]})
    fig = plots.batch_outcomes(posts, limit_bytes=2048)
    ax = fig.axes[0]
    from matplotlib.colors import to_rgba

    colours = [p.get_facecolor() for p in ax.patches]
    assert colours == [to_rgba("tab:green"), to_rgba("tab:red"), to_rgba("tab:green")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["#0\nacked", "#1\nrefused",
                                                           "#2\nacked"]
    assert [ln.get_ydata()[0] for ln in ax.get_lines()] == [2048]


def test_expiry_lanes_counts_each_lane_and_marks_the_held_thread_and_the_timeout():
    events = pd.DataFrame({"event": ["sender thread held", "sent", "sent", "sender thread free",
                                     "KafkaTimeoutError", "KafkaTimeoutError"],
                           "at_s": [0.1, 0.1, 0.2, 3.1, 3.1, 3.2]})
    ax = plots.expiry_lanes(events, delivery_timeout_s=2.0).axes[0]
    # lane 0 the sends, lane 1 the errbacks, lane 2 the acks (none here: no mark)
    assert sorted((t.xy[1], t.get_text()) for t in ax.texts) == [(0, "×2"), (1, "×2")]
    assert ax.get_lines()[0].get_xdata()[0] == pytest.approx(2.1)  # first send + timeout
    assert len(ax.patches) == 1  # the grey span while the sender thread was held
