"""The open-loop driver: call ``submit(post, intended_at=t)`` at a fixed rate.

:func:`run_open_loop` keeps to a schedule of intended send times (``i / rate``) whatever
``submit`` costs: a slow send shows up as lag, never as a lower rate (no coordinated
omission). What a run achieved is an :class:`OpenLoopRun`. The schedule itself is
:func:`lab_kit.posts.open_loop_schedule`. The producer drills, the benches and the
experiments all drive the producer through it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lab_kit.posts import Post, _slot_count

#: Sleep only when at least this far ahead of schedule (time.sleep is coarse);
#: closer than that, the send happens right away.
SLEEP_THRESHOLD_S = 0.001


@dataclass(frozen=True, slots=True)
class OpenLoopRun:
    """What an open-loop run achieved. Times come from the driver's clock."""

    target_rate: float
    duration_s: float
    planned: int  # slots in the schedule
    submitted: int
    skipped: int  # planned slots never sent (out of time or out of posts)
    started_at: float
    finished_at: float
    achieved_rate: float  # submitted / max(elapsed, duration_s)
    max_lag_s: float  # worst lateness of a send vs its intended time


def run_open_loop(
    submit: Callable[..., Any],
    posts_iter: Iterable[Post],
    rate: float,
    duration_s: float,
    *,
    max_posts: int | None = None,
    progress: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Any] = time.sleep,
    freeze_gc: bool = True,
) -> OpenLoopRun:
    """Call ``submit(post, intended_at=t)`` at a constant ``rate`` for ``duration_s``.

    Open loop: the schedule does not wait for ``submit``. When ahead it sleeps,
    when behind it sends immediately to catch up (never skips a slot), so slow
    sends show up as lag instead of being hidden (coordinated omission). It
    gives up after ``duration_s`` + grace (max(1 s, 10 %)); unsent slots are
    reported as ``skipped``. ``intended_at`` is an absolute ``clock()`` time.
    """
    planned = _slot_count(rate, duration_s, max_posts)
    interval = 1.0 / rate
    grace = max(1.0, 0.1 * duration_s)
    posts = iter(posts_iter)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # only for a progress bar (it looks for a notebook)

        bar = tqdm(total=planned, unit="post", desc="open loop")

    if freeze_gc:
        # Python's full garbage collection walks every live object: with a pre-built
        # workload of 100k+ posts that is a pause of tens of ms, which shows up as a p99
        # ack latency spike. Freezing moves today's objects out of the collector's sight.
        gc.collect()
        gc.freeze()
    started_at = clock()
    deadline = started_at + duration_s + grace
    submitted = 0
    max_lag = 0.0
    try:
        for i in range(planned):
            intended_at = started_at + i * interval
            now = clock()
            if now > deadline:
                break
            if intended_at - now > SLEEP_THRESHOLD_S:
                sleep(intended_at - now)
                now = clock()
            post = next(posts, None)
            if post is None:
                break
            max_lag = max(max_lag, now - intended_at)
            submit(post, intended_at=intended_at)
            submitted += 1
            if bar is not None and submitted % 500 == 0:
                bar.update(500)
    finally:
        if freeze_gc:
            gc.unfreeze()
        if bar is not None:
            bar.update(submitted - bar.n)
            bar.close()
    finished_at = clock()

    return OpenLoopRun(
        target_rate=rate,
        duration_s=duration_s,
        planned=planned,
        submitted=submitted,
        skipped=planned - submitted,
        started_at=started_at,
        finished_at=finished_at,
        achieved_rate=submitted / max(finished_at - started_at, duration_s, 1e-9),
        max_lag_s=max_lag,
    )
