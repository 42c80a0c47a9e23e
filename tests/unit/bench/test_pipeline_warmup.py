"""``bench pipeline``'s broker warm-up: on by default for the CLI's full open-loop run only,
off for ``--quick`` and ``--backlog`` (and for callers that build the settings themselves, as
notebook 08 does), and checked like every other flag."""

from __future__ import annotations

import pytest

from lab_kit.bench.pipeline import CLI_WARMUP_S, PipelineSettings
from lab_kit.cli import build_parser


def _settings(*argv: str) -> PipelineSettings:
    return PipelineSettings.from_args(build_parser().parse_args(["bench", "pipeline", *argv]))


def test_the_full_cli_run_warms_the_broker_first_and_quick_or_backlog_runs_do_not():
    assert CLI_WARMUP_S > 0
    assert _settings().broker_warmup_s == CLI_WARMUP_S
    assert _settings("--rate", "15000").broker_warmup_s == CLI_WARMUP_S
    assert _settings("--quick").broker_warmup_s == 0
    assert _settings("--backlog", "5000").broker_warmup_s == 0
    assert PipelineSettings().broker_warmup_s == 0  # what a notebook builds itself


def test_an_explicit_warm_up_wins_either_way():
    assert _settings("--broker-warmup", "0").broker_warmup_s == 0
    assert _settings("--quick", "--broker-warmup", "4").broker_warmup_s == 4


@pytest.mark.parametrize("seconds", [-1.0, 121.0, float("nan")])
def test_a_warm_up_outside_0_to_120_s_names_the_flag(seconds):
    with pytest.raises(ValueError, match=r"--broker-warmup must be in \[0, 120\] s"):
        PipelineSettings(broker_warmup_s=seconds).validate()


def test_rate_times_warm_up_is_bounded_like_the_measured_run():
    with pytest.raises(ValueError, match=r"--rate x --broker-warmup must be at most"):
        PipelineSettings(rate=100_000, seconds=1, broker_warmup_s=120).validate()


class _Recorder:
    """Stands in for the runs (no broker here): records which run ran, in order."""

    def __init__(self, monkeypatch):
        from lab_kit.bench import pipeline

        self.calls: list[tuple] = []
        recorder = self

        class FakeOpenLoopRun:
            def __init__(self, settings, broker, progress=True):
                self.settings = settings

            def execute(self):
                recorder.calls.append(("open loop", self.settings.seconds,
                                       self.settings.guarantee))
                return self

        def fake_report(settings, run):
            return {"seconds": settings.seconds, "offered_rate": settings.rate,
                    "achieved_rate": 10.0, "e2e_p99_ms": 1.0, "degraded_fraction": 0.0,
                    "lost": 0, "results_missing": 0, "duplicates": 0}

        def fake_backlog(settings, broker, progress=True):
            recorder.calls.append(("backlog", settings.backlog))
            return {"backlog_rate": 10.0}

        monkeypatch.setattr(pipeline, "OpenLoopRun", FakeOpenLoopRun)
        monkeypatch.setattr(pipeline, "_open_loop_report", fake_report)
        monkeypatch.setattr(pipeline, "run_backlog", fake_backlog)


def test_the_warm_up_runs_before_the_measured_run_and_only_before_the_first_guarantee(
        monkeypatch):
    from lab_kit.bench.pipeline import run_pipeline_bench

    rec = _Recorder(monkeypatch)
    out = run_pipeline_bench(PipelineSettings(rate=100, seconds=5, broker_warmup_s=2,
                                              guarantee="both"), broker=object(), progress=False)
    assert rec.calls == [("open loop", 2, "at-least-once"), ("open loop", 5, "at-least-once"),
                         ("open loop", 5, "exactly-once")]
    assert out["runs"]["at-least-once"]["broker_warm_up"]["seconds"] == 2
    assert "broker_warm_up" not in out["runs"]["exactly-once"]


def test_a_backlog_run_is_warmed_only_when_asked_and_reports_it(monkeypatch):
    from lab_kit.bench.pipeline import run_pipeline_bench

    rec = _Recorder(monkeypatch)
    assert "broker_warm_up" not in run_pipeline_bench(
        PipelineSettings(backlog=100), broker=object(), progress=False)
    assert rec.calls == [("backlog", 100)]
    rec.calls.clear()
    out = run_pipeline_bench(PipelineSettings(backlog=100, broker_warmup_s=1), broker=object(),
                             progress=False)
    assert rec.calls == [("open loop", 1, "at-least-once"), ("backlog", 100)]
    assert out["broker_warm_up"]["lost"] == 0


def test_the_printed_summary_flags_a_warm_up_that_lost_missed_or_duplicated_posts():
    from lab_kit.bench.pipeline import _warm_up_line

    clean = {"seconds": 10, "achieved_rate": 15_000.0, "e2e_p99_ms": 200.0,
             "degraded_fraction": 0.0, "lost": 0, "results_missing": 0, "duplicates": 0}
    assert _warm_up_line(None) == []
    assert "WARNING" not in _warm_up_line(clean)[0]
    for key in ("lost", "results_missing", "duplicates"):
        line = _warm_up_line({**clean, key: 3})[0]
        assert "WARNING" in line and "3" in line, key
