"""Dead-letter records, and the checker that reads topics back and counts what landed.

The DLQ record is small on purpose: a post the broker refused for its size would be refused
again in full, so the DLQ keeps its id, user, the error and a short preview of the text.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .posts import Post

PREVIEW_CHARS = 200


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
