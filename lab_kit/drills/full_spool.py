"""``drill api-full-spool``: the broker dies, the API's (small) spool fills, and the API says so.

Backpressure with a contract (issue 22), shown end to end through HTTP:

* **workload**: ``POST /posts`` at a steady ``rate`` through ``python -m lab_kit.api`` (one
  worker, its spool capped at ``spool_rows`` posts);
* **nemesis**: ``kill -9`` of the broker ``lead_s`` into the load, restarted ``outage_s``
  later; the load goes on ``after_s`` more. The broker is one of the drill's own (a one-node
  broker under ``$LAB_STATE_DIR/api-full-spool``, purged at the end), never the lab's;
* **checker**: every answer is ``202`` or ``503``/``429`` (each refusal with ``Retry-After`` and
  the JSON error body), none is another 5xx; the spool did fill (some 503s); once the broker is
  back and the spool drained, the topic is read back: every post answered ``202`` is there
  (``lost`` 0), none of the refused ones.

The result is a :class:`FullSpoolReport`. ``python -m lab_kit drill api-full-spool`` or
``python -m lab_kit.drills.full_spool [--rate R] [--outage S] [--lead S] [--after S]
[--spool-rows N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lab_kit.api import ApiServer
from lab_kit.cli_support import run_cli
from lab_kit.drills.report import print_and_save
from lab_kit.harness.api_condition import heal, on_own_broker
from lab_kit.harness.readback import audit
from lab_kit.output_paths import check_output_path
from lab_kit.topics import ensure_topics

NAME = "api-full-spool"
#: The defaults: 400 posts/s, 1 s before the kill, 6 s of outage (~2,400 posts for a spool
#: of 500), 8 s after the restart (the replay drains the spool, then posts are accepted again).
RATE, LEAD_S, OUTAGE_S, AFTER_S, SPOOL_ROWS = 400.0, 1.0, 6.0, 8.0, 500


@dataclass
class FullSpoolSettings:
    rate: float = RATE
    lead_s: float = LEAD_S
    outage_s: float = OUTAGE_S
    after_s: float = AFTER_S
    spool_rows: int = SPOOL_ROWS

    def validate(self) -> None:
        if not 10 <= self.rate <= 5_000:
            raise ValueError(f"--rate must be between 10 and 5000, got {self.rate}")
        for name, value, low, high in (("lead", self.lead_s, 0.0, 60.0),
                                       ("outage", self.outage_s, 1.0, 120.0),
                                       ("after", self.after_s, 0.0, 60.0)):
            if not low <= value <= high:
                raise ValueError(f"--{name} must be between {low:g} and {high:g} s, "
                                 f"got {value}")
        if not 1 <= self.spool_rows <= 1_000_000:
            raise ValueError(f"--spool-rows must be between 1 and 1000000, "
                             f"got {self.spool_rows}")


@dataclass
class FullSpoolReport:
    """The figures: requests, 202s, 503s, 429s, other 5xx (must be 0), transport errors,
    refusals lacking ``Retry-After`` or the JSON body, the spool's peak depth, and the
    read-back (delivered, duplicates, lost among the 202s; refused posts found on the topic)."""

    settings: FullSpoolSettings
    topic: str
    requests: int
    accepted: int
    refused_503: int
    refused_429: int
    server_errors: int
    transport_errors: int
    other_statuses: dict[str, int]
    refusals_without_retry_after: int
    refusals_without_json: int
    refused_by_field: dict[str, int]
    spool_peak: int
    delivered_unique: int
    duplicates: int
    lost: int
    refused_but_delivered: int
    server_exit_code: int | None
    accepted_after_restart: int = 0
    #: seconds from the broker's restart to the first 202 (None: none came)
    recovered_after_s: float | None = None
    drill: str = NAME
    lost_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.requests > 0 and self.server_errors == 0 and self.transport_errors == 0
                and not self.other_statuses and self.lost == 0
                and self.refused_503 + self.refused_429 > 0
                and self.refusals_without_retry_after == 0 and self.refusals_without_json == 0
                and self.refused_but_delivered == 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lost_ids": self.lost_ids[:20], "ok": self.ok}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        s = self.settings
        return "\n".join([
            f"drill {self.drill}: {'OK' if self.ok else 'FAILED'}",
            f"  {s.rate:g} posts/s; broker killed {s.lead_s:g} s in for {s.outage_s:g} s; "
            f"spool cap {s.spool_rows} posts (peak depth {self.spool_peak})",
            f"  requests {self.requests}: 202 {self.accepted}, 503 {self.refused_503}, "
            f"429 {self.refused_429}, other 5xx {self.server_errors}, transport errors "
            f"{self.transport_errors}, other {self.other_statuses or 0}",
            f"  refusals by field {self.refused_by_field}; without Retry-After "
            f"{self.refusals_without_retry_after}, without JSON body "
            f"{self.refusals_without_json}",
            f"  after the restart: first 202 after {self.recovered_after_s} s, "
            f"{self.accepted_after_restart} accepted",
            f"  read back: delivered {self.delivered_unique} of {self.accepted} accepted, "
            f"duplicates {self.duplicates}, lost {self.lost}; refused yet delivered "
            f"{self.refused_but_delivered}",
        ])


@dataclass
class _Tally:
    statuses: Counter = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    by_field: Counter = field(default_factory=Counter)
    no_retry_after: int = 0
    no_json: int = 0
    spool_peak: int = 0
    healed_at: float | None = None  # time.monotonic() once the broker is back
    after_restart: int = 0
    recovered_after_s: float | None = None

    def record(self, pid: str, r: httpx.Response | None) -> None:
        if r is None:
            self.statuses[0] += 1
            return
        self.statuses[r.status_code] += 1
        if r.status_code in (201, 202):
            self.accepted.append(pid)
            if self.healed_at is not None:
                self.after_restart += 1
                if self.recovered_after_s is None:
                    self.recovered_after_s = round(time.monotonic() - self.healed_at, 2)
        elif r.status_code in (429, 503):
            self.refused.append(pid)
            self.no_retry_after += "retry-after" not in r.headers
            try:
                self.by_field[str(r.json()["field"])] += 1
            except (ValueError, KeyError, TypeError):
                self.no_json += 1


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """``LAB_API_*`` settings for the served API (its child process inherits them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _drive(url: str, settings: FullSpoolSettings, broker, node: int, tally: _Tally) -> None:
    """POST /posts at the settings' rate; kill the broker at lead_s, restart it outage_s later."""
    s = settings
    total = int(s.rate * (s.lead_s + s.outage_s + s.after_s))
    stamp = time.time_ns() % 10**9
    killed_at = healed = None
    with httpx.Client(base_url=url, timeout=30) as c:
        t0 = time.monotonic()
        for i in range(total):
            intended = t0 + i / s.rate
            if (delay := intended - time.monotonic()) > 0:
                time.sleep(delay)
            offset = time.monotonic() - t0
            if killed_at is None and offset >= s.lead_s:
                broker.kill(node)
                killed_at = offset
            if killed_at is not None and not healed and offset >= killed_at + s.outage_s:
                heal(broker, node)  # waits for the broker: the load pauses meanwhile
                healed, tally.healed_at = True, time.monotonic()
            pid = f"fs-{stamp}-{i:06d}"
            try:
                r = c.post("/posts", json={"user_id": f"user-{i % 50:03d}",
                                           "text": f"post {i} while the disk fills",
                                           "post_id": pid})
            except httpx.HTTPError:
                r = None
            tally.record(pid, r)
            if i % 50 == 0:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    depth = c.get("/healthz").json()["spool_depth"]
                    tally.spool_peak = max(tally.spool_peak, depth)
    if not healed:
        heal(broker, node)


def run_full_spool_drill(settings: FullSpoolSettings | None = None, broker=None,
                         workdir: Path | None = None) -> FullSpoolReport:
    """Run the drill on ``broker`` (default: a one-node broker of its own, purged after)."""
    settings = settings or FullSpoolSettings()
    settings.validate()
    return on_own_broker(NAME, broker, workdir, lambda b, wd: _run(settings, b, wd))


def _run(settings: FullSpoolSettings, broker, wd: Path) -> FullSpoolReport:
    cfg = broker.client_config()
    topic = f"drill.full-spool.{time.strftime('%H%M%S')}.{time.time_ns() % 997}"
    ensure_topics(cfg, names=(topic,), partitions={topic: 3})
    node = broker.node_ids()[0]
    tally = _Tally()
    with _env(LAB_API_SPOOL_MAX_ROWS=str(settings.spool_rows)):
        server = ApiServer(topic=topic, spool_dir=wd, bootstrap=broker.bootstrap_servers,
                           verdicts="off", log_path=wd / "api.log").start()
    try:
        _drive(server.url, settings, broker, node, tally)
        server.wait_drained(timeout_s=180)
    finally:
        code = server.stop()
        if any(n.state != "running" for n in broker.nodes()):
            heal(broker, None)  # never leave the broker down
    rep = audit(cfg, topic, tally.accepted, timeout_s=120)
    refused_found = audit(cfg, topic, tally.refused, timeout_s=60).delivered_unique \
        if tally.refused else 0
    st = tally.statuses
    return FullSpoolReport(
        settings=settings, topic=topic, requests=sum(st.values()),
        accepted=st[202] + st[201], refused_503=st[503], refused_429=st[429],
        server_errors=sum(n for s, n in st.items() if s >= 500 and s != 503),
        transport_errors=st[0],
        other_statuses={str(s): n for s, n in st.items()
                        if s not in (0, 201, 202, 429, 503) and s < 500},
        refusals_without_retry_after=tally.no_retry_after, refusals_without_json=tally.no_json,
        refused_by_field=dict(tally.by_field), spool_peak=tally.spool_peak,
        delivered_unique=rep.delivered_unique, duplicates=rep.duplicates, lost=rep.lost,
        refused_but_delivered=refused_found, server_exit_code=code,
        accepted_after_restart=tally.after_restart, recovered_after_s=tally.recovered_after_s,
        lost_ids=rep.lost_ids)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=RATE, help="posts per second")
    p.add_argument("--lead", type=float, default=LEAD_S, help="seconds of load before the kill")
    p.add_argument("--outage", type=float, default=OUTAGE_S, help="seconds the broker is down")
    p.add_argument("--after", type=float, default=AFTER_S, help="seconds of load after it")
    p.add_argument("--spool-rows", type=int, default=SPOOL_ROWS, help="the spool's cap")
    p.add_argument("--json", dest="json_path", default=None)


def main(args: argparse.Namespace) -> int:
    check_output_path(args.json_path, "--json")
    report = run_full_spool_drill(FullSpoolSettings(
        rate=args.rate, lead_s=args.lead, outage_s=args.outage,
        after_s=getattr(args, "after", AFTER_S), spool_rows=getattr(args, "spool_rows",
                                                                    SPOOL_ROWS)))
    return print_and_save(report, args.json_path)


def main_from_drill(args: argparse.Namespace) -> int:
    """``python -m lab_kit drill api-full-spool ...`` (the shared ``drill`` parser)."""
    ns = argparse.Namespace(rate=args.rate or RATE, outage=args.outage or OUTAGE_S,
                            lead=args.lead if args.lead is not None else LEAD_S,
                            after=AFTER_S, spool_rows=SPOOL_ROWS, json_path=args.json_path)
    return main(ns)


def cli(argv: list[str] | None = None) -> int:
    return run_cli("python -m lab_kit.drills.full_spool", __doc__, add_arguments, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
