"""``drill api-crash``: kill -9 of every API worker during a broker outage, and what a 202 promised.

Two answers of ``POST /posts`` side by side (issue 20, "a 202 that survives a crash"):

* ``202`` (no wait): the post is *accepted*. It may still sit in the producer's buffer, in
  memory: a crash of the process loses it.
* ``201`` from ``?wait=ack``: the post no longer depends on the API process: Kafka
  acknowledged it (``acks=all``), or the spool committed it and the WAL was fsynced (one fsync
  shared by every waiting request). The side is called ``wait_ack`` in the report (it was
  ``durable`` until the answer's own ``"durable"`` field took the guide's meaning: on this
  drill's one broker an ack is one copy, acknowledged and not durable, see
  :mod:`lab_kit.api.app`).

The drill:

* **workload**: two open loops at ``rate`` each, one of plain ``POST /posts``, one of
  ``POST /posts?wait=ack``, through ``python -m lab_kit.api --workers W``;
* **nemesis**: ``kill -9`` of the broker ``lead_s`` into the load; ``crash_after_s`` later,
  once the worker asked (``/healthz`` reaches one) reports posts in its spool, ``kill -9`` of
  every API process at once (mid-load, during the outage). That wait lasts at most
  ``SPOOL_WAIT_S``, then the crash comes anyway; a wait longer than ``tail_s`` would put the
  crash after the load. The load goes on ``tail_s`` more: those requests fail (transport
  errors) and count as not accepted;
* **recovery**: the posts left in every spool slot are counted from the files; a new API on
  the same spool folder (its workers take the crashed workers' slots), then the broker
  restarts; the new API replays what the spool kept;
* **checker**: the topic read back. Every ``201`` must be delivered (``wait_ack.lost`` 0);
  the ``202``\\ s lost show what an in-memory acceptance costs (counted, reported, allowed);
  duplicates are counted for both. Per-user order is not checked here: the requests run
  concurrently over many connections and workers, so they have no order to keep (the
  producer drills check order, per producer).

The broker is one of the drill's own (``$LAB_STATE_DIR/api-crash``, purged at the end).
``python -m lab_kit drill api-crash [--rate R] [--json PATH]`` or
``python -m lab_kit.drills.api_crash [--rate R] [--workers W] [--lead S] [--crash-after S]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab_kit.api import ApiServer
from lab_kit.api.app import SPOOL_SLOT
from lab_kit.cli_support import run_cli
from lab_kit.drills.report import print_and_save
from lab_kit.harness.api_condition import heal, on_own_broker
from lab_kit.harness.http_load import LoadRun, make_bodies, run_load
from lab_kit.harness.readback import audit
from lab_kit.metrics import percentiles_ms
from lab_kit.output_paths import check_output_path
from lab_kit.producer.spool import Spool
from lab_kit.topics import ensure_topics

NAME = "api-crash"
#: 500 requests/s of each kind, the broker killed 3 s in, every API process 3 s later, 1 s of
#: load after the crash; two workers.
RATE, LEAD_S, CRASH_AFTER_S, TAIL_S, WORKERS = 500.0, 3.0, 3.0, 1.0, 2
WAIT_PATH = "/posts?wait=ack"
#: the crash waits (at most this long) until the API's spool holds posts: on a loaded machine
#: the outage may reach the API after ``crash_after_s``
SPOOL_WAIT_S = 10.0


@dataclass
class CrashSettings:
    rate: float = RATE
    lead_s: float = LEAD_S
    crash_after_s: float = CRASH_AFTER_S
    tail_s: float = TAIL_S
    workers: int = WORKERS

    def validate(self) -> None:
        if not 10 <= self.rate <= 4_000:
            raise ValueError(f"--rate must be between 10 and 4000 (each kind), got {self.rate}")
        for name, value, low, high in (("lead", self.lead_s, 0.5, 60.0),
                                       ("crash-after", self.crash_after_s, 0.5, 60.0),
                                       ("tail", self.tail_s, 0.0, 30.0)):
            if not low <= value <= high:
                raise ValueError(f"--{name} must be between {low:g} and {high:g} s, "
                                 f"got {value}")
        if not 1 <= self.workers <= 8:
            raise ValueError(f"--workers must be between 1 and 8, got {self.workers}")

    @property
    def seconds(self) -> float:
        return self.lead_s + self.crash_after_s + self.tail_s


@dataclass
class Side:
    """One kind of answer: requests, accepted (2xx), other answers, then the read-back."""

    requests: int
    accepted: int
    statuses: dict[str, int]
    delivered_unique: int
    duplicates: int
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    p99_healthy_ms: float | None
    p99_outage_ms: float | None
    lost_ids: list[str] = field(default_factory=list)


@dataclass
class CrashReport:
    """The drill's figures: the two sides, when the faults struck, the recovery."""

    settings: CrashSettings
    topic: str
    plain: Side  # 202: accepted, maybe only in memory
    wait_ack: Side  # 201 from ?wait=ack: acknowledged by Kafka, or fsynced in the spool
    crashed_at_s: float | None
    spool_rows_at_restart: int | None
    drained: bool
    drill: str = NAME

    @property
    def ok(self) -> bool:
        """The promise held: every ``201`` delivered, each once, after a crash that left posts
        in the spool (from either side: a necessary condition, since without them no answer
        can have come from the spool)."""
        d = self.wait_ack
        return (d.accepted > 0 and d.lost == 0 and d.duplicates == 0
                and self.crashed_at_s is not None and bool(self.spool_rows_at_restart)
                and self.drained)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for side in ("plain", "wait_ack"):
            out[side]["lost_ids"] = out[side]["lost_ids"][:20]
        return {**out, "ok": self.ok}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        s = self.settings
        lines = [f"drill {self.drill}: {'OK' if self.ok else 'FAILED'}",
                 f"  {s.rate:g} requests/s of each kind, {s.workers} workers; broker killed "
                 f"{s.lead_s:g} s in, every API process killed (-9) at "
                 f"{self.crashed_at_s} s; the spool files held "
                 f"{self.spool_rows_at_restart} posts for the new API"]
        for label, side in (("202 (accepted, in memory)", self.plain),
                            ("201 ?wait=ack", self.wait_ack)):
            lines.append(
                f"  {label}: {side.accepted} of {side.requests} requests; delivered "
                f"{side.delivered_unique}, lost {side.lost}, duplicates {side.duplicates}; "
                f"answer p50 {side.p50_ms} ms, p99 "
                f"{side.p99_ms} ms (healthy {side.p99_healthy_ms}, outage "
                f"{side.p99_outage_ms}); other answers {side.statuses}")
        return "\n".join(lines)


def _side(run: LoadRun, cfg: dict, topic: str, lead_s: float, crash_s: float | None) -> Side:
    ok = [i for i, st in enumerate(run.statuses) if 200 <= st < 300]
    lat = [run.latencies[i] for i in ok]

    def p99(lo: float, hi: float) -> float | None:
        p = percentiles_ms([run.latencies[i] for i in ok if lo <= run.offsets[i] < hi])
        return None if p["p99_ms"] is None else round(p["p99_ms"], 2)

    rep = audit(cfg, topic, set(run.accepted_ids), timeout_s=120)
    p = percentiles_ms(lat)
    others: dict[str, int] = {}
    for st in run.statuses:
        if not 200 <= st < 300:
            others[str(st)] = others.get(str(st), 0) + 1
    return Side(requests=run.sent, accepted=len(ok), statuses=others,
                delivered_unique=rep.delivered_unique, duplicates=rep.duplicates,
                lost=rep.lost,
                p50_ms=None if p["p50_ms"] is None else round(p["p50_ms"], 2),
                p99_ms=None if p["p99_ms"] is None else round(p["p99_ms"], 2),
                p99_healthy_ms=p99(0.0, lead_s),
                p99_outage_ms=p99(lead_s, crash_s if crash_s is not None else 1e9),
                lost_ids=list(rep.lost_ids))


def _loads(url: str, settings: CrashSettings) -> tuple[dict[str, LoadRun], list[threading.Thread]]:
    """Both open loops, each on a thread of its own, started together."""
    n = int(settings.rate * settings.seconds)
    runs: dict[str, LoadRun] = {}
    threads = []
    for label, path, seed in (("plain", "/posts", 31), ("wait_ack", WAIT_PATH, 37)):
        bodies = make_bodies(n, seed=seed)

        def target(label=label, path=path, bodies=bodies) -> None:
            runs[label] = run_load(url, bodies, settings.rate, settings.seconds,
                                   connections=128, timeout_s=15.0, path=path)

        threads.append(threading.Thread(target=target, name=f"api-crash-{label}", daemon=True))
    for t in threads:
        t.start()
    return runs, threads


def run_crash_drill(settings: CrashSettings | None = None, broker=None,
                    workdir: Path | None = None) -> CrashReport:
    """Run the drill on ``broker`` (default: a one-node broker of its own, purged after)."""
    settings = settings or CrashSettings()
    settings.validate()
    return on_own_broker(NAME, broker, workdir, lambda b, wd: _run(settings, b, wd))


def _run(settings: CrashSettings, broker, wd: Path) -> CrashReport:
    cfg = broker.client_config()
    topic = f"drill.api-crash.{time.strftime('%H%M%S')}.{time.time_ns() % 997}"
    ensure_topics(cfg, names=(topic,), partitions={topic: 3})
    node = broker.node_ids()[0]
    first = ApiServer(topic=topic, spool_dir=wd, workers=settings.workers,
                      bootstrap=broker.bootstrap_servers, verdicts="off",
                      log_path=wd / "api-1.log").start()
    second = None
    crashed_at = None
    try:
        t0 = time.monotonic()
        runs, threads = _loads(first.url, settings)
        time.sleep(max(0.0, t0 + settings.lead_s - time.monotonic()))
        broker.kill(node)
        time.sleep(max(0.0, t0 + settings.lead_s + settings.crash_after_s - time.monotonic()))
        # a crash before the outage reached the spool would test no spooled answer
        first.wait_health(lambda h: bool(h.get("spool_depth")), SPOOL_WAIT_S, every_s=0.05)
        first.crash()
        crashed_at = round(time.monotonic() - t0, 2)
        for t in threads:
            t.join(settings.seconds + 60)
        at_restart = spooled_rows(wd)
        second = ApiServer(topic=topic, spool_dir=wd, workers=settings.workers,
                           bootstrap=broker.bootstrap_servers, verdicts="off",
                           log_path=wd / "api-2.log").start()
        heal(broker, node)
        health = second.wait_drained(timeout_s=180)
        drained = not (health.get("in_flight") or health.get("spool_depth"))
    finally:
        first.stop(timeout_s=5)
        if second is not None:
            second.stop()
        if any(n.state != "running" for n in broker.nodes()):
            heal(broker, None)  # never leave the broker down
    # offsets are measured from the loads' own start (a few ms after t0)
    return CrashReport(
        settings=settings, topic=topic,
        plain=_side(runs["plain"], cfg, topic, settings.lead_s, crashed_at),
        wait_ack=_side(runs["wait_ack"], cfg, topic, settings.lead_s, crashed_at),
        crashed_at_s=crashed_at, spool_rows_at_restart=at_restart, drained=drained)


def spooled_rows(spool_dir: Path) -> int:
    """Posts in every API spool slot of ``spool_dir`` (``api-<n>.spool.db``), counted from the
    files while no API runs: a worker's ``/healthz`` shows only its own slot."""
    total = 0
    for path in sorted(spool_dir.glob(SPOOL_SLOT.format("*"))):
        with Spool(path) as spool:
            total += spool.count()
    return total


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=RATE, help="requests per second of each kind")
    p.add_argument("--workers", type=int, default=WORKERS, help="API worker processes")
    p.add_argument("--lead", type=float, default=LEAD_S, help="seconds of load before the "
                   "broker is killed")
    p.add_argument("--crash-after", type=float, default=CRASH_AFTER_S,
                   help="seconds from the broker's kill to the API's")
    p.add_argument("--json", dest="json_path", default=None)


def main(args: argparse.Namespace) -> int:
    check_output_path(args.json_path, "--json")
    report = run_crash_drill(CrashSettings(
        rate=args.rate, workers=getattr(args, "workers", WORKERS), lead_s=args.lead,
        crash_after_s=getattr(args, "crash_after", CRASH_AFTER_S)))
    return print_and_save(report, args.json_path)


def main_from_drill(args: argparse.Namespace) -> int:
    """``python -m lab_kit drill api-crash ...`` (the shared ``drill`` parser)."""
    ns = argparse.Namespace(rate=args.rate or RATE, workers=WORKERS,
                            lead=args.lead if args.lead is not None else LEAD_S,
                            crash_after=args.outage or CRASH_AFTER_S, json_path=args.json_path)
    return main(ns)


def cli(argv: list[str] | None = None) -> int:
    return run_cli("python -m lab_kit.drills.api_crash", __doc__, add_arguments, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
