"""What the notebooks' own checks may and may not rest on (read from the .ipynb files).

* No wall-clock target: a latency (``*_ms``) or a rate (``achieved_rate``, ``msgs_per_s``)
  compared with a number literal in an ``assert``. On a loaded machine such a check fails for
  the wrong reason; speed targets live in ``python -m lab_kit bench`` and the drills' JSON.
* No spool file next to the notebooks (``spool_path="x.db"``): it would outlive the run
  and be replayed into the next one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9]*.ipynb"))

#: a latency or rate compared with a number literal (not 0: "> 0" only says it ran; not a
#: literal times another measurement: "> 3 * sync" is relative, measured side by side)
TIMED = re.compile(
    r"""(_ms|achieved_rate|msgs_per_s|_per_s)\b["']?\]?\)?\s*[<>]=?\s*"""
    r"""(?!0\b)[\d.]+(?![\d.]|\s*\*)"""  # x_ms < 5
    r"""|[\d.]+\s*\*\s*\w+\.target_rate"""  # achieved >= 0.95 * s.target_rate
)
RELATIVE_SPOOL = re.compile(r"""spool_path\s*=\s*["'][^"'/]*\.db["']""")


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _asserts(source: str) -> list[str]:
    return [line for line in source.splitlines() if line.lstrip().startswith("assert")]


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 8 and NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_wall_clock_target_in_a_notebook_assert(path):
    timed = [line.strip() for src in _code_cells(path) for line in _asserts(src)
             if TIMED.search(line)]
    assert timed == [], f"{path.name}: timed asserts (use a behavioural check): {timed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_spool_file_next_to_the_notebooks(path):
    found = [m.group(0) for src in _code_cells(path) for m in RELATIVE_SPOOL.finditer(src)]
    assert found == [], f"{path.name}: a spool next to the notebook outlives the run: {found}"


@pytest.mark.parametrize("line", [
    'assert asy["submit_p99_ms"] < 5',
    "ok = bool(((s.achieved_rate >= 0.95 * s.target_rate) & (s.submit_p99_ms < 5)).all())",
    'assert outage["lost"] == 0 and outage["submit_p99_during_outage_ms"] < 5',
])
def test_the_timed_pattern_catches_the_asserts_it_replaced(line):
    assert TIMED.search(line)


@pytest.mark.parametrize("line", [
    'assert asy["msgs_per_s"] > 3 * sync["msgs_per_s"]',
    'assert asy["submit_p99_ms"] < asy["ack_p50_ms"]',
    'assert outage["kafka_calls_while_spooling"] == 0',
    "assert (sweep.msgs_per_s > 0).all()",
])
def test_the_timed_pattern_lets_relative_and_behavioural_checks_through(line):
    assert not TIMED.search(line)
