"""``POST /posts``'s body: read it (refused at the limit, before it is read whole; and if it
has not arrived whole within ``timeout_s``) and turn it into a validated post, or raise
:class:`lab_kit.api.errors.ApiError` (400, 408, 413, 415, 422)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from lab_kit.api.errors import BODY_TIMEOUT_S, ApiError
from lab_kit.json_codec import loads_lenient
from lab_kit.posts import PostValidationError, validate_post


async def read_body(headers: dict[bytes, bytes], receive: Callable, limit: int,
                    timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The body, refused (413) before it is read whole when it is over ``limit`` bytes, and
    (408) when it has not arrived whole within ``timeout_s`` (a slow-body client)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(headers, receive, limit)
    except TimeoutError:
        raise ApiError(408, "body", f"{timeout_s:g} s",
                       f"body: not received whole within {timeout_s:g} s") from None


async def _read_body(headers: dict[bytes, bytes], receive: Callable, limit: int) -> bytes:
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
    try:  # msgspec; what it refuses is retried by the standard library, which says why
        data = loads_lenient(body)
    except UnicodeDecodeError:
        raise ApiError(400, "body", "UTF-8 JSON object", "body: not valid UTF-8") from None
    except RecursionError:  # [[[[... deeper than the parser's stack: refused, not a 500
        raise ApiError(400, "body", "UTF-8 JSON object",
                       "body: JSON nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "body", "UTF-8 JSON object", f"body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body", "JSON object",
                       f"body: a JSON {type(data).__name__} is not an object")
    try:
        return validate_post(data)
    except PostValidationError as exc:
        raise ApiError(422, exc.field, exc.limit, str(exc)) from exc
