"""The small sweep-reading helpers the tuning notebook calls (pure pandas, no broker)."""

from __future__ import annotations

import pandas as pd

from lab_kit.experiments import relation, runs_of


def test_runs_of_picks_one_setting_and_treats_acks_as_text():
    runs = pd.DataFrame({"acks": ["all", "all", 0, "0", 1], "linger_ms": [20, 0, 5, 5, 5],
                         "msgs_per_s": [10.0, 20.0, 30.0, 40.0, 50.0]})
    assert runs_of(runs, acks="all", linger_ms=20).tolist() == [10.0]
    assert runs_of(runs, acks=0, linger_ms=5).tolist() == [30.0, 40.0]  # 0 and "0" alike
    assert runs_of(runs, "linger_ms", acks=1).tolist() == [5]


def test_relation_says_whether_the_runs_clear_each_other(capsys):
    relation("x", "1.2×", "> 1", True, clear=False)
    relation("y", "1.4×", "> 1", True, clear=True)
    relation("z", "0.9×", "> 1", False, clear=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("✓ on the medians only: the single runs overlap")
    assert out[1].endswith("✓ beyond the scatter")
    assert "✗ not on this run" in out[2] and "scatter" not in out[2]
