"""A learner's first minutes, in a real browser: JupyterLab + headless Chromium, Run All Cells.

Runs ``notebooks/00_start_here.ipynb`` (or ``$LAB_BROWSER_NOTEBOOK``) on a cleared copy, so
everything seen was drawn by this run; see ``tests/browser_check.py`` for how. The screenshot
lands in ``test-artifacts/browser/<notebook>.png`` (git-ignored). ``$LAB_BROWSER_TIMEOUT`` bounds
the run (seconds, default 300).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import browser_check

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _notebook() -> Path:
    """The notebook to run. A ``LAB_BROWSER_NOTEBOOK`` that names no file is an error, not a
    skip: a typo must not turn the browser check into a silent pass."""
    raw = os.environ.get("LAB_BROWSER_NOTEBOOK")
    if not raw:
        path = browser_check.DEFAULT_NOTEBOOK
    else:
        path = Path(raw).expanduser()
        if not path.is_absolute() and not path.exists():
            path = browser_check.REPO / path  # relative to the repo when not to the cwd
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"LAB_BROWSER_NOTEBOOK={raw!r}: no notebook at {path}" if raw
                                else f"the default notebook {path} is missing")
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_notebook_runs_all_cells_in_jupyterlab():
    notebook = _notebook()  # a misnamed notebook fails here, browser or not
    reason = browser_check.skip_reason()
    if reason:
        pytest.skip(f"browser check needs Playwright + Debian's Chromium: {reason}")

    result = browser_check.check_notebook(notebook)
    print(result.summary())

    assert result.errors == 0, "cells failed in JupyterLab:\n" + "\n".join(result.error_details)
    assert result.images >= 1, f"no figure rendered in the browser (see {result.screenshot})"
    shot = result.screenshot
    assert shot is not None and shot.is_file(), f"no screenshot at {shot}"
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{shot} is not a PNG"
    assert len(data) > 10_000, f"{shot} is only {len(data)} bytes: a blank page?"


def test_a_misnamed_browser_notebook_is_an_error_not_a_skip(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_BROWSER_NOTEBOOK", "notebooks/00_strat_here.ipynb")
    with pytest.raises(FileNotFoundError, match="00_strat_here"):
        _notebook()
    monkeypatch.setenv("LAB_BROWSER_NOTEBOOK", str(tmp_path))  # a folder is not a notebook
    with pytest.raises(FileNotFoundError, match="LAB_BROWSER_NOTEBOOK"):
        _notebook()
    monkeypatch.setenv("LAB_BROWSER_NOTEBOOK", "notebooks/07_instructor_demo.ipynb")
    assert _notebook() == (browser_check.REPO / "notebooks/07_instructor_demo.ipynb").resolve()
    monkeypatch.delenv("LAB_BROWSER_NOTEBOOK")
    assert _notebook() == browser_check.DEFAULT_NOTEBOOK.resolve()
