"""What the module-level command lines share (``python -m lab_kit.bench.api``,
``python -m lab_kit.drills.api``): :func:`run_cli` parses, runs, and turns a ``ValueError``
into one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["run_cli"]


def run_cli(prog: str, doc: str, add_args: Any, run: Any, argv: list[str] | None) -> int:
    """A module's own command line: parse, run, a ValueError is one line and exit 2."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    add_args(p)
    try:
        return run(p.parse_args(argv))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
