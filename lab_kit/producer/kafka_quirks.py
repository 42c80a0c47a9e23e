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
"""

from __future__ import annotations

import threading

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError


def force_close(client: KafkaProducer) -> None:
    """Close a kafka-python producer now, failing what it still holds (their errbacks run)."""
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


def is_sender_thread(*clients: KafkaProducer | None) -> bool:
    """Quirk 3: True if the calling thread is the I/O thread of one of these clients."""
    current = threading.current_thread()
    return any(current is getattr(c, "_sender", None) for c in clients if c is not None)
