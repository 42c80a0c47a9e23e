"""Where kafka-python 3.0 behaves in ways the producer (and the moderation stage) must work
around. Each quirk is named here once, with the workaround next to it; this is also the only
module that touches a private attribute of kafka-python (``KafkaProducer._sender``).

1. **``close(timeout=0)`` does not force-close.** It raises ``KafkaTimeoutError`` from its
   internal ``flush(0)`` before it reaches the sender, so records the client still holds are
   neither sent nor failed. :func:`force_close` tells the sender directly: their errbacks run.
2. **An idempotent producer stops for good** after an expired batch (``delivery_timeout_ms``
   passed), and after a non-retriable error (e.g. ``MESSAGE_TOO_LARGE``) fails every later
   send with the same error. The way out is a new ``KafkaProducer`` (a new producer id):
   :func:`lab_kit.producer.failover.decide_on_error` says when (``replace_client``).
3. **Callbacks run on the sender thread.** ``flush()`` or ``close()`` from inside one waits for
   that very thread: a deadlock. :func:`is_sender_thread` lets the producer refuse it clearly.
4. **A missing topic looks like a dead broker.** With ``auto.create.topics.enable=false`` (the
   lab's brokers), ``partitions_for``/``send`` on a topic that does not exist wait
   ``max_block_ms`` and raise ``KafkaTimeoutError("Failed to update metadata")``, the very
   error of an unreachable broker. :func:`warm_metadata` says which it is
   (:class:`TopicMetadataTimeout`) and closes the client it gives up on.
5. **``bootstrap_connected()`` is true only while the client bootstraps** (kafka-python 3.0:
   ``bootstrap_future is not None and not bootstrap_future.is_done``), so it is false for a
   healthy connected client. Nothing here uses it: the health probe speaks to the brokers
   itself (:func:`lab_kit.producer.failover.bootstrap_probe`).
6. **A frozen broker makes the sender spin.** With the connection open and the requests
   unanswered (the broker ``SIGSTOP``-ed), the sender thread loops without waiting: a whole
   core (measured here: 1.05 of a CPU against 0.12 healthy), and every other thread of the
   process, an API's event loop included, waits for the GIL. The failover drops such a client
   once its posts have stalled and the probe gets no answer
   (:meth:`lab_kit.producer.failover.Failover._replace_if_stuck`): its posts go to the spool,
   and the ones the broker had read before it froze come back twice (duplicates, counted).
7. **``commit_transaction()`` and ``abort_transaction()`` wait with no timeout.** With the
   broker away they never return, and the moderation stage would stop for good.
   :func:`end_transaction` takes the same two steps (queue the end of the transaction, wake
   the sender) and waits at most ``timeout_s``; on ``KafkaTimeoutError`` the stage drops the
   client, and the next one, built with the same ``transactional_id``, aborts the open
   transaction when it initializes (``init_transactions``: Kafka fences the old epoch).
8. **``flush()`` raises ``UnknownError('Future not done')`` after a batch split.** A batch the
   broker refuses as ``MESSAGE_TOO_LARGE`` is split and retried; ``flush()`` then finds the
   old batch's future unfinished and raises at once, while the records are still settling
   (an idempotent client then aborts them all: quirk 2). The replay waits for the records
   themselves (:func:`settle`) instead of taking the raise as "nothing was sent": before,
   one too-large post in the spool held the replay for good, every round the same.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError


def force_close(client: KafkaProducer) -> None:
    """Close a kafka-python producer now, failing what it still holds (their errbacks run).
    A :class:`~lab_kit.producer.librdkafka.LibrdkafkaClient` does it its own way (``purge``)."""
    own = getattr(client, "force_close", None)
    if own is not None:
        own()
        return
    try:
        client.close(timeout=0)
    except KafkaTimeoutError:
        sender = getattr(client, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(5)
        try:
            client.close(timeout=0)  # now only the bookkeeping (metrics, serializers) is left
        except KafkaTimeoutError:
            pass


def end_transaction(client: KafkaProducer, commit: bool, timeout_s: float, *,
                    offsets: dict | None = None, group_metadata: Any = None) -> None:
    """Quirk 7: commit (or abort) ``client``'s transaction, waiting at most ``timeout_s`` in
    all. With ``offsets`` (``{TopicPartition: OffsetAndMetadata}``) a commit first adds the
    consumer group's offsets to the transaction (``send_offsets_to_transaction``). Raises what
    the broker answered (``ProducerFencedError``, ``CommitFailedError``, ...), or
    ``KafkaTimeoutError`` when no answer came in time (the transaction stays open)."""
    manager = client._transaction_manager
    if manager is None:
        raise ValueError("end_transaction: the client has no transactional_id")
    deadline = time.monotonic() + timeout_s
    steps = []
    if commit and offsets:
        steps.append(("send the offsets",
                      lambda: manager.send_offsets_to_transaction(offsets, group_metadata)))
    steps.append(("commit" if commit else "abort",
                  manager.begin_commit if commit else manager.begin_abort))
    for what, start in steps:
        result = start()
        client._sender.wakeup()
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        if not result.wait(timeout_ms=left_ms):
            raise KafkaTimeoutError(f"transaction: could not {what} within {timeout_s:g} s")


def is_sender_thread(*clients: KafkaProducer | None) -> bool:
    """Quirk 3: True if the calling thread is the one that runs callbacks for one of these
    clients: kafka-python's sender thread, or the lab's librdkafka poll thread."""
    current = threading.current_thread()
    return any(current in (getattr(c, "_sender", None), getattr(c, "poll_thread", None))
               for c in clients if c is not None)


class TopicMetadataTimeout(KafkaTimeoutError):
    """Quirk 4: the broker answered, but the topic has no metadata (missing, or no leader)."""


def warm_metadata(client: KafkaProducer, topic: str) -> None:
    """Fetch ``topic``'s partitions so that ``send()`` never waits for them; if they do not
    come within ``max_block_ms``, close ``client`` and raise :class:`TopicMetadataTimeout`.
    Call it on a client just built: building it bootstrapped, so its broker answered."""
    try:
        client.partitions_for(topic)
    except KafkaTimeoutError as exc:  # the client was built: the broker did answer
        force_close(client)
        raise TopicMetadataTimeout(
            f"topic {topic!r} has no metadata on the broker (within max_block_ms): it does not "
            f"exist, and the lab's brokers create no topic on first use; create it with "
            f"`python -m lab_kit topics` or lab_kit.topics.ensure_topics (or it has no leader "
            f"right now)") from exc


def settle(futures: list, timeout_s: float) -> None:
    """Wait until every record future is done, or ``timeout_s`` (quirk 8)."""
    deadline = time.monotonic() + timeout_s
    for kf in futures:
        while not kf.is_done and time.monotonic() < deadline:
            time.sleep(0.005)
