"""The dashboard, headless: real Kafka, buttons pressed by calling their handler methods."""

from __future__ import annotations

import random
import time

import matplotlib
import pytest

matplotlib.use("Agg")

import ipywidgets as w  # noqa: E402

from lab_kit.broker import BrokerError, local  # noqa: E402
from lab_kit.moderation.backend import ModerationBackend  # noqa: E402
from lab_kit.widgets import (  # noqa: E402
    Dashboard,
    LoadGenerator,
    WindowPercentiles,
    iter_widgets,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def _wait_until(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _find(root: w.Widget, cls: type, description: str) -> w.Widget:
    found = [x for x in iter_widgets(root)
             if isinstance(x, cls) and getattr(x, "description", None) == description]
    assert len(found) == 1, f"expected one {cls.__name__} {description!r}, found {len(found)}"
    return found[0]


@pytest.fixture
def dashboard(kafka_broker, created_topic):
    d = Dashboard(broker=kafka_broker, topic=created_topic, refresh_s=0.2, max_seconds=60)
    yield d
    d.close()
    assert not d.generator.running and not d.refreshing


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory):
    """A broker of this module's own: the fault buttons must never touch the shared one."""
    state = tmp_path_factory.mktemp("widgets-broker")
    try:
        b = local.up(nodes=1, state_dir=state)
    except BrokerError as exc:  # a random cluster id starting with "-" (1 in 64), try once more
        if "cluster-id" not in str(exc):
            raise
        b = local.up(nodes=1, state_dir=state)
    yield b
    b.down(purge=True)


@pytest.fixture
def backend(tmp_path):
    be = ModerationBackend(state_dir=tmp_path / "backend").start()
    yield be
    be.stop()


# --- p50 and p99 per second, from a fake clock (no Kafka needed) ---------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_each_second_gets_its_own_nearest_rank_p50_and_p99():
    clock = FakeClock()
    rec = WindowPercentiles(clock=clock)
    rng = random.Random(7)
    first = [ms / 1000 for ms in range(1, 101)]  # second 0: 1..100 ms, shuffled
    rng.shuffle(first)
    for s in first:
        rec.observe("acked", "ack", s, 0.5)
    for ms in range(10, 101, 10):  # second 2: 10..100 ms, through the other recording path
        rec.record_latency("ack", ms / 1000, 2.25)
    # second 3: 197 fast acks and 3 slow ones; the mean (~14.5 ms) hides them, the p99 not
    for s in [0.001] * 197 + [0.9] * 3:
        rec.observe("acked", "ack", s, 3.0)
    rec.observe("submitted", "submit", 0.5, 3.0)  # another latency: not in the ack windows
    clock.t = 10.0
    frame = rec.percentile_frame()
    assert list(frame.index) == [0.0, 2.0, 3.0]  # second 1 saw no acks: no row
    assert list(frame["acks"]) == [100, 10, 200]
    assert frame["p50_ms"].tolist() == pytest.approx([50.0, 50.0, 1.0])
    assert frame["p99_ms"].tolist() == pytest.approx([99.0, 100.0, 900.0])
    assert rec.timeseries_frame().loc[3.0, "ack_mean_ms"] < 20  # what the old panel drew
    # the window in progress shows what it holds so far, and is reduced once it is over
    rec.observe("acked", "ack", 0.004, 10.2)
    assert rec.percentile_frame().loc[10.0, "p99_ms"] == pytest.approx(4.0)
    clock.t = 20.0
    assert rec.percentile_frame().loc[10.0, "acks"] == 1
    rec.reset()
    assert rec.percentile_frame().empty


# --- controls and live numbers on the shared broker (no faults) ----------------------------
def test_controls_are_in_the_layout(dashboard):
    root = dashboard.widget
    rate = _find(root, w.IntSlider, "posts/s")
    assert (rate.min, rate.max) == (100, 20_000)
    acks = _find(root, w.Dropdown, "acks")
    assert [v for _, v in acks.options] == ["all", 1, 0]
    linger = _find(root, w.IntSlider, "linger_ms")
    assert (linger.min, linger.max) == (0, 100)
    assert _find(root, w.ToggleButton, "Start") is dashboard.start_toggle
    for label in ("kill", "pause", "resume", "start"):
        assert not _find(root, w.Button, label).disabled
    node = _find(root, w.Dropdown, "node")
    assert list(node.options) == [n.id for n in dashboard.broker.nodes()]
    # no backend given: its buttons are disabled and say why
    for label in ("backend down", "backend slow (+300 ms)", "backend heal"):
        b = _find(root, w.Button, label)
        assert b.disabled and "ModerationBackend" in b.tooltip
    assert any(isinstance(x, w.Image) for x in iter_widgets(root))


def test_start_run_render_stop(dashboard):
    d = dashboard
    d.rate_slider.value = 500  # the observe handler passes it on
    assert d.generator.rate == 500
    d.start_toggle.value = True  # "press" Start
    assert d.generator.running, d.last_error
    assert d.start_toggle.description == "Stop"
    assert d.refreshing
    _wait_until(lambda: d.snapshot()["acked"] >= 300, 30, "300 acked posts")

    snap = d.snapshot()
    assert snap["running"] and snap["error"] is None
    assert snap["nodes"] == {n.id: "running" for n in d.broker.nodes()}
    _wait_until(lambda: len(d.image.value) > 0, 30, "the refresh thread's first drawing")
    assert d.refresh_ms and all(ms > 0 for ms in d.refresh_ms)  # each redraw is timed

    _wait_until(lambda: len(d.metrics.timeseries_frame()) >= 2, 10, "one whole bucket")
    fig = d.render_figure()
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert any(len(line.get_xdata()) > 0 for line in ax.get_lines()), ax.get_title()
    acked_per_s = fig.axes[0].get_lines()[1].get_ydata()
    assert max(acked_per_s) > 100  # about 500/s were asked for
    # the latency panel draws each second's p50 and p99, the percentiles the lesson teaches
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["p50", "p99"]
    frame = d.timeseries_frame()
    assert {"ack_p50_ms", "ack_p99_ms"} <= set(frame.columns)
    assert "ack_mean_ms" not in frame.columns and "ack_max_ms" not in frame.columns
    with_acks = frame[frame["acked"] > 0]
    assert len(with_acks) >= 1
    assert (with_acks["ack_p99_ms"] >= with_acks["ack_p50_ms"]).all()
    assert (with_acks["ack_p50_ms"] > 0).all()

    d.start_toggle.value = False  # "press" Stop
    assert not d.generator.running
    assert d.start_toggle.description == "Start"
    report = d.generator.last_report
    assert report is not None and report.lost == 0
    assert d.generator.producer.closed
    assert d.generator.producer.in_flight == 0
    snap = d.snapshot()
    assert snap["acked"] == snap["submitted"] >= 300  # every submitted post was acked
    # "lost" is what reading the topic back found, not the producer's own count
    audit = snap["audit"]
    assert snap["lost"] == 0 and audit is not None and audit["lost_ids"] == []
    assert audit["submitted"] == audit["delivered_unique"] == snap["submitted"]
    # every ack landed in exactly one second's percentiles
    assert int(d.metrics.percentile_frame()["acks"].sum()) == snap["acked"]
    assert snap["last_second"] is not None
    assert snap["last_second"]["p99_ms"] >= snap["last_second"]["p50_ms"] > 0
    d.update_status()
    assert "ack p50 " in d.status_html.value and ", p99 " in d.status_html.value
    assert f"acked {snap['acked']:,}" in d.status_html.value
    assert f"read back {snap['submitted']:,}/{snap['submitted']:,}, lost 0" in \
        d.status_html.value


def test_lost_is_read_back_from_the_topic_and_never_a_default(kafka_broker, topic_name):
    """Before any run there is no number; after a run it comes from the topic — records
    removed from the topic afterwards (delete_records) show up as lost on a re-read."""
    from kafka import KafkaAdminClient, TopicPartition

    from lab_kit.harness.readback import end_offsets
    from lab_kit.topics import ensure_topics

    ensure_topics(kafka_broker.client_config(), names=(topic_name,),
                  partitions={topic_name: 3})
    d = Dashboard(broker=kafka_broker, topic=topic_name, refresh_s=0.5, max_seconds=30,
                  max_posts=200)
    gen = d.generator
    try:
        assert gen.status()["lost"] is None and gen.status()["audit"] is None
        gen.set_rate(2000)
        d.on_start_clicked()
        _wait_until(lambda: not gen.running, 30, "the run to end (max_posts)")
        d.on_stop_clicked()
        assert gen.status()["lost"] == 0 and gen.last_audit.delivered_unique == 200
        admin = KafkaAdminClient(**kafka_broker.client_config())
        try:  # a "broker" that forgot what it acked: every record of the run removed
            ends = {TopicPartition(topic_name, p): off for p, off in
                    end_offsets(kafka_broker.client_config(), [topic_name])[topic_name].items()}
            admin.delete_records(ends)
        finally:
            admin.close()
        again = gen.check_last_run()
        assert again is not None and again.lost == 200 and len(again.lost_ids) == 200
        assert gen.status()["lost"] == 200
        assert gen.status()["acked"] == 200  # the producer's counters still say all is well
        d.update_status()
        assert "lost 200" in d.status_html.value
    finally:
        d.close()


def test_reconfigure_keeps_metrics_and_loses_nothing(kafka_broker, created_topic):
    gen = LoadGenerator(kafka_broker.bootstrap_servers, created_topic, rate=2000, max_seconds=30,
                        max_posts=20_000)
    try:
        gen.start()
        _wait_until(lambda: gen.metrics.counters()["acked"] >= 200, 30, "200 acked")
        first = gen.producer
        report = gen.reconfigure(acks=1, linger_ms=20)
        assert report is not None and report.lost == 0
        assert first.closed and gen.producer is not first and gen.running
        assert gen.producer.metrics is gen.metrics
        before = gen.metrics.counters()["acked"]
        _wait_until(lambda: gen.metrics.counters()["acked"] >= before + 200, 30, "more acks")
        gen.set_rate(100)  # applies live, no restart
        assert gen.running and gen.status()["rate"] == 100
    finally:
        final = gen.stop()
    assert final is not None and final.lost == 0
    assert gen.status()["acked"] == gen.status()["submitted"]
    # the second run's posts, read back from where that run began
    assert gen.last_audit is not None and gen.last_audit.lost == 0
    assert 0 < gen.last_audit.delivered_unique == gen.last_audit.submitted
    assert any("acks=1 linger=20ms" in label for _, label in gen.metrics.events)


def test_max_posts_ends_the_run_by_itself(kafka_broker, created_topic):
    gen = LoadGenerator(kafka_broker.bootstrap_servers, created_topic, rate=5000, max_posts=250,
                        max_seconds=20)
    try:
        gen.start()
        _wait_until(lambda: not gen.running, 20, "the run to end")
    finally:
        gen.stop()
    assert gen.ended == "max_posts (250) reached"
    assert gen.status()["submitted"] == gen.status()["acked"] == 250
    assert gen.last_report.lost == 0
    assert gen.status()["lost"] == 0 and gen.last_audit.delivered_unique == 250


# --- fault buttons on a private broker --------------------------------------------------------
def test_broker_fault_buttons(private_broker):
    d = Dashboard(broker=private_broker, topic="posts", refresh_s=0.5, max_seconds=30)
    try:
        node = d.node_dropdown.value
        state = lambda: d.snapshot()["nodes"][node]  # noqa: E731

        d.on_pause_clicked()
        assert d.last_error is None, d.last_error
        assert state() == "paused"
        assert f"node {node} paused" in d.snapshot()["open_faults"]

        d.on_resume_clicked()
        assert d.last_error is None, d.last_error
        assert state() == "running"
        assert d.snapshot()["open_faults"] == []
        windows = d.metrics.windows
        assert [lbl for _, _, lbl in windows] == [f"node {node} paused"]
        assert windows[0][1] >= windows[0][0]

        d.on_kill_clicked()
        assert d.last_error is None, d.last_error
        assert state() == "stopped"
        assert f"node {node} down" in d.snapshot()["open_faults"]

        d.on_broker_start_clicked()
        assert d.last_error is None, d.last_error
        assert state() == "running"
        assert d.snapshot()["open_faults"] == []
        labels = [label for _, label in d.metrics.events]
        assert labels == [f"{v} node {node}" for v in ("pause", "resume", "kill", "start")]
        fig = d.render_figure()
        assert len(fig.axes) == 3  # renders with windows and no traffic
    finally:
        d.close()
        if any(n.state != "running" for n in private_broker.nodes()):
            private_broker.start()


def test_backend_buttons(private_broker, backend):
    d = Dashboard(broker=private_broker, backend=backend, refresh_s=0.5, max_seconds=30)
    try:
        assert not d.backend_slow_button.disabled
        d.on_backend_slow_clicked()
        assert d.last_error is None, d.last_error
        assert backend.faults()["latency_ms"] == 300
        assert "backend slow" in d.snapshot()["open_faults"]

        d.on_backend_heal_clicked()
        assert backend.faults()["latency_ms"] == 0
        assert d.snapshot()["open_faults"] == []

        d.on_backend_down_clicked()
        assert not backend.is_running()
        assert d.snapshot()["backend_running"] is False
        assert "backend down" in d.snapshot()["open_faults"]
    finally:
        d.close()


def test_a_failing_action_is_reported_not_raised(private_broker):
    d = Dashboard(broker=private_broker, refresh_s=0.5, max_seconds=30)
    try:
        d.node_dropdown.options = [99]  # a node that does not exist
        d.node_dropdown.value = 99
        d.on_pause_clicked()
        assert d.last_error is not None and "99" in d.last_error
        assert "✗" in d.message_html.value
        assert d.snapshot()["open_faults"] == []
    finally:
        d.close()
