"""The recheck worker's gate (``ModerationService.healthy``): it opens only when the live path
has spare capacity. "Not shedding" alone was not enough: right after shedding stopped, the
rechecks of the shed posts slowed the service into shedding again (bench pipeline at 15,000
posts/s, README "Headroom"). The queues are filled by hand here; against the broker the
moderation tests in tests/broker/moderation run the same code."""

from __future__ import annotations

import time
from collections import deque

from lab_kit.moderation import recheck as recheck_module
from lab_kit.moderation.clients import Rec
from lab_kit.moderation.recheck import RecheckWorker
from lab_kit.moderation.service import ModerationService
from lab_kit.moderation.settings import (
    GROUP_QUIET_S,
    RECHECK_END_CHECK_S,
    RECHECK_MAX_LIVE_AGE_S,
)


def _service() -> ModerationService:
    svc = ModerationService("127.0.0.1:1", "http://127.0.0.1:1", shed_after_ms=1000)
    svc._assigned_at = time.time() - 60  # owned the partitions for a minute
    return svc


def _waiting(svc: ModerationService, age_s: float) -> None:
    """One post waits in partition 0, produced ``age_s`` ago; then a dispatch round's
    shedding decision (what ``_dispatch`` runs first)."""
    ts = int((time.time() - age_s) * 1000)
    svc._queues[("posts", 0)] = deque([Rec("posts", 0, 0, ts, b"u", b"{}", [])])
    svc._before_dispatch()


def test_gate_opens_only_when_the_oldest_waiting_post_is_young():
    svc = _service()
    assert svc.healthy()  # nothing waiting yet
    _waiting(svc, RECHECK_MAX_LIVE_AGE_S * 2)  # behind, though not shedding (limit 1 s)
    assert not svc.shedding and not svc.healthy()
    _waiting(svc, RECHECK_MAX_LIVE_AGE_S / 5)
    assert svc.healthy()


def test_gate_opens_again_once_nothing_waits():
    svc = _service()
    _waiting(svc, RECHECK_MAX_LIVE_AGE_S * 2)
    assert not svc.healthy()
    svc._queues.clear()  # all dispatched
    svc._before_dispatch()
    assert svc.oldest_age_s == 0.0 and svc.healthy()


def test_gate_stays_shut_while_shedding_or_full():
    svc = _service()
    _waiting(svc, 1.5)  # past shed_after_ms
    assert svc.shedding and not svc.healthy()
    _waiting(svc, 0.7)  # hysteresis: shedding goes on until the oldest is under 0.5 s
    assert svc.shedding and not svc.healthy()
    _waiting(svc, 0.4)  # shedding stops here, but the service is still behind
    assert not svc.shedding and not svc.healthy()
    _waiting(svc, 0.05)
    assert not svc.shedding and svc.healthy()
    svc._full = True  # the stage stopped polling: records wait in the client
    assert not svc.healthy()


# -- the group's part of the gate: moderation.recheck's end offsets ------------------------

class _Ends:
    """Stand-in for the stage's clients: ``fetched_end`` answers from a script (an int is
    partition 0's end alone; a dict gives each owned partition's)."""

    def __init__(self, *ends):
        self.ends, self.reads = list(ends), 0

    def fetched_end(self):
        self.reads += 1
        end = self.ends.pop(0)
        if isinstance(end, Exception):
            raise end
        return {("moderation.recheck", 0): end} if isinstance(end, int) else end


def _worker(monkeypatch, clients, clock):
    worker = RecheckWorker("127.0.0.1:1", "http://127.0.0.1:1", gate=lambda: True)
    worker._clients = clients
    monkeypatch.setattr(recheck_module.time, "monotonic", lambda: clock[0])
    return worker


def test_the_worker_waits_while_any_member_degrades_posts(monkeypatch):
    """The end moving means some member (this one or a peer) wrote a degraded post: the
    worker waits GROUP_QUIET_S after the last move, even with its own service healthy."""
    clock = [1000.0]
    ends = _Ends(50, 50, 80, 80, 80)
    worker = _worker(monkeypatch, ends, clock)
    assert worker._may_start()  # first read: the baseline, nothing moved
    clock[0] += RECHECK_END_CHECK_S
    assert worker._may_start()  # 50 -> 50
    clock[0] += RECHECK_END_CHECK_S
    assert not worker._may_start()  # 50 -> 80: a peer shed 30 posts
    assert worker.stats()["gated_by_group"] == 1
    clock[0] += RECHECK_END_CHECK_S / 2
    assert not worker._may_start() and ends.reads == 3  # read at most once per interval
    clock[0] += GROUP_QUIET_S
    assert worker._may_start()  # 80 -> 80 for GROUP_QUIET_S
    assert worker.stats()["gated_by_group"] == 1


def test_an_unknown_end_leaves_the_service_gate_in_charge(monkeypatch):
    clock = [1000.0]
    worker = _worker(monkeypatch, _Ends(50, RuntimeError("mid-rebalance"), {}, 50), clock)
    assert worker._may_start()
    clock[0] += RECHECK_END_CHECK_S
    assert worker._may_start()  # the read failed: nothing known to have moved
    clock[0] += RECHECK_END_CHECK_S
    assert worker._may_start()  # nothing fetched yet (just reassigned): the same
    clock[0] += RECHECK_END_CHECK_S
    assert worker._may_start()
    worker.gate = lambda: False  # its own service busy: shut, whatever the group does
    clock[0] += RECHECK_END_CHECK_S
    assert not worker._may_start()


def test_a_partition_gained_at_a_rebalance_is_no_move(monkeypatch):
    """Ends are compared partition by partition: a partition the worker gains (with its
    whole history behind its end) is a baseline; a partition it keeps and that grew is a
    move; one it lost is forgotten (taken back later, it is a baseline again)."""
    clock = [1000.0]
    p0, p1 = ("moderation.recheck", 0), ("moderation.recheck", 1)
    ends = _Ends({p0: 50}, {p0: 50, p1: 9000}, {p1: 9000}, {p0: 70, p1: 9000},
                 {p0: 70, p1: 9001})
    worker = _worker(monkeypatch, ends, clock)
    for _ in range(4):  # baseline; p1 gained; p0 lost; p0 taken back (grown meanwhile)
        assert worker._may_start()
        clock[0] += RECHECK_END_CHECK_S
    assert not worker._may_start()  # p1 kept and grew by one: a member degraded a post
    assert worker.stats()["gated_by_group"] == 1
