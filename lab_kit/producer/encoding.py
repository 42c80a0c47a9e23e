"""Turning a post into a Kafka record (key = user id, value = JSON) and back, checked on the
way.

:func:`encode` is on every ``submit()``, so it has a fast path: :func:`looks_plain` accepts the
common, obviously valid :class:`~lab_kit.posts.Post` with a few type and length checks (about
a tenth of :func:`~lab_kit.posts.validate_post`'s cost). Anything it is unsure of gets the full
check, which raises the precise, field-naming error. Same rules either way.

:func:`decode` is its inverse, on every record the moderation stage reads: a value with the
seven fields :meth:`~lab_kit.posts.Post.to_json_bytes` writes becomes a :class:`Post` that
:func:`looks_plain` then accepts; anything else goes through
:meth:`~lab_kit.posts.Post.from_json_bytes`, which names what is wrong.
"""

from __future__ import annotations

import time
from typing import Any

from lab_kit.json_codec import dumps, loads
from lab_kit.posts import (
    BLANK_LETTERS,
    LANG_PATTERN,
    MAX_CREATED_AT_AHEAD_S,
    MAX_LANG_CHARS,
    MAX_MEDIA_URLS,
    MAX_POST_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_URL_CHARS,
    MAX_USER_ID_CHARS,
    MIN_CREATED_AT,
    POST_FIELDS,
    POST_ID_PATTERN,
    RECORD_OVERHEAD_BYTES,
    Post,
    PostValidationError,
    has_visible_char,
    validate_post,
)


def encode(post: Post | dict, max_request_size: int) -> tuple[Post, bytes, bytes]:
    """``(post, key, value)``, or :class:`PostValidationError` naming the field and limit."""
    if not looks_plain(post):
        post = validate_post(post, check_size=False)
    try:
        value = dumps(post)  # what post.to_json_bytes() does, one call less per post
        key = post.key_bytes()
    except UnicodeEncodeError:  # a lone surrogate: let validation name the field
        validate_post(post, check_size=False)
        raise
    size = len(key) + len(value) + RECORD_OVERHEAD_BYTES
    if size > max_request_size:
        raise PostValidationError(
            "size", max_request_size,
            f"encoded post is {size} bytes, over max_request_size {max_request_size}")
    return post, key, value


_FIELDS = ("user_id", "text", "post_id", "created_at", "media_urls", "lang", "reply_to")
if POST_FIELDS != _FIELDS:  # decode builds a Post positionally, in this order
    raise ImportError(f"Post's fields changed to {POST_FIELDS}: update decode() in {__name__}")
_N_FIELDS = len(_FIELDS)


def decode(value: bytes | bytearray | memoryview | None) -> Post:
    """A record's value as a valid :class:`Post`, or :class:`PostValidationError` naming the
    field (what :meth:`Post.from_json_bytes` gives with ``check_size=False``, at about a
    third of its cost for a record :func:`encode` wrote)."""
    if value is not None:
        try:
            doc = loads(value)
        except ValueError:
            doc = None  # not strict JSON: the full path says what it is
        if type(doc) is dict and len(doc) == _N_FIELDS:  # every field: no default fills in
            media = doc.get("media_urls")
            try:  # positional: 0.5 µs less than Post(**doc); _FIELDS guards the order
                post = Post(doc["user_id"], doc["text"], doc["post_id"], doc["created_at"],
                            tuple(media) if type(media) is list else media, doc["lang"],
                            doc["reply_to"])
            except KeyError:  # as many keys as fields, not these: an unknown field
                post = None
            if post is not None and looks_plain(post):
                return post
    return Post.from_json_bytes(value, check_size=False)


def _plain_str(v: Any, limit: int) -> bool:
    return type(v) is str and 0 < len(v) <= limit and has_visible_char(v)


#: At most this many user ids and languages that passed are remembered; then memory restarts.
MAX_REMEMBERED = 65_536
_PLAIN_USERS: set[str] = set()  # set membership, add and clear are atomic under the GIL
_PLAIN_LANGS: set[str] = set()


def _remember(seen: set[str], value: str) -> None:
    if len(seen) >= MAX_REMEMBERED:
        seen.clear()
    seen.add(value)


def _plain_user(u: str) -> bool:
    """The user id's checks, remembered: a user posts many times and the id never changes."""
    if 0 < len(u) <= MAX_USER_ID_CHARS and has_visible_char(u):
        _remember(_PLAIN_USERS, u)
        return True
    return False


def _plain_lang(lang: str) -> bool:
    if len(lang) <= MAX_LANG_CHARS and LANG_PATTERN.fullmatch(lang) is not None:
        _remember(_PLAIN_LANGS, lang)
        return True
    return False


def _plain_id(i: str) -> bool:
    """A post id the pattern accepts: letters, digits and dashes (``p-7-00000001``, a uuid)
    are checked with two string methods; anything else asks the pattern."""
    return ((i.isascii() and i.replace("-", "").isalnum() and i[0] != "-")
            or POST_ID_PATTERN.fullmatch(i) is not None)


def looks_plain(post: Any) -> bool:
    """True for a :class:`Post` that certainly passes validation; False means "check it fully".

    UTF-8 validity is checked by the JSON encoding that follows. A user id or language that
    passed once is remembered (the same rules, checked once per value). A NaN or infinite
    ``created_at`` fails the range comparison, so it needs no check of its own.
    """
    if type(post) is not Post:
        return False
    u, t, i = post.user_id, post.text, post.post_id
    if not (type(u) is str and type(t) is str and type(i) is str
            and (u in _PLAIN_USERS or _plain_user(u)) and 0 < len(t) <= MAX_TEXT_CHARS
            and len(i) <= MAX_POST_ID_CHARS and _plain_id(i)
            # a letter or digit first: visible (has_visible_char's own fast path, inlined)
            and ((t[0].isalnum() and t[0] not in BLANK_LETTERS) or has_visible_char(t))):
        return False
    created = post.created_at
    if type(created) is not float or not (
            MIN_CREATED_AT <= created <= time.time() + MAX_CREATED_AT_AHEAD_S):
        return False
    media, lang, reply_to = post.media_urls, post.lang, post.reply_to
    if type(media) is not tuple or (media and (  # None is no list: validation refuses it
            len(media) > MAX_MEDIA_URLS or not all(_plain_str(m, MAX_URL_CHARS) for m in media))):
        return False
    return ((lang is None or (type(lang) is str and (lang in _PLAIN_LANGS or _plain_lang(lang))))
            and (reply_to is None or (type(reply_to) is str and len(reply_to) <= MAX_POST_ID_CHARS
                                      and _plain_id(reply_to))))
