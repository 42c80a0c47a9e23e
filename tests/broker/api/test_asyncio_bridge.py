"""The asyncio bridge (lab_kit.aio) on the real broker: deliveries come back on the loop's
thread, errors raise at once, a dead broker spools, flush/close run off the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lab_kit.machine import free_port
from lab_kit.posts import Post, PostValidationError, Workload
from lab_kit.producer import AsyncPostProducer
from lab_kit.producer.asyncio_bridge import AioPostProducer, submit_async, wrap_future

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def test_submit_async_returns_the_delivery_on_the_loop_thread(bootstrap, created_topic):
    topic_name = created_topic
    async def main():
        loop_thread = threading.get_ident()
        aio = await AioPostProducer.create(bootstrap, topic_name, dlq_topic=None)
        seen_threads = set()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        posts = Workload(seed=5).posts(200)
        futs = []
        for p in posts:
            f = wrap_future(aio.submit(p))
            f.add_done_callback(lambda _f: seen_threads.add(threading.get_ident()))
            futs.append(f)
        deliveries = await asyncio.gather(*futs)
        one = await aio.submit_async(Post(user_id="u", text="one more"))
        t.cancel()
        assert await aio.flush() is True
        report = await aio.close()
        return loop_thread, seen_threads, deliveries, one, ticks, report

    loop_thread, seen, deliveries, one, ticks, report = asyncio.run(main())
    assert {d.outcome for d in deliveries} == {"acked"} and one.outcome == "acked"
    assert all(d.offset is not None for d in deliveries)
    assert seen == {loop_thread}  # completed on the loop, not on kafka-python's sender thread
    assert ticks > 0  # the loop kept running while the posts were in flight
    assert report.lost == 0 and report.acked == 201


def test_invalid_post_raises_at_once(bootstrap, created_topic):
    topic_name = created_topic
    async def main():
        p = AsyncPostProducer(bootstrap, topic_name, dlq_topic=None)
        try:
            with pytest.raises(PostValidationError) as err:
                await submit_async(p, {"user_id": "u", "text": "x" * 6000})
            return err.value
        finally:
            p.close()

    assert asyncio.run(main()).field == "text"


def test_broker_unreachable_spools_without_blocking_the_loop(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def main():
        aio = await AioPostProducer.create(dead, "posts", spool_path=str(tmp_path / "s.db"),
                                           dlq_topic=None)
        d = await aio.submit_async(Post(user_id="u", text="while the broker is away"))
        spooled = len(aio.producer.spool)
        report = await aio.close(timeout=2)
        return d, spooled, report

    d, spooled, report = asyncio.run(main())
    assert d.outcome == "spooled" and spooled == 1
    assert report.lost == 0 and report.spooled_pending == 1
