"""The failover decisions, branch by branch (pure functions: no broker, no network)."""

from __future__ import annotations

import itertools

import pytest

from lab_kit.producer.failover import (
    TRANSITIONS,
    Action,
    State,
    after_probe,
    after_replay,
    decide_on_error,
)

S = State


@pytest.mark.parametrize(
    ("retriable", "timed_out", "current", "spool", "action", "replace", "outage"),
    [
        # the current client failed retriably: with a spool the broker is deemed away
        (True, False, True, True, Action.SPOOL, False, True),
        (True, False, True, False, Action.FAIL, False, False),
        # an expired batch (timeout): same, and that client must go (kafka_quirks, quirk 2)
        (True, True, True, True, Action.SPOOL, True, True),
        (True, True, True, False, Action.FAIL, True, False),
        # refused for good: re-send alone (its batch-mates fail with it), replace the client
        (False, False, True, True, Action.RESEND_ALONE, True, False),
        (False, False, True, False, Action.RESEND_ALONE, True, False),
        # the post rode on a client that was replaced since: it just goes again
        (True, False, False, True, Action.SPOOL, False, False),
        (False, False, False, True, Action.SPOOL, False, False),
        (True, True, False, False, Action.RESEND_ALONE, False, False),
        (False, False, False, False, Action.RESEND_ALONE, False, False),
    ],
)
def test_decide_on_error(retriable, timed_out, current, spool, action, replace, outage):
    d = decide_on_error(retriable=retriable, timed_out=timed_out, from_current_client=current,
                        has_spool=spool)
    assert (d.action, d.replace_client, d.outage) == (action, replace, outage)


def test_no_error_is_dropped_silently():
    """Every combination ends in an action that settles the post somewhere."""
    for r, t, c, s in itertools.product([True, False], repeat=4):
        d = decide_on_error(retriable=r, timed_out=t, from_current_client=c, has_spool=s)
        assert d.action in set(Action)
        if d.action is Action.SPOOL:
            assert s, "spooling needs a spool"
        if d.outage:
            assert d.action is Action.SPOOL


@pytest.mark.parametrize(
    ("state", "answers", "stalled", "expected"),
    [
        (S.SENDING, True, False, S.SENDING),
        (S.SENDING, False, False, S.SPOOLING),
        (S.SENDING, True, True, S.SPOOLING),  # answers, but acks stopped coming
        (S.SPOOLING, False, False, S.SPOOLING),
        (S.SPOOLING, True, False, S.REPLAYING),
        (S.SPOOLING, True, True, S.SPOOLING),
        (S.REPLAYING, True, False, S.REPLAYING),
        (S.REPLAYING, False, False, S.SPOOLING),
    ],
)
def test_after_probe(state, answers, stalled, expected):
    assert after_probe(state, answers=answers, stalled=stalled) is expected


@pytest.mark.parametrize(
    ("state", "empty", "failed", "expected"),
    [
        (S.REPLAYING, True, False, S.SENDING),
        (S.REPLAYING, False, False, S.REPLAYING),  # more to replay next round
        (S.REPLAYING, False, True, S.SPOOLING),
        (S.SENDING, True, False, S.SENDING),
    ],
)
def test_after_replay(state, empty, failed, expected):
    assert after_replay(state, spool_empty=empty, failed=failed) is expected


def test_every_decision_is_an_allowed_transition():
    for state, answers, stalled in itertools.product(S, [True, False], [True, False]):
        new = after_probe(state, answers=answers, stalled=stalled)
        assert new is state or (state, new) in TRANSITIONS
    for state in (S.REPLAYING,):
        for empty, failed in itertools.product([True, False], repeat=2):
            new = after_replay(state, spool_empty=empty, failed=failed)
            assert new is state or (state, new) in TRANSITIONS


def test_sending_is_reached_only_through_an_empty_spool():
    """The one way back to direct sends is a replay that found the spool empty."""
    into_sending = {old for old, new in TRANSITIONS if new is S.SENDING}
    assert into_sending == {S.REPLAYING}
    assert after_replay(S.REPLAYING, spool_empty=False, failed=False) is not S.SENDING
