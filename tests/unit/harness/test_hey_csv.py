"""hey's per-request CSV read into the lab driver's summary keys."""

from __future__ import annotations

import pytest

from lab_kit.harness.hey_load import parse_hey_csv

HEADER = ("response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,"
          "status-code,offset")


def test_latencies_statuses_and_rate_from_the_rows():
    rows = [f"{ms / 1000:.4f},0.0001,0.0000,0.0000,0.0010,0.0001,{code},{i / 100:.4f}"
            for i, (ms, code) in enumerate([(1, 202)] * 97 + [(50, 202), (80, 429),
                                                                  (120, 202)])]
    s = parse_hey_csv("\n".join([HEADER, *rows]) + "\n", seconds=2.0, rate=60)
    assert (s["sent"], s["accepted"], s["errors"]) == (100, 99, 1)
    assert s["achieved_rate"] == pytest.approx(49.5)
    assert s["p50_ms"] == pytest.approx(1.0)
    assert s["p99_ms"] == pytest.approx(80.0)  # nearest rank: the 99th of 100
    assert s["max_ms"] == pytest.approx(120.0)
    assert s["driver"] == "hey" and s["target_rate"] == 60


def test_an_empty_run_and_a_foreign_csv():
    s = parse_hey_csv(HEADER + "\n", seconds=1.0, rate=10)
    assert (s["sent"], s["accepted"], s["p99_ms"]) == (0, 0, None)
    with pytest.raises(ValueError, match="response-time"):
        parse_hey_csv("a,b\n1,2\n", seconds=1.0, rate=10)
