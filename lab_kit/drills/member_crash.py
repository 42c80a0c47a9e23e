"""``drill member-crash``: kill -9 of a moderation member mid-batch, then of a partition leader.

What "exactly once" means for the moderation pipeline, shown on a live run (issue 20):

* **workload**: posts submitted open-loop through ``AsyncPostProducer`` (with a spool) at
  ``rate`` for ``seconds``;
* **system under test**: the moderation service as two member processes of one consumer
  group (``python -m lab_kit.moderation --processes 2 --guarantee G``), the backend slowed
  a little so that chunks (and, exactly-once, a transaction) are in flight at any moment;
* **nemesis**: ``kill -9`` of one member ``member_kill_s`` into the load (its partitions move
  to the survivor after the session timeout); then ``kill -9`` of the node leading partition
  0 of the results topic, restarted ``outage_s`` later;
* **checker**: the posts topic read back by id (lost, duplicates, order per user); the
  results topic read back the way a downstream service reads it, ``read_committed``: every
  post has a result (lost), how many have two (duplicates), and whether each user's results
  follow the order the user posted in (order violations). A ``read_uncommitted`` reader is
  counted too: it also sees what aborted transactions wrote.

With ``--guarantee exactly-once`` the drill passes only with 0 duplicate results; with
``at-least-once`` duplicates are expected (the killed member's uncommitted work is done
again) and reported. The cluster is three nodes of the drill's own (RF 3,
``min.insync.replicas`` 2; ``$LAB_STATE_DIR/member-crash``, purged at the end).

``python -m lab_kit drill member-crash [--guarantee G] [--client C] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab_kit.drills.producer_drills import leader_of
from lab_kit.drills.report import print_and_save
from lab_kit.harness.api_condition import heal, on_own_broker
from lab_kit.harness.open_loop import run_open_loop
from lab_kit.harness.pipeline import wait_for_group
from lab_kit.harness.readback import audit, keyed_post_ids_in, order_violations
from lab_kit.harness.service_process import ServiceProcess
from lab_kit.machine import run_stamp
from lab_kit.moderation import moderation_results, topic_names
from lab_kit.moderation.backend import ModerationBackend
from lab_kit.moderation.clients import CLIENTS
from lab_kit.moderation.settings import GUARANTEES
from lab_kit.output_paths import check_output_path
from lab_kit.posts import Workload
from lab_kit.producer import AsyncPostProducer
from lab_kit.topics import ensure_topics

NAME = "member-crash"
#: 300 posts/s for 16 s; a member killed 4 s in, the results leader 9 s in, back 4 s later.
RATE, SECONDS, MEMBER_KILL_S, LEADER_KILL_S, OUTAGE_S = 300.0, 16.0, 4.0, 9.0, 4.0
BACKEND_LATENCY_MS = 20.0
RESULTS_TIMEOUT_S = 180.0


@dataclass
class MemberCrashSettings:
    rate: float = RATE
    seconds: float = SECONDS
    member_kill_s: float = MEMBER_KILL_S
    leader_kill_s: float | None = LEADER_KILL_S  # None: no leader kill (any broker will do)
    outage_s: float = OUTAGE_S
    guarantee: str = "exactly-once"
    client: str = "kafka-python"

    def validate(self) -> None:
        if not 10 <= self.rate <= 3000:
            raise ValueError(f"--rate must be between 10 and 3000 posts/s, got {self.rate}")
        if not 5 <= self.seconds <= 300:
            raise ValueError(f"--seconds must be between 5 and 300, got {self.seconds}")
        for name, value in (("member-kill", self.member_kill_s),
                            ("leader-kill", self.leader_kill_s)):
            if value is not None and not 0.5 <= value < self.seconds:
                raise ValueError(f"--{name} must be between 0.5 s and the load's "
                                 f"{self.seconds:g} s, got {value}")
        if not 0.5 <= self.outage_s <= 60:
            raise ValueError(f"--outage must be between 0.5 and 60 s, got {self.outage_s}")
        if self.guarantee not in GUARANTEES:
            raise ValueError(f"--guarantee must be one of {GUARANTEES}, got {self.guarantee!r}")
        if self.client not in CLIENTS:
            raise ValueError(f"--client must be one of {CLIENTS}, got {self.client!r}")


@dataclass
class MemberCrashReport:
    """The drill's figures, every one read back from the topics."""

    settings: MemberCrashSettings
    topic_prefix: str
    submitted: int
    posts_lost: int
    posts_duplicates: int
    posts_out_of_order: int
    results_missing: int  # read_committed: submitted posts with no result
    results_duplicates: int  # read_committed: extra results
    results_out_of_order: int  # read_committed: results behind a newer post of their user
    uncommitted_extra: int  # read_uncommitted: records an aborted transaction left behind
    member_killed: int | None
    member_killed_at_s: float | None
    leader_killed: int | None
    leader_killed_at_s: float | None
    results_complete_after_s: float | None  # from the producer's flush and spool drain
    survivor: dict[str, Any] = field(default_factory=dict)
    missing_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    drill: str = NAME

    @property
    def ok(self) -> bool:
        base = (self.submitted > 0 and self.posts_lost == 0 and self.results_missing == 0
                and self.posts_out_of_order == 0 and self.results_out_of_order == 0
                and self.member_killed_at_s is not None
                and (self.leader_killed_at_s is not None or self.settings.leader_kill_s is None))
        if self.settings.guarantee == "exactly-once":
            return base and self.results_duplicates == 0
        return base

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["missing_ids"] = out["missing_ids"][:20]
        out["duplicate_ids"] = out["duplicate_ids"][:20]
        return {**out, "ok": self.ok}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        s = self.settings
        sv = self.survivor
        return "\n".join([
            f"drill {self.drill} ({s.guarantee}, {s.client}): {'OK' if self.ok else 'FAILED'}",
            f"  {self.submitted} posts at {s.rate:g}/s; member pid {self.member_killed} killed "
            f"(-9) at {self.member_killed_at_s} s; " + (
                "no leader killed" if s.leader_kill_s is None else
                f"leader node {self.leader_killed} of the results killed (-9) at "
                f"{self.leader_killed_at_s} s, back {s.outage_s:g} s later"),
            f"  posts topic: lost {self.posts_lost}, duplicates {self.posts_duplicates}, "
            f"out of order {self.posts_out_of_order}",
            f"  results, read_committed: missing {self.results_missing}, duplicates "
            f"{self.results_duplicates}, out of order {self.results_out_of_order}; every "
            f"post had its result {self.results_complete_after_s} s after the producer had "
            f"flushed (the load over, its spool drained)",
            f"  results, read_uncommitted: {self.uncommitted_extra} more records (of "
            f"transactions that were aborted or are still open)",
            f"  survivor: transactions {sv.get('transactions')}, aborted {sv.get('aborts')}, "
            f"rebalances {sv.get('rebalances')}, commit failures {sv.get('commit_failures')}",
        ])


def run_member_crash_drill(settings: MemberCrashSettings | None = None, broker=None,
                           workdir: Path | None = None) -> MemberCrashReport:
    """Run the drill on ``broker`` (3 nodes or more; default: a 3-node cluster of its own,
    purged after). With ``leader_kill_s=None`` only the member is killed, and any broker will
    do (notebook 10 runs it on the lab's one-node broker)."""
    settings = settings or MemberCrashSettings()
    settings.validate()
    if broker is not None and settings.leader_kill_s is not None and len(broker.nodes()) < 3:
        raise ValueError("member-crash needs a 3-node cluster (RF 3, min.insync.replicas=2)")
    return on_own_broker(NAME, broker, workdir, lambda b, wd: _run(settings, b, wd), nodes=3)


def _wait_for_results(cfg: dict, topic: str, ids: set[str], timeout_s: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if ids <= set(moderation_results(cfg, topic)):
            return round(time.monotonic() - t0, 2)
        time.sleep(1.0)
    return None


def _run(settings: MemberCrashSettings, broker, wd: Path) -> MemberCrashReport:
    cfg = broker.client_config()
    prefix = f"drill.member-crash.{run_stamp()}."
    names = topic_names(prefix)
    ensure_topics(cfg, names=tuple(names.values()),
                  partitions={n: (6 if k in ("posts", "results") else 1)
                              for k, n in names.items()})
    leader = leader_of(cfg, names["results"]) if settings.leader_kill_s is not None else None
    backend = ModerationBackend(state_dir=wd / "backend").start()
    backend.set_faults(latency_ms=BACKEND_LATENCY_MS)
    service = ServiceProcess(
        broker.bootstrap_servers, backend.url, prefix=prefix, group=f"{prefix}moderation",
        processes=2, client=settings.client, log_path=wd / "service.log",
        extra_args=("--guarantee", settings.guarantee, "--no-recheck", "--batch-size", "10",
                    "--concurrency", "4", "--backend-timeout", "2"))
    producer = AsyncPostProducer(broker.bootstrap_servers, names["posts"],
                                 dlq_topic=names["dlq"], spool_path=str(wd / "posts.spool.db"),
                                 **broker.extra_config())
    stopped: dict[str, Any] = {}
    try:
        service.start()
        member = _members_joined(service, cfg, f"{prefix}moderation")[0]
        submitted, events = _load_with_faults(settings, producer, broker, member, leader)
        producer.flush(timeout=60)
        producer.drain_spool(timeout=120)
        done_after = _wait_for_results(cfg, names["results"], set(submitted),
                                       RESULTS_TIMEOUT_S)
    finally:
        producer.close(timeout=30)
        stopped = service.stop()  # reads the members' stop lines: the survivor's counters
        backend.stop()
        if any(n.state != "running" for n in broker.nodes()):
            heal(broker, None)
    return _read_back(settings, cfg, names, submitted, prefix=prefix, member=member,
                      leader=leader, events=events, done_after=done_after,
                      survivor=(stopped.get("members") or [{}])[0])


def _members_joined(service: ServiceProcess, cfg: dict, group: str) -> list[int]:
    """The member pids, once both members are in the group (so the kill lands mid-work)."""
    members = _member_pids(service, timeout_s=30)

    def alive() -> None:
        if not service.alive():
            raise RuntimeError(f"the moderation service exited:\n{service.log_tail()}")

    if not wait_for_group(cfg, group, len(members), 90, check=alive):
        raise TimeoutError(f"the members did not all join group {group} within 90 s:\n"
                           f"{service.log_tail()}")
    return members


def _load_with_faults(settings: MemberCrashSettings, producer, broker, member: int,
                      leader: int | None) -> tuple[list[str], dict[str, float]]:
    """The open loop, with the nemesis on a thread beside it: the member's kill -9, then the
    leader's, healed ``outage_s`` later. Returns the submitted ids (in order) and when each
    fault struck (seconds into the load)."""
    submitted: list[str] = []
    events: dict[str, float] = {}
    t0 = time.monotonic()

    def nemesis() -> None:
        time.sleep(settings.member_kill_s)
        os.kill(member, signal.SIGKILL)  # a member this drill started
        events["member"] = round(time.monotonic() - t0, 2)
        if settings.leader_kill_s is None:
            return
        time.sleep(max(0.0, t0 + settings.leader_kill_s - time.monotonic()))
        broker.kill(leader)
        events["leader"] = round(time.monotonic() - t0, 2)
        time.sleep(settings.outage_s)
        heal(broker, leader)

    thread = threading.Thread(target=nemesis, name="member-crash-nemesis", daemon=True)
    thread.start()

    def submit(post, intended_at: float) -> None:
        producer.submit(post, intended_at=intended_at)
        submitted.append(post.post_id)

    run_open_loop(submit, Workload(seed=41, spam_ratio=0.2, toxic_ratio=0.2).iter_posts(),
                  settings.rate, settings.seconds)
    thread.join(settings.outage_s + settings.seconds + 60)
    return submitted, events


def _read_back(settings: MemberCrashSettings, cfg: dict, names: dict[str, str],
               submitted: list[str], **found: Any) -> MemberCrashReport:
    """The checker: the posts topic by id, the results read_committed and read_uncommitted."""
    posts = audit(cfg, names["posts"], submitted, dlq_topic=names["dlq"])
    committed = moderation_results(cfg, names["results"])
    ids = set(submitted)
    missing = sorted(ids - set(committed))
    dup_ids = sorted(pid for pid, rs in committed.items() if pid in ids and len(rs) > 1)
    late, _users = order_violations(keyed_post_ids_in(cfg, names["results"]), submitted)
    uncommitted = moderation_results({**cfg, "isolation_level": "read_uncommitted"},
                                     names["results"])
    extra = sum(map(len, uncommitted.values())) - sum(map(len, committed.values()))
    events = found["events"]
    return MemberCrashReport(
        settings=settings, topic_prefix=found["prefix"], submitted=len(submitted),
        posts_lost=posts.lost, posts_duplicates=posts.duplicates,
        posts_out_of_order=posts.out_of_order or 0, results_missing=len(missing),
        results_duplicates=sum(len(committed[p]) - 1 for p in dup_ids),
        results_out_of_order=len(late), uncommitted_extra=extra,
        member_killed=found["member"], member_killed_at_s=events.get("member"),
        leader_killed=found["leader"], leader_killed_at_s=events.get("leader"),
        results_complete_after_s=found["done_after"], survivor=found["survivor"],
        missing_ids=missing, duplicate_ids=dup_ids)


def _member_pids(service: ServiceProcess, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in service.log_tail(1 << 16).splitlines():
            if line.startswith("moderation supervisor pid="):
                return [int(x) for x in line.split("members=")[1].split(",")]
        if not service.alive():
            raise RuntimeError(f"the moderation service exited:\n{service.log_tail()}")
        time.sleep(0.2)
    raise TimeoutError(f"the moderation supervisor named no members within {timeout_s:g} s")


def main_from_drill(args: argparse.Namespace) -> int:
    """``python -m lab_kit drill member-crash ...`` (the shared ``drill`` parser)."""
    check_output_path(args.json_path, "--json")
    report = run_member_crash_drill(MemberCrashSettings(
        rate=args.rate or RATE, guarantee=getattr(args, "guarantee", None) or "exactly-once",
        client=getattr(args, "client", None) or "kafka-python",
        outage_s=args.outage or OUTAGE_S))
    return print_and_save(report, args.json_path)
