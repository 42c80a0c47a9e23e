"""``bench json``: both codecs timed on the same documents, and the report's ratios."""

from __future__ import annotations

import pytest

from lab_kit.bench import json_codecs


def test_the_report_gives_both_codecs_and_ratios_of_their_medians():
    report = json_codecs.measure(posts=200, rounds=3)
    assert set(report["codecs"]) == {"stdlib", "msgspec"}
    for m in report["codecs"].values():
        assert m["encode_us"] > 0 and m["decode_us"] > 0
    std, fast = report["codecs"]["stdlib"], report["codecs"]["msgspec"]
    assert report["msgspec_over_stdlib"]["encode_speedup"] == pytest.approx(
        std["encode_us"] / fast["encode_us"], rel=0.05)
    assert report["mean_bytes"] > 100


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="rounds"):
        json_codecs.measure(posts=10, rounds=0)
