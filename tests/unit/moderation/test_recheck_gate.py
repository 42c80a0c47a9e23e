"""The recheck worker's gate (``ModerationService.healthy``): it opens only when the live path
has spare capacity. "Not shedding" alone was not enough: right after shedding stopped, the
rechecks of the shed posts slowed the service into shedding again (bench pipeline at 15,000
posts/s, README "Headroom"). The queues are filled by hand here; against the broker the
moderation tests in tests/broker/moderation run the same code."""

from __future__ import annotations

import time
from collections import deque

from lab_kit.moderation.clients import Rec
from lab_kit.moderation.service import ModerationService
from lab_kit.moderation.settings import RECHECK_MAX_LIVE_AGE_S


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
