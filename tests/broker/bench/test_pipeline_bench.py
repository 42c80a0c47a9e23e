"""``bench pipeline`` and ``drill moderation-overload`` end to end: real broker, real backend
process, the moderation service as its own processes.

No timing is asserted (the machine is shared and noisy; the targets live in the bench JSON):
these tests check that every field is reported and consistent, that nothing is lost, that
bad arguments are refused before any work starts, and that an overload degrades posts that
are all re-checked afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lab_kit.bench.pipeline import DEFAULT_PROCESSES, PipelineSettings
from lab_kit.drills.report import OverloadReport
from lab_kit.harness.results import build_timeline, steady_rate
from tests.conftest import delete_topics_with_prefix

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

TOP_LEVEL = ("offered_rate", "achieved_rate", "e2e_p50_ms", "e2e_p99_ms", "e2e_p999_ms",
             "degraded_fraction", "lost", "duplicates", "processes", "client", "submitted",
             "timeline", "cpu_us_per_post", "targets")
STAGES = ("producer", "moderation", "backend", "broker")


def _run(args: list[str], timeout: float, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab_kit", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def bench(kafka_broker, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "pipeline.json"
    proc = _run(["bench", "pipeline", "--quick", "--seconds", "3", "--rate", "500",
                 "--broker-warmup", "1", "--profile", "--json", str(out)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    yield report, proc.stdout
    delete_topics_with_prefix(report["topic_prefix"])  # the bench deletes them; make sure


def test_bench_pipeline_reports_every_field_and_loses_nothing(bench):
    rep, stdout = bench
    missing = [k for k in TOP_LEVEL if k not in rep]
    assert not missing, missing
    assert rep["offered_rate"] == 500 and rep["processes"] == DEFAULT_PROCESSES
    assert rep["client"] == "confluent"  # the service process's default: librdkafka
    assert rep["submitted"] == 1500 and rep["skipped"] == 0
    assert rep["lost"] == 0 and rep["results_missing"] == 0 and rep["posts_lost"] == 0
    assert rep["achieved_rate"] > 0
    for key in ("e2e_p50_ms", "e2e_p99_ms", "e2e_p999_ms"):
        assert rep[key] > 0, key
    assert rep["e2e_p50_ms"] <= rep["e2e_p99_ms"] <= rep["e2e_p999_ms"]
    assert 0 <= rep["degraded_fraction"] <= 1
    assert rep["service_stop"]["exit_code"] == 0 and not rep["service_stop"]["killed"]
    assert "e2e p50/p99/p99.9" in stdout


def test_the_broker_warm_up_ran_first_and_its_figures_are_reported_not_hidden(bench):
    rep, stdout = bench
    warm = rep["broker_warm_up"]
    assert warm["seconds"] == 1 and warm["offered_rate"] == 500
    assert warm["lost"] == 0 and warm["results_missing"] == 0 and warm["achieved_rate"] > 0
    assert "broker warm-up before it (not measured, no target applies): 1 s" in stdout


def test_bench_pipeline_timeline_and_cpu_add_up(bench):
    rep, _ = bench
    rows = rep["timeline"]
    assert all(set(r) >= {"t_s", "offered", "moderated", "lag", "degraded"} for r in rows)
    assert [r["t_s"] for r in rows] == list(range(len(rows)))
    assert sum(r["offered"] for r in rows) == rep["submitted"]
    assert sum(r["moderated"] for r in rows) == rep["submitted"]  # first verdicts, none lost
    assert sum(r["degraded"] for r in rows) == rep["degraded"]
    assert any(r["lag"] is not None for r in rows)
    for stage in STAGES:
        assert rep["cpu_us_per_post"][stage] > 0, stage


def test_bench_pipeline_profile_splits_the_stages_it_measured(bench):
    rep, stdout = bench
    prof = rep["profile"]
    by_part = {(r["stage"], r["part"]): r["cpu_us_per_post"] for r in prof["rows"]}
    stage = [v for (s, _), v in by_part.items() if s == "moderation stage"]
    assert None not in stage and sum(stage) == pytest.approx(
        rep["cpu_us_per_post"]["moderation"], rel=0.02)
    assert by_part[("moderation stage", "decode: JSON -> Post")] > 0
    assert by_part[("moderation stage", "backend call, client side")] > 0
    assert by_part[("load producer", "caller thread: submit()")] > 0
    assert by_part[("e2e reader", "results read back")] > 0
    assert by_part[("broker", "JVM, every request (posts, results, fetches, commits)")] == \
        rep["cpu_us_per_post"]["broker"]
    assert prof["not_measured"] == []
    assert "decode: JSON -> Post" in stdout  # --profile prints the table


def test_bench_pipeline_targets_and_ceiling(bench):
    rep, _ = bench
    targets = rep["targets"]
    assert set(targets) == {"achieved_rate", "e2e_p99_ms", "degraded_fraction", "lost",
                            "results_missing"}
    for t in targets.values():
        assert set(t) >= {"value", "target", "met"} and isinstance(t["met"], bool)
    assert targets["lost"]["met"] is True
    assert targets["achieved_rate"]["met"] is False  # 500/s offered cannot reach 9,800/s
    assert rep["targets_apply"] is False
    c = rep["ceiling"]
    assert c["stage"] in STAGES
    assert c["stage_cpu_us_per_post"] == max(rep["cpu_us_per_post"].values())
    assert c["total_cpu_us_per_post"] == pytest.approx(sum(rep["cpu_us_per_post"].values()),
                                                       abs=0.05)
    assert c["cores_at_100000_per_s"] == pytest.approx(10 * c["cores_at_10000_per_s"], abs=0.05)


def test_bench_pipeline_backlog_drains_everything(kafka_broker, tmp_path):
    out = tmp_path / "backlog.json"
    proc = _run(["bench", "pipeline", "--backlog", "2000", "--client", "kafka-python",
                 "--json", str(out)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    delete_topics_with_prefix(rep["topic_prefix"])
    assert rep["mode"] == "backlog" and rep["backlog_posts"] == 2000
    assert rep["client"] == "kafka-python"
    assert rep["submitted"] == 2000 and rep["drained"] is True
    assert rep["lost"] == 0 and rep["results_missing"] == 0 and rep["duplicates"] == 0
    assert rep["backlog_rate"] > 0
    assert sum(r["moderated"] for r in rep["timeline"]) == 2000
    assert rep["timeline"][0]["lag"] is None or rep["timeline"][0]["lag"] > 0
    assert "backlog_rate" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["--processes", "0"], "--processes"),
    (["--rate", "-1"], "--rate"),
    (["--seconds", "0"], "--seconds"),
    (["--json", "/nonexistent/x.json"], "--json"),
    (["--json", "{tmp}"], "--json"),
    (["--backlog", "0"], "--backlog"),
    (["--rate", "100000", "--seconds", "600"], "--rate x --seconds"),
])
def test_bad_values_exit_2_naming_the_flag_before_any_work(args, needle, tmp_path):
    # no broker can be reached: if any work started, the error would be about the broker
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
               LAB_STATE_DIR=str(tmp_path / "state"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    t0 = time.monotonic()
    proc = _run(["bench", "pipeline", *args], timeout=60, env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "state").exists()
    assert time.monotonic() - t0 < 30


def test_producer_only_flags_are_refused_by_the_pipeline_and_vice_versa(tmp_path):
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
               LAB_STATE_DIR=str(tmp_path / "state"))
    proc = _run(["bench", "pipeline", "--duration", "3"], timeout=60, env=env)
    assert proc.returncode == 2 and "--duration" in proc.stderr
    proc = _run(["bench", "--processes", "2"], timeout=60, env=env)
    assert proc.returncode == 2 and "--processes" in proc.stderr


def test_settings_quick_defaults_and_helpers():
    import argparse

    ns = argparse.Namespace(quick=True, rate=None, seconds=None, processes=None, client=None,
                            backlog=None, shed_after_ms=None, json_path=None)
    s = PipelineSettings.from_args(ns)
    assert (s.rate, s.seconds, s.processes, s.client) == (2000, 5, DEFAULT_PROCESSES, "confluent")
    assert DEFAULT_PROCESSES == min(2, len(os.sched_getaffinity(0)))
    ns.seconds = 3
    assert PipelineSettings.from_args(ns).seconds == 3
    # 1,000 events evenly over 10 s: 100/s between the 10 % and 90 % marks
    assert steady_rate([i / 100 for i in range(1001)]) == pytest.approx(100, rel=0.01)
    firsts = {"a": {"moderated_at": 100.2, "degraded": True},
              "b": {"moderated_at": 101.5, "degraded": False}}
    rows = build_timeline([{"t_s": 0, "offered": 2, "lag": 1}], firsts, 100.0)
    assert rows == [{"t_s": 0, "offered": 2, "moderated": 1, "lag": 1, "degraded": 1},
                    {"t_s": 1, "offered": 0, "moderated": 1, "lag": None, "degraded": 0}]


def test_overload_drill_degrades_then_rechecks_everything(kafka_broker, tmp_path):
    out = tmp_path / "overload.json"
    # LAB_SCALE 0.2: backend capacity 300 posts/s; 150/s for 1 s, 600/s for 4 s, 150/s for 4 s
    env = dict(os.environ, LAB_SCALE="0.2")
    env.pop("LAB_OVERLOAD_CAPACITY", None)
    proc = _run(["drill", "moderation-overload", "--json", str(out)], timeout=280, env=env)
    assert out.exists(), proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    why = {k: rep.get(k) for k in ("degraded", "rechecked", "fallback_causes", "drained",
                                   "service_stop", "service_events")}
    try:
        assert rep["rechecked"] == rep["degraded"], why
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert rep["capacity_per_s"] == 300
        assert rep["offered_rate_overload"] > rep["capacity_per_s"]
        assert rep["results_missing"] == 0 and rep["lost"] == 0
        assert rep["degraded"] > 0  # the overload really bit
        assert rep["rechecked"] == rep["degraded"]
        assert rep["recheck_drained_s"] is not None and rep["e2e_p99_ms"] > 0
        assert rep["ok"] is True
        assert OverloadReport.from_dict(rep).to_dict() == rep  # the JSON loads as a report
        rows = rep["timeline"]
        assert sum(r["offered"] for r in rows) == rep["submitted"]
        assert sum(r["degraded"] for r in rows) == rep["degraded"]
        assert "moderation-overload" in proc.stdout
    finally:
        delete_topics_with_prefix(rep["topic_prefix"])


def test_overload_drill_refuses_flags_that_do_not_apply(tmp_path):
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
               LAB_STATE_DIR=str(tmp_path / "state"))
    proc = _run(["drill", "moderation-overload", "--rate", "100"], timeout=60, env=env)
    assert proc.returncode == 2 and "--rate" in proc.stderr
    proc = _run(["drill", "moderation-overload", "--json", "/nonexistent/x.json"], timeout=60,
                env=env)
    assert proc.returncode == 2 and "--json" in proc.stderr
