"""The notebooks say only what their run showed.

* Markdown holds no measured figure (a number with ms, µs, s, /s, %, ×, MB ...) unless it is
  marked as a setting, a target, a default or a cited outside fact: the marker word sits in the
  same sentence ("(setting)", "target", "default", "cited"), or the figure is code in
  backticks (`linger_ms=50` is a setting by definition). Measured figures live in outputs.
* Stored outputs hold no traceback, no Python warning and no Kafka client log spam.
* A cell that draws with ``lab_kit.plots`` stores its figure (a trailing ``;`` hides a
  ``Figure`` the function returns: nothing would be shown).
* Each notebook records the ``lab_kit`` commit its outputs came from (``make notebooks``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
UNIT = r"(?:ms|µs|us|s|sec|seconds?|minutes?|min|/s|posts/s|%|×|x|MB|MiB|kB|KiB|GB|k/s)"
FIGURE = re.compile(rf"(?<![\w.`-])~?\d[\d,.]*\s?(?:k\s?)?{UNIT}(?![\w])")
MARKERS = ("setting", "target", "default", "cited", "limit", "for example", "e.g.")
WARNING = re.compile(r"\b\w+Warning: ")  # what warnings.warn prints: "UserWarning: ..."
SPAM = ("Traceback (most recent call last)", "ECONNREFUSED", "kafka.conn", "kafka.client",
        "WARNING kafka", "ERROR kafka")


def sentences(markdown: str):
    text = re.sub(r"`[^`]*`", "`code`", markdown)  # code spans are settings or names
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<details>.*?</details>", "", text, flags=re.S)  # folded solutions
    return re.split(r"(?<=[.!?])\s+|\n\s*[-*\d]+[.)]?\s", text)


def unmarked_figures(markdown: str) -> list[str]:
    bad = []
    for s in sentences(markdown):
        if FIGURE.search(s) and not any(m in s.lower() for m in MARKERS):
            bad.append(" ".join(s.split())[:160])
    return bad


def test_the_claims_check_sees_a_measured_figure():
    assert unmarked_figures("The async producer answered in 2.5 ms here.")
    assert unmarked_figures("It reached 25,000 posts/s on this laptop.")
    assert not unmarked_figures("We send with `linger_ms=50` and compare.")
    assert not unmarked_figures("The target is a p99 under 100 ms.")
    assert not unmarked_figures("kafka-python waits up to 60 s by default (cited: #800).")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_states_no_unmarked_measured_figure(path):
    nb = json.loads(path.read_text())
    bad = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            bad += [f"cell {i}: {s}" for s in unmarked_figures("".join(cell["source"]))]
    assert bad == [], "measured figures belong in outputs:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_hold_no_traceback_or_client_log_spam(path):
    nb = json.loads(path.read_text())
    bad = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                bad.append(f"cell {i}: error output {out.get('ename')}")
            text = "".join(out.get("text", "")) if isinstance(out.get("text"), (list, str)) \
                else ""
            bad += [f"cell {i}: {s!r}" for s in SPAM if s in text]
            bad += [f"cell {i}: {m.group()!r}" for m in WARNING.finditer(text)]
    assert bad == []


def test_the_warning_pattern_sees_what_warnings_prints():
    assert WARNING.search("plots.py:475: UserWarning: The figure layout has changed")
    assert not WARNING.search("WARNING kafka.conn: broker down")  # SPAM's job, not this one


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_that_plots_stores_its_figure(path):
    nb = json.loads(path.read_text())
    missing = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "plots." not in "".join(cell["source"]):
            continue
        if not any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
            missing.append(f"cell {i}")
    assert missing == [], "no figure stored (a trailing ';'?): " + ", ".join(missing)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_name_the_lab_kit_commit_they_came_from(path):
    meta = json.loads(path.read_text())["metadata"]
    commit = meta.get("lab_kit", {}).get("commit", "")
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", commit), \
        "run `make notebooks` to store outputs with the lab_kit commit"
