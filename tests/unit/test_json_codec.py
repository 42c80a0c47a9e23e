"""The data path's JSON: the same bytes the standard library gave, and its errors."""

from __future__ import annotations

import json

import pytest

from lab_kit import json_codec
from lab_kit.posts import Post, Workload


def test_posts_encode_to_the_bytes_the_standard_library_gives():
    for post in Workload(seed=3).posts(300):
        d = post.to_dict()
        assert json_codec.dumps(d) == json.dumps(d, ensure_ascii=False,
                                                 separators=(",", ":")).encode()
        assert Post.from_json_bytes(post.to_json_bytes()) == post


def test_non_ascii_is_kept_as_utf8_not_escaped():
    assert json_codec.dumps({"text": "héllo 🎉"}) == '{"text":"héllo 🎉"}'.encode()


def test_strict_loads_raises_value_error_and_lenient_takes_what_stdlib_takes():
    with pytest.raises(ValueError):
        json_codec.loads(b'{"a": NaN}')
    assert json.dumps(json_codec.loads_lenient(b'{"a": NaN}')) == '{"a": NaN}'
    with pytest.raises(json.JSONDecodeError):
        json_codec.loads_lenient(b"{not json")
