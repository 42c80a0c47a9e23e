"""The process manager :class:`ModerationBackend`: the service as a real, detached process.

It starts ``python -m lab_kit.moderation.backend`` (like a broker) and produces *real*
outages: :meth:`~ModerationBackend.stop`, :meth:`~ModerationBackend.kill` (SIGKILL),
:meth:`~ModerationBackend.pause` (SIGSTOP: the port still accepts connections but nothing
answers), :meth:`~ModerationBackend.set_faults` (slow / failing / garbage answers, or other
settings). A JSON state file lets another process find it again
(:meth:`ModerationBackend.load`). Only a pid whose command line contains
``lab_kit.moderation.backend`` (or the old name ``lab_kit.moderation_backend``) and whose
start time matches the record is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from lab_kit import lab_env
from lab_kit.moderation.backend.client import ModerationClient
from lab_kit.moderation.backend.errors import ModerationBackendError
from lab_kit.moderation.backend.protocol import (
    DEFAULT_HOST,
    DEFAULT_SETTINGS,
    LEGACY_MODULES,
    LOG_FILE_NAME,
    MODULE,
    STATE_FILE_NAME,
    _read_state,
    _settings,
)
from lab_kit.moderation.backend.server import _check_loopback

# the folder holding lab_kit/ (.../lab_kit/moderation/backend/process.py), put on the child's
# PYTHONPATH so the service imports this very copy of the package
_PKG_ROOT = Path(__file__).resolve().parents[3]


def default_state_dir() -> Path:
    return lab_env.state_dir() / "moderation"  # follows LAB_STATE_DIR, like the broker


def _exited(pid: int | None, create_time: float | None) -> bool:
    """True once that process is gone or a zombie. (Not :func:`_verified_process`: while a
    killed process is torn down its command line reads empty, yet it still holds its port.)"""
    if pid is None or pid <= 0:
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return create_time is not None and abs(proc.create_time() - create_time) > 0.5
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:  # someone else's process: it exists
        return False


def _verified_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live (non-zombie) backend process with that pid, or None. Never a stranger."""
    if _exited(pid, create_time):
        return None
    try:
        proc = psutil.Process(pid)
        names = (MODULE, *LEGACY_MODULES)
        return proc if any(n in part for part in proc.cmdline() for n in names) else None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class ModerationBackend:
    """Start, stop, kill, pause and resume a moderation backend process.

    >>> backend = ModerationBackend(state_dir=tmp).start()      # doctest: +SKIP
    >>> client = ModerationClient(backend.url, timeout_s=0.5)   # doctest: +SKIP
    >>> backend.kill(); backend.restart()                      # same port # doctest: +SKIP

    The process is detached (own session): it survives the Python process that started it,
    until :meth:`stop`/:meth:`kill`. ``state_dir`` holds ``backend.json`` (pid, port, start
    time, settings) and ``backend.log`` (the process' stdout/stderr).

    ``request_ms``, ``post_ms``, ``capacity_per_s`` and ``max_concurrent`` are the service's
    cost model and capacity (see the module docstring; defaults in :data:`DEFAULT_SETTINGS`),
    passed on the command line at every :meth:`start` / :meth:`restart`; ``ValueError`` if one
    is out of range. :meth:`set_faults` changes them at run time, :meth:`reset_faults` puts
    these start values back.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = DEFAULT_HOST,
        seed: int = 0,
        startup_timeout_s: float = 10.0,
        request_ms: float = DEFAULT_SETTINGS["request_ms"],
        post_ms: float = DEFAULT_SETTINGS["post_ms"],
        capacity_per_s: float = DEFAULT_SETTINGS["capacity_per_s"],
        max_concurrent: int = int(DEFAULT_SETTINGS["max_concurrent"]),
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_file = self.state_dir / STATE_FILE_NAME
        self.log_file = self.state_dir / LOG_FILE_NAME
        self.host = _check_loopback(host)
        self.seed = seed
        self.settings: dict[str, float | int] = _settings(
            {"request_ms": request_ms, "post_ms": post_ms, "capacity_per_s": capacity_per_s,
             "max_concurrent": max_concurrent}
        )
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._create_time: float | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        status = "running" if self.is_running() else "stopped"
        return f"<ModerationBackend {status} pid={self._pid} url={self.url}>"

    def __enter__(self) -> ModerationBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- properties ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def url(self) -> str | None:
        return None if self._port is None else f"http://{self.host}:{self._port}"

    # -- discovery -------------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str] | None = None) -> ModerationBackend | None:
        """The backend recorded in ``state_dir`` if it is still running, else None."""
        self = cls(state_dir)
        doc = _read_state(self.state_file)
        if doc is None:
            return None
        if _verified_process(doc["pid"], doc.get("create_time")) is None:
            return None
        self.host = _check_loopback(doc.get("host", DEFAULT_HOST))
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            self.settings = _settings(doc.get("settings"))  # so restart() keeps them
        self._pid, self._port = doc["pid"], doc["port"]
        self._create_time = doc.get("create_time")
        return self

    @classmethod
    def ensure(
        cls, state_dir: str | os.PathLike[str] | None = None, port: int | None = None
    ) -> ModerationBackend:
        """Reuse the running backend of ``state_dir`` or start one (notebook friendly)."""
        found = cls.load(state_dir)
        if found is not None and (port is None or found.port == port):
            return found
        if found is not None:
            found.stop()
        return cls(state_dir).start(port)

    # -- lifecycle -------------------------------------------------------------------------

    def _process(self) -> psutil.Process | None:
        if self._proc is not None:
            self._proc.poll()  # reap our own child if it died, so it is not a zombie
        return _verified_process(self._pid, self._create_time)

    def is_running(self) -> bool:
        """True while the process exists (also when paused)."""
        return self._process() is not None

    def is_paused(self) -> bool:
        proc = self._process()
        try:
            return proc is not None and proc.status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return False

    def start(self, port: int | None = None) -> ModerationBackend:
        """Spawn the service (``port=None``: a free port chosen by the OS) and wait for it."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running; stop() or restart() it")
        other = ModerationBackend.load(self.state_dir)
        if other is not None:
            raise RuntimeError(
                f"a backend is already running for {self.state_dir} (pid {other.pid}, "
                f"{other.url}); use ModerationBackend.load() / ensure() or stop it first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        cmd = [
            sys.executable, "-m", MODULE,
            "--host", self.host,
            "--port", str(port or 0),
            "--state-file", str(self.state_file),
            "--seed", str(self.seed),
        ]
        for key, value in self.settings.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        pkg_root = str(_PKG_ROOT)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (pkg_root, env.get("PYTHONPATH", "")) if p
        )
        with open(self.log_file, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        self._proc, self._pid, self._create_time = proc, proc.pid, None
        try:
            self._wait_ready(proc, port)
        except BaseException:
            self._terminate(signal.SIGKILL, timeout_s=5.0)
            raise
        return self

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int | None) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"moderation backend exited with code {proc.returncode} during startup;"
                    f" log tail ({self.log_file}):\n{self.log_tail()}"
                )
            doc = _read_state(self.state_file)
            if doc is not None and doc["pid"] == proc.pid:
                self._port, self._create_time = doc["port"], doc.get("create_time")
                try:
                    if ModerationClient(self.url, timeout_s=1.0).health().get("ok") is True:
                        return
                except ModerationBackendError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"moderation backend (port {port or 'auto'}) not healthy after "
                    f"{self.startup_timeout_s:g}s; log tail ({self.log_file}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, max_bytes: int = 2000) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "<no log>"

    def _wait_gone(self, timeout_s: float) -> bool:
        """Wait until our process is gone (or a zombie); reap it if it is our child."""
        if self._proc is not None and self._proc.pid == self._pid:
            try:
                self._proc.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self._pid, os.WNOHANG)  # type: ignore[arg-type]
            if _exited(self._pid, self._create_time):
                return True
            time.sleep(0.02)
        return False

    def _terminate(self, sig: int, timeout_s: float) -> None:
        proc = self._process()
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
            if sig != signal.SIGKILL:
                os.kill(proc.pid, signal.SIGCONT)  # a paused process must wake up to exit
        if not self._wait_gone(timeout_s) and sig != signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                if self._process() is not None:
                    os.kill(proc.pid, signal.SIGKILL)
            self._wait_gone(5.0)

    def _forget_state_file(self) -> None:
        doc = _read_state(self.state_file)
        if doc is not None and doc["pid"] == self._pid:
            with contextlib.suppress(OSError):
                self.state_file.unlink()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful stop: SIGTERM (and SIGCONT if paused), SIGKILL after ``timeout_s``."""
        self._terminate(signal.SIGTERM, timeout_s)
        self._forget_state_file()

    def kill(self) -> None:
        """Crash it: SIGKILL, no cleanup by the process (the state file stays, stale)."""
        self._terminate(signal.SIGKILL, timeout_s=5.0)

    def _signal(self, sig: int) -> None:
        proc = self._process()
        if proc is None:
            raise RuntimeError(f"{self!r} is not running")
        os.kill(proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts TCP connections but nothing answers (timeouts)."""
        self._signal(signal.SIGSTOP)
        self._wait_paused(True)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)
        self._wait_paused(False)

    def _wait_paused(self, paused: bool, timeout_s: float = 5.0) -> None:
        """Signals are delivered asynchronously: wait until the kernel shows the new state."""
        deadline = time.monotonic() + timeout_s
        while self.is_paused() != paused and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self) -> ModerationBackend:
        """Stop if running, then start again on the SAME port (clients just reconnect)."""
        if self._port is None:
            raise RuntimeError("restart() needs a backend that was started or loaded before")
        port = self._port
        self.stop()
        return self.start(port)

    # -- fault injection / introspection -------------------------------------------------------

    def client(self, timeout_s: float = 0.5) -> ModerationClient:
        if self.url is None:
            raise RuntimeError("backend not started")
        return ModerationClient(self.url, timeout_s=timeout_s)

    def _admin(self) -> ModerationClient:
        return self.client(timeout_s=5.0)

    def health(self) -> dict[str, Any]:
        with self._admin() as c:
            return c.health()

    def faults(self) -> dict[str, float]:
        with self._admin() as c:
            return c.get_faults()

    def set_faults(self, **faults: float) -> dict[str, float]:
        """Update fault knobs (``latency_ms``, ``jitter_ms``, ``error_rate``, ``garbage_rate``)
        and/or settings (``request_ms``, ``post_ms``, ``capacity_per_s``, ``max_concurrent``)
        of the running process; returns all of them. Not remembered across a restart."""
        with self._admin() as c:
            return c.set_faults(**faults)

    def reset_faults(self) -> dict[str, float]:
        """No faults, and the settings this process was started with."""
        with self._admin() as c:
            return c.reset_faults()

