"""Dead letters: a post Kafka refuses for good goes to ``posts.dlq`` with the reason.

:func:`dlq_record` is the record format (the moderation stage writes it too). It is small on
purpose: a post the broker refused for its size would be refused again in full, so the DLQ
keeps its id, user, the error and a short preview of the text.

Both calls here block until the broker answers, so they run on the producer's dead-letter
worker (a thread of its own, so that spooling failed posts and replacing the client never wait
behind them) and on the health thread (a refused spooled post), never on the caller's thread
or the client's sender thread. They use a second, plain client (no idempotence, no linger, a
few retries): the main client may be the one that failed (see :mod:`.kafka_quirks`, quirk 2),
and a post re-sent alone there would fail again with its batch-mates' error.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from kafka import KafkaProducer

from lab_kit.posts import Post, PostValidationError
from lab_kit.topics import POSTS_DLQ

PREVIEW_CHARS = 200  # characters of the refused post kept in its dead letter


def dlq_record(post: Post | None, error: BaseException | str, *, source_topic: str,
               raw: bytes | None = None, post_id: str | None = None
               ) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for ``posts.dlq``: why a record could not be delivered/parsed."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    error_type = "invalid" if isinstance(error, str) else type(error).__name__
    body: dict[str, Any] = {
        "post_id": post.post_id if post is not None else post_id,
        "user_id": post.user_id if post is not None else None,
        "source_topic": source_topic,
        "error_type": error_type,
        "reason": reason,
        "failed_at": time.time(),
    }
    if post is not None:
        body["size_bytes"] = len(post.to_json_bytes())
        body["preview"] = post.text[:PREVIEW_CHARS]
    elif raw is not None:
        body["size_bytes"] = len(raw)
        body["preview"] = raw[:PREVIEW_CHARS].decode("utf-8", errors="replace")
    key = post.key_bytes() if post is not None else None
    headers = [("error_type", error_type.encode()), ("source_topic", source_topic.encode())]
    return key, json.dumps(body, separators=(",", ":")).encode(), headers


class DeadLetters:
    """Owns the side client. Thread-safe: kafka-python's ``KafkaProducer`` may be shared by
    threads, and the one thing done here besides sending, creating the client on first use
    (and closing it), happens under a lock, so two threads never build two clients."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, dlq_topic: str | None):
        self._config = {**kafka_config, "enable_idempotence": False, "linger_ms": 0,
                        "retries": 3, "max_in_flight_requests_per_connection": 1}
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.client: KafkaProducer | None = None  # created on first use, under _lock
        self._lock = threading.Lock()
        self._closed = False

    def _client(self) -> KafkaProducer:
        client = self.client
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise RuntimeError("dead letters: closed (the producer was closed)")
            if self.client is None:
                self.client = KafkaProducer(**self._config)
            return self.client

    def resend_alone(self, post: Post, timeout_s: float = 30.0) -> Any:
        """Send one post on its own and wait: its record metadata, or the error it gets when
        it is the only record in its batch (then the error is its own fault)."""
        return self._resend(self.topic, post.key_bytes(), post.to_json_bytes(), timeout_s)

    def resend_spooled(self, record: Any, timeout_s: float = 30.0) -> Any:
        """The same for a spooled record the replay's batch got refused with."""
        return self._resend(record.topic, record.key, record.value, timeout_s)

    def _resend(self, topic: str, key: bytes | None, value: bytes, timeout_s: float) -> Any:
        return self._client().send(topic, key=key, value=value).get(timeout=timeout_s)

    def write(self, post: Post, exc: BaseException) -> None:
        """Write an accepted post and the reason it was refused to the DLQ, and wait."""
        self._send(dlq_record(post, exc, source_topic=self.topic))

    def write_spooled(self, record: Any, exc: BaseException) -> None:
        """Same for a spooled record (its raw bytes are kept even if they no longer parse)."""
        try:
            post = Post.from_json_bytes(record.value)
        except PostValidationError:
            post = None
        self._send(dlq_record(post, exc, source_topic=record.topic, raw=record.value,
                              post_id=record.post_id))

    def _send(self, record: tuple) -> None:
        key, value, headers = record
        self._client().send(self.dlq_topic or POSTS_DLQ, key=key, value=value,
                            headers=headers).get(timeout=30)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self.client = self.client, None
        if client is not None:
            client.close(timeout=5)
