"""Serving the post API: the command line (``python -m lab_kit.api`` and ``python -m lab_kit
api``: flags, checks, uvicorn) and :class:`ApiServer`, which runs that command in a child
process on a free loopback port for notebooks, benches, drills and tests.

uvicorn imports the app by name (``lab_kit.api:create_app_from_env``), once per worker, so
nothing here imports :mod:`lab_kit.api.app`; ``httpx`` (the client side) is imported where it
is used, so the served workers, which import this package, never load it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from lab_kit.api.errors import (
    API_CLIENTS,
    DEFAULT_API_CLIENT,
    LIMIT_CONCURRENCY,
    MAX_BODY_BYTES,
    VARIANTS,
)
from lab_kit.machine import free_port
from lab_kit.topics import POSTS

#: ``--help``'s description (the first line of the served app's docstring)
DESCRIPTION = "StreamSocial's post-submission HTTP API: the user's side of the async producer."

#: what a non-loopback ``--host`` hands to every machine that can reach this one
EXPOSED = ("POST /posts (anyone may submit posts under any user id), GET /posts/{id} (any "
           "post's status), GET /healthz and GET /metrics (the broker's and the spool's "
           "state); no authentication, no TLS")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything
    else, names included (a name may resolve to any address)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, port: int, allow_remote: bool) -> str | None:
    """None for a loopback ``host``; else the warning to print if ``allow_remote``, or a
    ValueError (one line) that says how to ask for it."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ValueError(
            f"--host {host} is not a loopback address: the API has no authentication, so "
            f"serving it beyond this machine needs --allow-remote as well")
    return (f"WARNING: --allow-remote: serving http://{host}:{port} to every machine that "
            f"can reach this one: {EXPOSED}")


# --- command line -------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="default 127.0.0.1 (loopback only); any other needs --allow-remote")
    p.add_argument("--allow-remote", action="store_true",
                   help="accept a non-loopback --host (prints what it exposes)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (1-8)")
    p.add_argument("--variant", choices=VARIANTS, default="async",
                   help="blocking = send().get() inside async def (the lesson's mistake)")
    p.add_argument("--client", choices=API_CLIENTS, default=DEFAULT_API_CLIENT,
                   help="the producer's Kafka client (default %(default)s)")
    p.add_argument("--topic", default=POSTS)
    p.add_argument("--bootstrap", default=None, help="default: the lab's broker")
    p.add_argument("--spool-dir", default=None,
                   help="default $LAB_STATE_DIR/api-spool (one spool file per worker)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    p.add_argument("--verdicts", choices=("auto", "on", "off"), default="auto",
                   help="read moderation.results for GET /posts/{id} (auto: on for 'posts')")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``python -m lab_kit api ...`` (registered by lab_kit.cli)."""
    p = sub.add_parser("api", help="serve the post-submission HTTP API (uvicorn)")
    add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import uvicorn  # why here: only serving needs the server (lab_kit.cli imports this module)

    if not 1 <= args.workers <= 8:
        raise ValueError(f"--workers must be between 1 and 8, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_body_bytes < 1024:
        raise ValueError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    warning = check_exposure(args.host, args.port, getattr(args, "allow_remote", False))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    os.environ.update({
        "LAB_API_VARIANT": args.variant, "LAB_API_TOPIC": args.topic,
        "LAB_API_CLIENT": getattr(args, "client", DEFAULT_API_CLIENT),
        "LAB_API_BOOTSTRAP": args.bootstrap or "", "LAB_API_SPOOL_DIR": args.spool_dir or "",
        "LAB_API_MAX_BODY_BYTES": str(args.max_body_bytes),
        "LAB_API_VERDICTS": {"on": "1", "off": "0"}.get(args.verdicts, "")})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run("lab_kit.api:create_app_from_env", factory=True, host=args.host,
                port=args.port, workers=args.workers, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5, limit_concurrency=LIMIT_CONCURRENCY,
                # no proxy in front: X-Forwarded-* is not rewritten into the request (uvicorn
                # trusts it from 127.0.0.1 by default), and its middleware is a step less
                proxy_headers=False)
    return 0


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab_kit.api", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return main(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --- a served API for notebooks, benches, drills and tests ---------------------------------------

def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes (zombies excluded) of process group ``pgid``."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


class ApiServer:
    """``python -m lab_kit.api`` in a child process, on a free loopback port.

    ``with ApiServer(topic=...) as api: httpx.post(api.url + "/posts", json=...)``;
    ``stop()`` sends SIGTERM (the app flushes, or spools what is left) and waits, then
    SIGKILLs whatever is left of the child's process group (uvicorn's workers included). The
    child runs in its own session, so that group is exactly the API's processes. A
    :meth:`start` that fails (the child exits, or never answers) stops the child before it
    raises; the log file is only open in the parent while the child is being spawned.
    """

    def __init__(self, *, variant: str = "async", topic: str = POSTS, workers: int = 1,
                 port: int | None = None, spool_dir: str | Path | None = None,
                 verdicts: str = "auto", bootstrap: str | None = None,
                 log_path: str | Path | None = None, client: str = DEFAULT_API_CLIENT):
        self.variant, self.topic, self.workers = variant, topic, workers
        self.client = client
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spool_dir, self.verdicts, self.bootstrap = spool_dir, verdicts, bootstrap
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._group_gone = False  # set once stop() saw the child's group empty

    def start(self, timeout_s: float = 30.0) -> ApiServer:
        cmd = [sys.executable, "-m", "lab_kit.api", "--port", str(self.port),
               "--variant", self.variant, "--topic", self.topic,
               "--workers", str(self.workers), "--verdicts", self.verdicts,
               "--client", self.client]
        if self.spool_dir:
            cmd += ["--spool-dir", str(self.spool_dir)]
        if self.bootstrap:
            cmd += ["--bootstrap", self.bootstrap]
        with (open(self.log_path, "ab") if self.log_path  # the child keeps its own copy
              else contextlib.nullcontext(None)) as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                stderr=log, start_new_session=True)
        try:
            self.wait_ready(timeout_s)
        except BaseException:  # never leave a half-started API (or its workers) behind
            self.stop(timeout_s=5)
            raise
        return self

    def health(self) -> dict:
        import httpx  # why here: the served workers import this module (see the docstring)

        return httpx.get(self.url + "/healthz", timeout=5).json()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        import httpx  # why here: the served workers import this module (see the docstring)

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = ""
                if self.log_path and Path(self.log_path).exists():
                    tail = ": " + Path(self.log_path).read_text(errors="replace")[-1500:]
                raise RuntimeError(f"the API exited with code {self.proc.returncode}{tail}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the API did not answer on {self.url} within {timeout_s} s")

    def counters(self) -> dict[str, float]:
        """The ``lab_api_*`` samples of ``/metrics`` without labels (posts, spool, broker)."""
        import httpx  # why here: the served workers import this module (see the docstring)

        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("lab_api_") and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    def wait_health(self, done: Callable[[dict], bool], timeout_s: float,
                    every_s: float = 0.2) -> dict:
        """Ask ``/healthz`` until ``done(answer)``, at most ``timeout_s``; the last answer
        (``in_flight`` and ``spool_depth`` None if none came). A worker answers for itself."""
        import httpx  # why here: the served workers import this module (see the docstring)

        deadline = time.monotonic() + timeout_s
        h: dict = {"in_flight": None, "spool_depth": None}
        while time.monotonic() < deadline:
            try:
                h = self.health()
            except httpx.HTTPError:  # a stalled (blocking) server: ask again
                continue
            if done(h):
                break
            time.sleep(every_s)
        return h

    def wait_drained(self, timeout_s: float = 120.0) -> dict:
        """Wait until nothing is in flight and the spool is empty (the broker must be up)."""
        return self.wait_health(lambda h: not (h["in_flight"] or h["spool_depth"]), timeout_s)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL to the whole process group (also
        when the parent exited but left a worker behind). The exit code, None if never
        started."""
        if self.proc is None:
            return None
        if self._group_gone:  # never signal that pgid again: the number may be reused
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        code = self.proc.wait(10)
        self._group_gone = not group_members(self.proc.pid)
        return code

    def crash(self) -> None:
        """``kill -9`` of every process of the API (the parent and each worker) at once: a
        crash, as the OOM killer or a power cut of the container would do it. Nothing is
        flushed or spooled: what a worker held only in memory is gone. ``start()`` on a new
        ``ApiServer`` with the same ``spool_dir`` replays what the spool holds."""
        if self.proc is None or self._group_gone:
            return
        self._kill_group()
        self.proc.wait(10)
        self._group_gone = not group_members(self.proc.pid)

    def _kill_group(self) -> None:
        """SIGKILL every process left in the child's group (its pgid is its pid: it leads its
        own session), then wait (up to 10 s) until each is gone or a zombie."""
        assert self.proc is not None
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # no process left in the group
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.05)  # reap the leader

    def __enter__(self) -> ApiServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
