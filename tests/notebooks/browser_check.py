"""Open a notebook in a real JupyterLab + headless Chromium, run every cell, look at the result.

This is what a learner does after ``make lab``: open the notebook, *Run → Run All Cells*, wait,
look for red tracebacks and for the figures. Here it is automated:

1. A copy of the notebook's folder goes to a temp dir and the copied notebook's stored outputs
   are cleared (so every figure seen was drawn by this run; the repo is never touched).
2. ``jupyter lab`` (the one next to ``sys.executable``) serves that folder on 127.0.0.1, a free
   port and a random token, in its own session, with throw-away settings and workspace dirs
   (settings: render every cell, never fetch news/updates; extension manager read-only).
3. Playwright drives Debian's Chromium (``/usr/bin/chromium``, headless, no network besides
   loopback): open ``/lab/tree/<copy>.ipynb``, wait for the kernel to be idle, click the menu
   *Run → Run All Cells* (command ``runmenu:run-all``; ``window.jupyterapp`` is not exposed by a
   default JupyterLab 4), poll until no prompt shows ``[*]`` and the notebook's kernel indicator
   says idle, then *File → Save Notebook*.
4. Errors: ``output_type == "error"`` outputs of the saved copy, plus any rendered stderr output
   (``.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]``) that shows a
   Python traceback (JupyterLab 4 renders exceptions as that same stderr mime type, with no class
   of their own). Cells tagged ``raises-exception`` are counted apart. Figures: loaded ``<img>``
   (and ``<svg>``) elements inside output areas. A full-page screenshot is saved (the viewport is
   grown to the notebook's height so the whole notebook is in it).

Run by hand::

    .venv/bin/python -m tests.browser_check notebooks/00_start_here.ipynb [--screenshot out.png]

Env: ``LAB_BROWSER_TIMEOUT`` (seconds for the run, default 300), ``LAB_BROWSER_CHROMIUM``
(another Chromium binary).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_NOTEBOOK = REPO / "notebooks" / "00_start_here.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"
DEFAULT_TIMEOUT = 300.0
SERVER_START_TIMEOUT = 60.0
# Headless, and nothing that phones home: the network here is closed except loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
MAX_SCREENSHOT_HEIGHT = 16000
TRACEBACK_RE = re.compile(r"Traceback \(most recent call last\)")
STDERR_MIME = "application/vnd.jupyter.stderr"
# Throw-away JupyterLab user settings: every cell in the DOM (no windowing, so every output can
# be counted and is in the screenshot), and no news / update checks (no toast, no network).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


class BrowserCheckError(RuntimeError):
    """The check could not be carried out (server, browser or run did not behave)."""


@dataclass
class BrowserCheckResult:
    notebook: str
    cells: int  # code cells in the notebook
    executed: int  # code cells that got an execution count in this run
    errors: int  # code cells with an error (not tagged raises-exception)
    images: int  # figures rendered in output areas
    screenshot: Path | None
    seconds: float
    expected_errors: int = 0  # errors in cells tagged raises-exception
    error_details: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"notebook:   {self.notebook}",
            f"code cells: {self.cells} (executed {self.executed})",
            f"errors:     {self.errors}"
            + (f" (+{self.expected_errors} expected)" if self.expected_errors else ""),
            f"images:     {self.images}",
            f"screenshot: {self.screenshot}",
            f"seconds:    {self.seconds:.1f}",
        ]
        lines += [f"  ! {d}" for d in self.error_details]
        return "\n".join(lines)


# --------------------------------------------------------------------------- prerequisites


def chromium_path() -> str | None:
    """Debian's Chromium (or ``LAB_BROWSER_CHROMIUM``); never a Playwright-downloaded one."""
    env = os.environ.get("LAB_BROWSER_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def skip_reason() -> str | None:
    """Why the check cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python module is not installed (pip install playwright)"
    if chromium_path() is None:
        return "no Chromium binary (/usr/bin/chromium; on Debian: apt-get install chromium)"
    return None


def timeout_from_env(default: float = DEFAULT_TIMEOUT) -> float:
    raw = os.environ.get("LAB_BROWSER_TIMEOUT")
    return float(raw) if raw else default


# --------------------------------------------------------------------------- the notebook copy


def prepare_copy(notebook: Path, workdir: Path) -> Path:
    """Copy the notebook's folder (its data files, not the other notebooks) into ``workdir``,
    so relative paths still work, and clear the copied notebook's outputs."""
    src_dir = notebook.parent
    dst_dir = workdir / "lab"
    shutil.copytree(
        src_dir,
        dst_dir,
        ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__", ".*"),
    )
    copy = dst_dir / notebook.name
    shutil.copy2(notebook, copy)
    nb = json.loads(copy.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    copy.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return copy


def _cell_tags(cell: dict) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags") or [])


# --------------------------------------------------------------------------- JupyterLab server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_command() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter"
    if exe.exists():
        return [str(exe), "lab"]
    return [sys.executable, "-m", "jupyterlab"]


class LabServer:
    """``jupyter lab`` on 127.0.0.1 serving ``root_dir``; use as a context manager."""

    def __init__(self, root_dir: Path, state_dir: Path, log_path: Path) -> None:
        self.root_dir = root_dir
        self.state_dir = state_dir
        self.log_path = log_path
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def _settings(self) -> Path:
        settings = self.state_dir / "user-settings"
        for rel, value in LAB_SETTINGS.items():
            f = settings / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value), encoding="utf-8")
        return settings

    def command(self) -> list[str]:
        cmd = [
            *_jupyter_command(),
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.open_browser=False",
            f"--LabApp.user_settings_dir={self._settings()}",
            f"--LabApp.workspaces_dir={self.state_dir / 'workspaces'}",
            "--LabApp.extension_manager=readonly",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--ServerApp.allow_root=True")  # CI and this machine run as root
        return cmd

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.root_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserCheckError(
                    f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise BrowserCheckError(
            f"jupyter lab did not answer in {timeout:.0f} s:\n{self.log_tail()}"
        )

    def _api(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(self.url(path), method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def kernel_states(self) -> list[str]:
        """The server's execution_state of every running kernel ("idle", "busy", ...)."""
        try:
            return [
                k.get("execution_state", "") for k in json.loads(self._api("GET", "api/kernels"))
            ]
        except (urllib.error.URLError, OSError, ValueError):
            return []

    def stop(self) -> None:
        """Shut the kernels down through the API, then terminate (then kill) the server."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                for k in json.loads(self._api("GET", "api/kernels")):
                    self._api("DELETE", f"api/kernels/{k['id']}")
            except Exception:  # best effort; the server shuts kernels down too
                pass
            proc.terminate()  # SIGTERM: the server stops its kernels and exits
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def __enter__(self) -> LabServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the browser side

# What the page shows, in one round trip: kernel indicator, prompts, dialogs.
_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const cells = Array.from(panel.querySelectorAll('.jp-Notebook .jp-Cell'));
  const prompts = cells.filter(c => c.classList.contains('jp-CodeCell')).map(c => {
    const p = c.querySelector('.jp-InputPrompt');
    return p ? p.textContent.trim() : '';
  });
  const dialog = document.querySelector('.jp-Dialog');
  const kn = panel.querySelector('.jp-KernelName jp-button, .jp-KernelName button');
  return {
    status: ind ? ind.getAttribute('data-status') : null,
    kernel: kn ? (kn.getAttribute('aria-label') || kn.textContent || '').trim() : null,
    cells: cells.length,
    prompts: prompts,
    dialog: dialog ? dialog.innerText.slice(0, 300) : null,
  };
}"""

# Rendered outputs, per cell (index in the notebook, markdown included).
_OUTPUTS_JS = """(stderrMime) => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const cells = Array.from(panel.querySelectorAll('.jp-Notebook .jp-Cell'));
  return cells.map((c, i) => {
    const stderr = Array.from(
      c.querySelectorAll('.jp-OutputArea-output[data-mime-type="' + stderrMime + '"]')
    ).map(e => e.innerText);
    const imgs = Array.from(c.querySelectorAll('.jp-OutputArea-output img')).filter(
      img => img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0
    ).length;
    const svgs = Array.from(c.querySelectorAll('.jp-OutputArea-output .jp-RenderedSVG svg'))
      .filter(s => s.getBoundingClientRect().width > 0).length;
    return {index: i, stderr: stderr, images: imgs + svgs};
  });
}"""

# How much taller the notebook's content is than its scroller (0 if it fits); scrolls to top.
_SCROLL_HEIGHT_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const sc = panel.querySelector('.jp-WindowedPanel-outer') || panel.querySelector('.jp-Notebook');
  sc.scrollTop = 0;
  const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell');
  if (!cells.length) return 0;
  const last = cells[cells.length - 1].getBoundingClientRect();
  const content = last.bottom - sc.getBoundingClientRect().top + 40;
  return Math.max(0, Math.ceil(content - sc.clientHeight));
}"""


def _state(page) -> dict:
    return page.evaluate(_STATE_JS) or {}


def _click_menu(page, menu: str, command: str, text: str) -> None:
    """Open a top menu (e.g. "Run") and click the item for ``command`` (by text if needed)."""
    exact = re.compile(rf"^\s*{re.escape(menu)}\s*$")
    page.locator(".lm-MenuBar-item", has_text=exact).first.click()
    item = page.locator(f".lm-Menu-item[data-command='{command}']")
    if item.count() == 0:
        item = page.locator(".lm-Menu-item", has_text=text)
    item.first.click()


def _wait_kernel_idle(page, server: LabServer, n_cells: int, timeout: float) -> None:
    """Wait until the notebook is loaded and its kernel is started and idle.

    Right after the page opens the indicator already says "idle" while the panel still shows
    one empty cell and "No Kernel": so also wait for every cell, a kernel name, and the
    server's own view of the kernel (``/api/sessions``), twice in a row.
    """
    deadline = time.monotonic() + timeout
    st: dict = {}
    ready_once = False
    while time.monotonic() < deadline:
        st = _state(page)
        if st.get("dialog"):
            # e.g. "Select Kernel" when the notebook's kernelspec is unknown: take the default
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
            ready_once = False
        else:
            ready = (
                st.get("status") == "idle"
                and st.get("cells") == n_cells
                and st.get("kernel") not in (None, "", "No Kernel")
                and server.kernel_states() == ["idle"]
            )
            if ready and ready_once:
                return
            ready_once = ready
        time.sleep(0.5)
    raise BrowserCheckError(f"kernel not idle after {timeout:.0f} s (last state: {st})")


def _run_all_and_wait(page, server: LabServer, timeout: float) -> dict:
    """Run → Run All Cells; return the final page state once execution has finished."""
    before = _state(page)
    if not before.get("prompts"):
        return before  # no code cell: nothing to run
    _click_menu(page, "Run", "runmenu:run-all", "Run All Cells")
    deadline = time.monotonic() + timeout
    started = False
    quiet_since: float | None = None
    st: dict = {}
    while time.monotonic() < deadline:
        st = _state(page)
        prompts = st.get("prompts", [])
        status = st.get("status")
        running = any("*" in p for p in prompts)
        numbered = any(re.search(r"\d", p) for p in prompts)
        started = started or running or numbered or status == "busy"
        if status in ("dead", "autorestarting", "restarting"):
            raise BrowserCheckError(f"kernel {status} during the run (prompts {prompts})")
        if st.get("dialog"):
            raise BrowserCheckError(f"a dialog interrupted the run: {st['dialog']!r}")
        if started and not running and status == "idle" and server.kernel_states() == ["idle"]:
            # idle with no [*] twice in a row, ~1 s apart: the queue is really empty
            if quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 1.0:
                return st
        else:
            quiet_since = None
        time.sleep(0.5)
    raise BrowserCheckError(
        f"run not finished after {timeout:.0f} s (started={started}, last state: {st})"
    )


def _save_and_read(page, copy: Path, timeout: float = 30.0) -> dict:
    """File → Save Notebook, then read the saved copy (the kernel's outputs, as JSON)."""
    before = copy.stat().st_mtime_ns
    _click_menu(page, "File", "docmanager:save", "Save Notebook")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if copy.stat().st_mtime_ns != before:
            try:
                return json.loads(copy.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                pass  # caught mid-write
        time.sleep(0.3)
    raise BrowserCheckError(f"the notebook was not saved within {timeout:.0f} s")


def _screenshot(page, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = page.evaluate(_SCROLL_HEIGHT_JS) or 0
    if extra > 0:
        height = min(VIEWPORT["height"] + extra, MAX_SCREENSHOT_HEIGHT)
        page.set_viewport_size({"width": VIEWPORT["width"], "height": int(height)})
        page.wait_for_timeout(800)  # let Lumino re-lay out and images paint
        page.evaluate(_SCROLL_HEIGHT_JS)
    page.screenshot(path=str(path), full_page=True)


def _evaluate(nb_json: dict, rendered: list[dict]) -> tuple[int, int, int, int, list[str]]:
    """(executed, errors, expected_errors, images, details) from saved JSON + rendered DOM."""
    cells = nb_json.get("cells", [])
    executed = 0
    bad: dict[int, str] = {}
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("execution_count") is not None:
            executed += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                bad[i] = f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
                break
    for r in rendered:
        i = r["index"]
        if i in bad:
            continue
        for text in r["stderr"]:
            if TRACEBACK_RE.search(text):
                last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:]
                bad[i] = f"cell {i}: traceback on stderr: {' '.join(last)[:200]}"
                break
    errors, expected, details = 0, 0, []
    for i, msg in sorted(bad.items()):
        if i < len(cells) and "raises-exception" in _cell_tags(cells[i]):
            expected += 1
            details.append(msg + " (tagged raises-exception)")
        else:
            errors += 1
            details.append(msg)
    images = sum(r["images"] for r in rendered)
    return executed, errors, expected, images, details


def check_notebook(
    notebook: str | os.PathLike,
    screenshot: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> BrowserCheckResult:
    """Run every cell of ``notebook`` in JupyterLab in headless Chromium; see module doc."""
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(notebook)
    timeout = timeout_from_env() if timeout is None else timeout
    shot = Path(screenshot) if screenshot else ARTIFACTS / f"{notebook.stem}.png"
    exe = chromium_path()
    if exe is None:
        raise BrowserCheckError(skip_reason() or "no chromium")

    with tempfile.TemporaryDirectory(prefix="lab-browser-") as tmp:
        tmpdir = Path(tmp)
        copy = prepare_copy(notebook, tmpdir)
        n_cells = len(json.loads(copy.read_text(encoding="utf-8")).get("cells", []))
        state_dir = tmpdir / "state"
        state_dir.mkdir()
        with LabServer(copy.parent, state_dir, tmpdir / "jupyter.log") as server:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport=dict(VIEWPORT))
                    page.set_default_timeout(60_000)
                    url = server.url("lab/tree/" + urllib.parse.quote(copy.name))
                    page.goto(url, wait_until="domcontentloaded")
                    try:
                        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
                        _wait_kernel_idle(page, server, n_cells, timeout=min(120.0, timeout))
                        _run_all_and_wait(page, server, timeout)
                        nb_json = _save_and_read(page, copy)
                        rendered = page.evaluate(_OUTPUTS_JS, STDERR_MIME)
                        _screenshot(page, shot)
                    except Exception as exc:
                        try:  # leave a picture of what went wrong next to the log
                            _screenshot(page, shot)
                        except Exception:
                            pass
                        raise BrowserCheckError(
                            f"{exc}\n(screenshot: {shot})\n--- jupyter log ---\n{server.log_tail()}"
                        ) from exc
                finally:
                    browser.close()

    executed, errors, expected, images, details = _evaluate(nb_json, rendered)
    cells = sum(1 for c in nb_json.get("cells", []) if c.get("cell_type") == "code")
    return BrowserCheckResult(
        notebook=str(notebook),
        cells=cells,
        executed=executed,
        errors=errors,
        images=images,
        screenshot=shot,
        seconds=time.monotonic() - t0,
        expected_errors=expected,
        error_details=details,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.browser_check",
        description="Run all cells of a notebook in JupyterLab (headless Chromium) and check it.",
    )
    ap.add_argument("notebook", nargs="?", default=str(DEFAULT_NOTEBOOK))
    ap.add_argument("--screenshot", help="PNG path (default test-artifacts/browser/<name>.png)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds for the run")
    args = ap.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    try:
        result = check_notebook(args.notebook, args.screenshot, args.timeout)
    except (BrowserCheckError, FileNotFoundError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    ok = result.errors == 0 and result.images >= 1
    print("OK" if ok else "NOT OK (errors, or no figure rendered)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
