"""The moderation service as its own processes, and the CPU seconds of processes.

:class:`ServiceProcess` starts ``python -m lab_kit.moderation ... --processes N`` in a session
of its own, measures the CPU of the processes it started and stops them (SIGTERM, then
SIGKILL of that session's group only); its stop summary reads the members' own stop lines.
:func:`process_cpu_s` and :func:`pids_cpu_s` are the CPU seconds the pipeline's other stages
are measured with.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from lab_kit.moderation.clients import DEFAULT_CLIENT

STOP_TIMEOUT_S = 20.0
#: the directory that holds the ``lab_kit`` package: the service imports it from there
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def process_cpu_s(proc: psutil.Process) -> float | None:
    """User + system CPU seconds of ``proc`` (None if it is gone or not ours to read)."""
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def pids_cpu_s(pids: list[int]) -> float | None:
    """CPU seconds of the processes ``pids``, summed (None if none could be read)."""
    vals = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            c = process_cpu_s(psutil.Process(pid))
            if c is not None:
                vals.append(c)
    return sum(vals) if vals else None


def broker_pids(broker: Any) -> list[int]:
    """The broker's node processes on this machine (none for an external broker or a
    container's: their CPU is not measured)."""
    try:
        return [n.pid for n in broker.nodes() if n.pid]
    except Exception:  # noqa: BLE001 - e.g. an external broker: not measured
        return []


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's threads, grouped: ``caller`` (the main thread: the load's
    ``submit()`` calls), ``client`` (the thread that runs the client's callbacks:
    kafka-python's network thread, or the lab's librdkafka poll thread), ``other`` (the rest:
    the sampler, the producer's own workers, librdkafka's C threads, threads that ended)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    main_id = threading.main_thread().native_id
    out = {"caller": 0.0, "client": 0.0, "other": 0.0}
    proc = psutil.Process()
    try:
        threads = proc.threads()
        total = process_cpu_s(proc) or 0.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return out
    for t in threads:
        name = names.get(t.id, "")
        group = ("caller" if t.id == main_id else
                 "client" if "kafka" in name.lower() else "other")
        out[group] += t.user_time + t.system_time
    # threads that ended took their CPU with them from threads(), not from the process
    out["other"] += max(0.0, total - sum(out.values()))
    return out


class ServiceProcess:
    """``python -m lab_kit.moderation ... --processes N`` in a session of its own.

    With N > 1 the started process is a supervisor that forwards SIGTERM to its members;
    with N = 1 it is the member itself. ``stop()`` sends SIGTERM and, after ``timeout_s``,
    SIGKILL to the session's process group (only the processes started here).
    """

    def __init__(self, bootstrap: str, backend_url: str, *, prefix: str, group: str,
                 processes: int = 1, client: str = DEFAULT_CLIENT,
                 extra_args: tuple[str, ...] = (), log_path: Path):
        self.cmd = [sys.executable, "-m", "lab_kit.moderation", "--bootstrap", bootstrap,
                    "--backend-url", backend_url, "--processes", str(processes),
                    "--client", client, "--group", group, "--topic-prefix", prefix,
                    *extra_args]
        self.group, self.processes, self.client = group, processes, client
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._procs: dict[int, psutil.Process] = {}

    def start(self) -> ServiceProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        pkg_root = str(PACKAGE_ROOT)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes_now(self) -> list[psutil.Process]:
        """The started process and all its children (cached: CPU deltas need the same
        objects, and a cached ``psutil.Process`` is safe against pid reuse)."""
        if self.proc is None:
            return []
        try:
            root = self._procs.setdefault(self.proc.pid, psutil.Process(self.proc.pid))
            for child in root.children(recursive=True):
                self._procs.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        return list(self._procs.values())

    def cpu_seconds(self) -> float | None:
        vals = [c for c in (process_cpu_s(p) for p in self.processes_now()) if c is not None]
        return sum(vals) if vals else None

    def log_tail(self, n_bytes: int = 3000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode("utf-8", errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, Any]:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the process group."""
        out: dict[str, Any] = {"exit_code": None, "killed": False}
        if self.proc is None:
            return out
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                out["killed"] = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # our own session's group
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        out["exit_code"] = self.proc.returncode
        marker = "moderation service stopped:"
        stopped = [line.split(marker, 1)[1] for line in self.log_tail(1 << 20).splitlines()
                   if marker in line]
        out["members_stopped_cleanly"] = len(stopped)
        out["members"] = [_member_summary(text) for text in stopped]
        return out


def _member_summary(text: str) -> dict[str, Any]:
    """The few numbers of a member's stop summary a reader needs (state at the end)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    svc, rc = doc.get("service") or {}, doc.get("recheck") or {}
    return {"consumed": svc.get("consumed"), "results": svc.get("results"),
            "degraded": svc.get("degraded"), "breaker_state": svc.get("breaker_state"),
            "breaker_opens": svc.get("breaker_opens"), "shedding": svc.get("shedding"),
            "shed": svc.get("shed"), "overloaded": svc.get("overloaded"),
            "recheck_results": rc.get("results"), "recheck_gated": rc.get("gated"),
            "recheck_gated_by_group": rc.get("gated_by_group"),
            "guarantee": svc.get("guarantee"), "transactions": svc.get("transactions"),
            "aborts": svc.get("aborts"), "rebalances": svc.get("rebalances"),
            "commit_failures": svc.get("commit_failures"),
            "batch_retries": svc.get("batch_retries"), "chunks": svc.get("chunks"),
            "backend_calls": svc.get("backend_calls"), "profile": svc.get("profile")}
