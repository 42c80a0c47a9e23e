"""How long each notebook takes a student, estimated from the stored notebooks themselves.

``python tests/notebooks/course_time.py`` prints one row per notebook (the README's table):
exercises and recap questions (from ``lab_kit.exercises``), the words of prose, the lines of
code, the run time of its cells as ``make notebooks`` stored it (nbclient's execution
timestamps, at ``LAB_SCALE=1``), and the minutes for a student, by this model:

* reading: prose at 150 words a minute (technical text, read to understand, not skimmed);
* code: a quarter of a minute per line of code read and run (most cells are 1-6 lines);
* waiting: the cells' own run time;
* exercises: 12 minutes each (write the code, run the check, fix it once);
* recap: 1 minute per question.

The model is a convention, said out loud so that anyone can disagree with a number; the
inputs are counted, not typed.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path

WORDS_PER_MIN = 150
MIN_PER_CODE_LINE = 0.25
MIN_PER_EXERCISE = 12
MIN_PER_RECAP_QUESTION = 1


def run_seconds(nb: dict) -> float | None:
    """Sum of the cells' execution times as stored (None if the notebook holds none)."""
    total, seen = 0.0, False
    for cell in nb["cells"]:
        ex = cell.get("metadata", {}).get("execution", {})
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if start and end:
            seen = True
            total += (datetime.fromisoformat(end.replace("Z", "+00:00"))
                      - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    return total if seen else None


def row(path: Path) -> dict:
    from lab_kit import exercises

    nb = json.loads(path.read_text())
    words = sum(len(re.findall(r"\w+", "".join(c["source"])))
                for c in nb["cells"] if c["cell_type"] == "markdown")
    code = sum(1 for c in nb["cells"] if c["cell_type"] == "code"
               for line in "".join(c["source"]).splitlines()
               if line.strip() and not line.strip().startswith("#"))
    module = exercises.notebook("nb" + path.name[:2])
    n_ex, n_recap = len(module.EXERCISES), len(module.recap.questions)
    run_s = run_seconds(nb)
    minutes = (words / WORDS_PER_MIN + code * MIN_PER_CODE_LINE + (run_s or 0) / 60
               + n_ex * MIN_PER_EXERCISE + n_recap * MIN_PER_RECAP_QUESTION)
    return {"notebook": path.stem, "exercises": n_ex, "recap": n_recap, "words": words,
            "code_lines": code, "run_s": None if run_s is None else round(run_s),
            "minutes": int(round(minutes / 5) * 5)}


def main(paths: list[str]) -> int:
    rows = [row(Path(p)) for p in sorted(paths)]
    print("| notebook | exercises | recap | words | code lines | run (s) | minutes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| `{r['notebook']}` | {r['exercises']} | {r['recap']} | {r['words']:,} | "
              f"{r['code_lines']} | {r['run_s'] if r['run_s'] is not None else '?'} | "
              f"{r['minutes']} |")
    total = sum(r["minutes"] for r in rows)
    print(f"\ntotal: {total} minutes ({total / 60:.1f} hours)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or [str(p) for p in Path("notebooks").glob("[0-9]*.ipynb")]))
