"""``python -m lab_kit.moderation``: one member of the moderation group, or N member processes.

One member runs a :class:`~lab_kit.moderation.service.ModerationService` (and a
:class:`~lab_kit.moderation.recheck.RecheckWorker`, unless ``--no-recheck``) in this process
until SIGTERM/SIGINT. With ``--processes N`` this process is a supervisor: it starts N members
as ``python -m lab_kit.moderation ... --processes 1``, forwards the signals and waits::

    python -m lab_kit.moderation --bootstrap 127.0.0.1:9092 --backend-url URL --processes 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from lab_kit.kafka_settings import check_bootstrap_servers, check_topic_name
from lab_kit.moderation.clients import CLIENTS, DEFAULT_CLIENT
from lab_kit.moderation.recheck import RecheckWorker
from lab_kit.moderation.service import ModerationService
from lab_kit.moderation.service import log as service_log
from lab_kit.moderation.settings import (
    GUARANTEES,
    check_float,
    check_int,
    check_kafka_settings,
    topic_names,
)
from lab_kit.moderation.stage import log as stage_log

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab_kit.moderation",
                                description="Run the StreamSocial moderation service "
                                            "(+ recheck worker) until SIGTERM/SIGINT.")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--backend-url", required=True, help="moderation backend URL")
    p.add_argument("--processes", type=int, default=1,
                   help="member processes of the consumer group (1-32)")
    p.add_argument("--client", choices=CLIENTS, default=DEFAULT_CLIENT,
                   help=f"Kafka client of the service (default {DEFAULT_CLIENT}: librdkafka)")
    p.add_argument("--guarantee", choices=GUARANTEES, default="at-least-once",
                   help="at-least-once: commit offsets after the outputs are acked (a killed "
                   "member's work is redone: duplicates); exactly-once: outputs and offsets "
                   "in one transaction per interval, for read_committed readers")
    p.add_argument("--group", default="moderation", help="consumer group of the service")
    p.add_argument("--recheck-group", default=None,
                   help="consumer group of the recheck worker (default: GROUP-recheck)")
    p.add_argument("--no-recheck", action="store_true", help="do not run the recheck worker")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--batch-size", type=int, default=100, help="posts per backend call")
    p.add_argument("--concurrency", type=int, default=4, help="backend calls in flight")
    p.add_argument("--shed-after-ms", type=float, default=1000.0,
                   help="moderate locally posts older than this (0: never shed)")
    p.add_argument("--max-poll-records", type=int, default=500)
    p.add_argument("--backend-timeout", type=float, default=0.5, help="seconds per call")
    p.add_argument("--breaker-fail-max", type=int, default=5)
    p.add_argument("--breaker-reset", type=float, default=5.0, help="seconds open")
    return p


def _check_args(a: argparse.Namespace) -> None:
    """Every value checked before anything starts (one clear line, exit 2)."""
    check_int("--processes", a.processes, 1, 32)
    check_int("--batch-size", a.batch_size, 1, 1000)
    check_int("--concurrency", a.concurrency, 1, 256)
    check_int("--max-poll-records", a.max_poll_records, 1, 100_000)
    check_float("--shed-after-ms", a.shed_after_ms, 0, 3_600_000)
    check_float("--backend-timeout", a.backend_timeout, 0.001, 600)
    check_int("--breaker-fail-max", a.breaker_fail_max, 1, 1_000_000)
    check_float("--breaker-reset", a.breaker_reset, 0, 3600)
    if a.max_seconds is not None:
        check_float("--max-seconds", a.max_seconds, 0.001, 7 * 86400)
    # the Kafka settings too, before any member process starts
    topics = topic_names(a.topic_prefix)
    for flag, check in (("--bootstrap", lambda: check_bootstrap_servers(a.bootstrap)),
                        ("--topic-prefix", lambda: [check_topic_name(t, f"topics[{k!r}]")
                                                    for k, t in topics.items()])):
        try:
            check()
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    for flag, group in (("--group", a.group),
                        ("--recheck-group", a.recheck_group or f"{a.group}-recheck")):
        if not group.strip():
            raise ValueError(f"{flag}: must be a non-empty consumer group name, got {group!r}")
        check_kafka_settings(a.client, {"bootstrap_servers": a.bootstrap}, group_id=group,
                              topics=topics, max_poll_records=a.max_poll_records)


def _supervise(argv: list[str], n: int) -> int:
    """Start ``n`` member processes (same arguments, one member each), forward SIGTERM and
    SIGINT to them, wait for all. Exit 0 when every member stopped cleanly."""
    args = list(argv)
    i = args.index("--processes") if "--processes" in args else -1
    if i >= 0:
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--processes=")]
    cmd = [sys.executable, "-m", "lab_kit.moderation", *args, "--processes", "1"]
    members = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL) for _ in range(n)]
    stopping = threading.Event()

    def _forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for m in members:
            if m.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    print(f"moderation supervisor pid={os.getpid()} members="
          f"{','.join(str(m.pid) for m in members)}", file=sys.stderr, flush=True)
    codes: dict[int, int] = {}
    while len(codes) < n:
        for m in members:
            if m.pid not in codes and m.poll() is not None:
                codes[m.pid] = m.returncode
                if not stopping.is_set():
                    print(f"moderation member pid={m.pid} exited with {m.returncode}; the "
                          f"group's other members take over its partitions",
                          file=sys.stderr, flush=True)
        time.sleep(0.1)
    print(f"moderation supervisor stopped: members {codes}", file=sys.stderr, flush=True)
    return 0 if stopping.is_set() and all(c == 0 for c in codes.values()) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    try:
        _check_args(a)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.processes > 1:
        return _supervise(argv, a.processes)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for log in (stage_log, service_log):  # our own rare events: breaker, shedding, assignments
        log.setLevel(logging.INFO)

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    topics = topic_names(a.topic_prefix)
    try:
        service = ModerationService(
            a.bootstrap, a.backend_url, group_id=a.group, topics=topics,
            batch_size=a.batch_size, concurrency=a.concurrency,
            shed_after_ms=a.shed_after_ms or None, backend_timeout_s=a.backend_timeout,
            breaker_fail_max=a.breaker_fail_max, breaker_reset_s=a.breaker_reset,
            max_poll_records=a.max_poll_records, client=a.client, guarantee=a.guarantee)
        worker = None
        if not a.no_recheck:
            worker = RecheckWorker(a.bootstrap, a.backend_url,
                                   group_id=a.recheck_group or f"{a.group}-recheck",
                                   topics=topics, batch_size=a.batch_size,
                                   gate=service.healthy, client=a.client,
                                   guarantee=a.guarantee)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if worker is not None:
        worker.start()
    print(f"moderation service pid={os.getpid()} group={a.group} client={a.client} "
          f"guarantee={a.guarantee} "
          f"topics={topics['posts']} -> {topics['results']}", file=sys.stderr, flush=True)
    try:
        stats = service.run(stop, a.max_seconds)
    finally:
        if worker is not None:
            worker.stop()
        service.close()
        if worker is not None:
            worker.close()
    summary = {"service": stats, "recheck": worker.stats() if worker is not None else None}
    print(f"moderation service stopped: {json.dumps(summary, default=str)}", file=sys.stderr,
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
