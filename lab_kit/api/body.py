"""``POST /posts``'s body: read it (refused at the limit, before it is read whole) and turn it
into a validated post, or raise :class:`lab_kit.api.errors.ApiError` (400, 413, 415, 422)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lab_kit.api.errors import ApiError
from lab_kit.posts import PostValidationError, validate_post


async def read_body(headers: dict[bytes, bytes], receive: Callable, limit: int) -> bytes:
    """The body, refused (413) before it is read whole when it is over ``limit`` bytes."""
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "content-length", "integer",
                           "content-length: not a number") from None
        if size > limit:
            raise ApiError(413, "body", limit,
                           f"body: {size} bytes exceeds the limit of {limit} bytes")
    chunks, size, more = [], 0, True
    while more:  # chunked uploads: count as they come
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "body", limit, "body: the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body", limit, f"body: more than the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def parse_post(body: bytes, content_type: str) -> Any:
    if not content_type.split(";")[0].strip().lower() == "application/json":
        raise ApiError(415, "content-type", "application/json",
                       f"content-type: {content_type or 'none'} is not application/json")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "body", "UTF-8 JSON object", "body: not valid UTF-8") from None
    except ValueError as exc:
        raise ApiError(400, "body", "UTF-8 JSON object", f"body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body", "JSON object",
                       f"body: a JSON {type(data).__name__} is not an object")
    try:
        return validate_post(data)
    except PostValidationError as exc:
        raise ApiError(422, exc.field, exc.limit, str(exc)) from exc
