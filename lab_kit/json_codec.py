"""The data path's JSON: every post, result and backend call is encoded and decoded here.

One library for the whole data path: `msgspec <https://jcristharif.com/msgspec/>`_. Measured
on the lab's own posts (``python -m lab_kit bench json``): it encodes a post about 10x and
decodes it about 5.6x faster than the standard library, and in this lab every post is
encoded three or four times on its way (post, backend call, result, fan-out record) and
decoded by the stage. End to end (``bench pipeline --profile``, README "Headroom") it took
about 30 µs of CPU off each post's ~195. Reports and settings files, read by people and
written once, keep the standard library's ``json`` (indentation, ``default=str``).

:func:`dumps` gives compact UTF-8 bytes, non-ASCII kept as is (what
``json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()`` gives).
:func:`loads` is strict JSON; what it refuses (``NaN``, numbers out of range, ...) raises
:class:`ValueError` like ``json.loads`` does, and :func:`loads_lenient` retries those with
the standard library, which accepts a little more, for a caller that must keep the
standard library's answers to odd input (the post validation names the field either way).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

__all__ = ["dumps", "loads", "loads_lenient"]


def dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON of ``doc`` (dicts, lists, tuples, str, numbers, bools, None, and
    dataclasses as objects of their fields)."""
    return _encoder.encode(doc)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Strict JSON to Python objects; ``ValueError`` if it is not JSON."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc


def loads_lenient(data: bytes | bytearray | memoryview) -> Any:
    """:func:`loads`, and what it refuses retried with the standard library, whose
    exception (``UnicodeDecodeError``, ``json.JSONDecodeError``, ``RecursionError``,
    ``ValueError``) then tells the caller why."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return json.loads(bytes(data).decode("utf-8"))
