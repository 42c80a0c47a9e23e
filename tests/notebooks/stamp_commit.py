"""Record in each notebook's metadata the ``lab_kit`` commit its stored outputs came from.

``make notebooks`` runs it right after re-executing the notebooks:
``python tests/notebooks/stamp_commit.py notebooks/[0-9]*.ipynb``. The commit is ``git rev-parse
--short HEAD``, with ``-dirty`` when ``lab_kit/`` had uncommitted changes at that moment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def lab_kit_commit(repo: Path) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "lab_kit"], cwd=repo,
                           check=True, capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def main(paths: list[str]) -> int:
    repo = Path(__file__).resolve().parents[2]
    commit = lab_kit_commit(repo)
    for p in map(Path, paths):
        nb = json.loads(p.read_text())
        nb["metadata"]["lab_kit"] = {"commit": commit}
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{p.name}: outputs from lab_kit {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
