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
