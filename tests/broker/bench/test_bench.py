"""``python -m lab_kit bench`` runs end to end on the real broker and reports consistently.

No timing is asserted here (speed targets live in the bench's own report): these tests check
that every contender ran and delivered, that the ratios and the CPU profile follow from the
measured numbers, and that bad arguments are refused with a message naming the option.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lab_kit.bench.producers import N_CONFLUENT

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def report(kafka_broker, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lab_kit", "bench", "--quick", "--rounds", "1",
         "--duration", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_kafka_python_contender_ran_and_lab_kit_delivered_all(report):
    rep, _ = report
    res = rep["results"]
    for name in ("sync", "raw_kafka_python", "lab_kit_async", "open_loop"):
        assert res[name]["msgs_per_s"] > 0, name
    assert res["lab_kit_async"]["acked"] == res["lab_kit_async"]["posts"]
    ol = res["open_loop"]
    # lost is read back from bench.posts (from the run's start offsets): every submitted post
    # and the warm-up post found there, once or more
    assert ol["lost"] == 0 and ol["lost_ids"] == []
    assert ol["delivered_unique"] == ol["submitted"] + 1
    assert ol["acked"] == ol["submitted"]


def test_ratios_follow_from_the_measured_rates(report):
    rep, _ = report
    res, ratios = rep["results"], rep["ratios"]
    lab = res["lab_kit_async"]["msgs_per_s"]
    assert ratios["lab_kit_over_raw"] == pytest.approx(
        lab / res["raw_kafka_python"]["msgs_per_s"], abs=0.002)
    assert ratios["async_over_sync"] == pytest.approx(lab / res["sync"]["msgs_per_s"], rel=0.01)


def test_cpu_profile_splits_caller_and_background(report):
    rep, stdout = report
    for name in ("sync", "raw_kafka_python", "lab_kit_async"):
        r = rep["results"][name]
        assert r["cpu_us_per_post"] > 0 and r["caller_cpu_us_per_post"] > 0, name
        assert r["cpu_us_per_post"] == pytest.approx(
            r["caller_cpu_us_per_post"] + r["background_cpu_us_per_post"], abs=0.05)
    prof = rep["profile"]
    raw, lab = rep["results"]["raw_kafka_python"], rep["results"]["lab_kit_async"]
    assert prof["extra_caller_us_per_post"] == pytest.approx(
        lab["caller_cpu_us_per_post"] - raw["caller_cpu_us_per_post"], abs=0.02)
    assert "CPU per post" in stdout


def test_targets_are_all_evaluated(report):
    rep, _ = report
    targets = rep["targets"]
    assert len(targets) == 11
    assert all(isinstance(v, bool) for v in targets.values())
    assert targets["open_loop.lost <= 0"] is True
    assert targets["lab_kit_confluent.lost <= 0"] is True
    assert targets["lab_kit_async.lost <= 0"] is True


def test_the_confluent_contenders_ran_and_lab_kit_delivered_all(report):
    """AsyncPostProducer(client="confluent") beside the plain confluent loops: every post read
    back from the topic, and the ratios follow from the measured rates."""
    rep, _ = report
    res, ratios = rep["results"], rep["ratios"]
    lab, raw, polled = (res["lab_kit_confluent"], res["confluent_kafka"],
                        res["confluent_poll_thread"])
    assert lab["posts"] == raw["posts"] == polled["posts"] == N_CONFLUENT  # not the 10k quick
    assert lab["acked"] == lab["posts"] and lab["lost"] == 0
    assert polled["acked"] == polled["posts"]
    assert ratios["lab_kit_confluent_over_raw_confluent"] == pytest.approx(
        lab["msgs_per_s"] / raw["msgs_per_s"], abs=0.002)
    assert ratios["lab_kit_confluent_over_poll_thread"] == pytest.approx(
        lab["msgs_per_s"] / polled["msgs_per_s"], abs=0.002)


@pytest.mark.parametrize("args, needle", [(["--rate", "0"], "--rate"),
                                          (["--duration", "601"], "--duration"),
                                          (["--broker-warmup", "5"], "--broker-warmup"),
                                          (["api", "--broker-warmup", "5"], "--broker-warmup"),
                                          (["pipeline", "--broker-warmup", "121"],
                                           "--broker-warmup")])
def test_bad_arguments_name_the_option(args, needle):
    proc = subprocess.run([sys.executable, "-m", "lab_kit", "bench", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert needle in proc.stderr


@pytest.mark.parametrize("cmd", [
    ["-m", "lab_kit", "bench"],
    ["-m", "lab_kit", "bench", "pipeline"],
    ["-m", "lab_kit", "bench", "api"],
    ["-m", "lab_kit.bench.api"],
])
@pytest.mark.parametrize("where", ["/nonexistent/dir/x.json", "{tmp}"])
def test_an_unwritable_json_path_exits_2_before_any_work(cmd, where, tmp_path):
    # no broker can be reached and the state dir is fresh: any work would show
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
               LAB_STATE_DIR=str(tmp_path / "state"))
    path = where.replace("{tmp}", str(tmp_path))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, *cmd, "--json", path], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith(f"error: --json: {path}" if where == "{tmp}" else
                                  f"error: --json: cannot write {path}: directory "
                                  f"/nonexistent/dir does not exist"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert not (tmp_path / "state").exists()
    assert time.monotonic() - t0 < 30
