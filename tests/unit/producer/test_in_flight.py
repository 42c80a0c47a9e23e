"""The in-flight set has no lock: adds, discards, ``len`` and snapshots are each one C call on
a dict. Its readers must hold while other threads change it."""

from __future__ import annotations

import sys
import threading
import time

from lab_kit.posts import Post
from lab_kit.producer.future import InFlight, PostFuture


def _futures(n: int, generation: int = 1) -> list[PostFuture]:
    out = []
    for i in range(n):
        pf = PostFuture(Post(user_id="u-1", text="hi", post_id=f"p-{i}"), time.perf_counter())
        pf.generation = generation
        out.append(pf)
    return out


def test_oldest_first_and_the_readers():
    in_flight = InFlight()
    old, new = _futures(1, generation=1), _futures(2, generation=2)
    old[0].intended_at -= 5.0
    for pf in old + new:
        in_flight[pf] = None
    assert len(in_flight) == 3 and in_flight.snapshot() == old + new
    assert in_flight.oldest_age() >= 5.0
    assert in_flight.held_by_older_clients(2) == 1
    in_flight.pop(old[0], None)
    in_flight.pop(old[0], None)  # twice: no error
    assert in_flight.oldest_age() < 5.0 and in_flight.held_by_older_clients(2) == 0
    assert InFlight().oldest_age() == 0.0


def test_the_readers_hold_while_two_threads_change_it():
    """A sender adds and a callback thread discards, as fast as they can, while the health
    thread reads: no "dictionary changed size during iteration" reaches a reader."""
    in_flight = InFlight()
    stop = threading.Event()
    errors: list[BaseException] = []
    pool = _futures(2_000)

    def churn() -> None:
        try:
            while not stop.is_set():
                for pf in pool:
                    in_flight[pf] = None
                for pf in pool:
                    in_flight.pop(pf, None)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython can: races show up
    for t in threads:
        t.start()
    reads = 0
    deadline = time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:
            assert in_flight.oldest_age() >= 0.0
            assert 0 <= in_flight.held_by_older_clients(5) <= len(pool)
            reads += 1
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == [] and reads > 100
