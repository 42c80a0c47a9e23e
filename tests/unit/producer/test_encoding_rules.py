"""The producer's validation fast path (:func:`looks_plain`) never lets through a post that
the full rules (:func:`validate_post`) refuse: checked by a property-based fuzzer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab_kit import json_codec
from lab_kit.posts import Post, PostValidationError, Workload, validate_post
from lab_kit.producer.encoding import encode, looks_plain

ODD = st.text(max_size=70) | st.sampled_from(["\u200b", "\x00", "\u3164", "p-1", "en", "a/b",
                                              "x" * 65, "pt-BR", "e n", " "])
POSTS = st.builds(
    Post, user_id=ODD, text=ODD, post_id=ODD,
    created_at=st.floats() | st.sampled_from([1.7e9, -1.0, 4e9]),
    media_urls=st.lists(ODD, max_size=2).map(tuple),
    lang=st.none() | ODD, reply_to=st.none() | ODD)


@settings(max_examples=300, deadline=None)
@given(post=POSTS)
def test_the_fast_path_agrees_with_the_full_rules(post):
    try:
        validate_post(post, check_size=False)
        valid = True
    except PostValidationError:
        valid = False
    if looks_plain(post):
        assert valid, post
    try:
        encode(post, 1_048_576)
        assert valid
    except PostValidationError:
        assert not valid


def test_a_plain_post_takes_the_fast_path():
    assert looks_plain(Post(user_id="u-1", text="hello", post_id="p-1", lang="en",
                            reply_to="p-0"))
    assert not looks_plain(Post(user_id="u-1", text="\u200b", post_id="p-1"))
    assert not looks_plain(Post(user_id="u-1", text="hi", post_id="../x"))


def test_remembered_users_and_languages_keep_the_rules(monkeypatch):
    """A user id or language is remembered only once it passed, and the memory is bounded."""
    from lab_kit.producer import encoding

    monkeypatch.setattr(encoding, "MAX_REMEMBERED", 3)
    monkeypatch.setattr(encoding, "_PLAIN_USERS", set())
    monkeypatch.setattr(encoding, "_PLAIN_LANGS", set())
    assert not looks_plain(Post(user_id="\u3164", text="hi", post_id="p-1"))
    assert not looks_plain(Post(user_id="u-1", text="hi", post_id="p-1", lang="e n"))
    assert encoding._PLAIN_USERS == {"u-1"} and encoding._PLAIN_LANGS == set()
    for n in range(5):
        assert looks_plain(Post(user_id=f"u-{n}", text="hi", post_id="p-1", lang="en"))
    assert len(encoding._PLAIN_USERS) <= 3 and encoding._PLAIN_LANGS == {"en"}
    assert not looks_plain(Post(user_id="u-1", text="hi", post_id="p-1", lang="x" * 40))
    # a uuid's hex takes the shortcut past the post-id pattern; odd ids still meet it
    assert looks_plain(Post(user_id="u-1", text="hi", post_id="0f3a" * 8))
    assert not looks_plain(Post(user_id="u-1", text="hi", post_id="é1"))


ID_CHARS = st.text(alphabet=st.sampled_from("aZ09-._:/ \u0663\u00e9\u200b"), max_size=12)


@settings(max_examples=500, deadline=None)
@given(post_id=ID_CHARS)
def test_the_post_id_shortcut_says_what_the_pattern_says(post_id):
    """Letters, digits and dashes skip the pattern (``p-7-00000001``, a uuid); every id gets
    the pattern's verdict either way: a dash first, a non-ASCII digit, an empty id."""
    from lab_kit.posts import POST_ID_PATTERN
    from lab_kit.producer.encoding import _plain_id

    assert _plain_id(post_id) == (POST_ID_PATTERN.fullmatch(post_id) is not None)


def test_the_shortcut_meets_the_ids_it_was_written_for():
    from lab_kit.producer.encoding import _plain_id

    assert _plain_id("p-7-00000001") and _plain_id("3f2a9c1e-0b4d-4e6f-9a1b-2c3d4e5f6a7b")
    assert not _plain_id("-p-1") and not _plain_id("") and not _plain_id("p-\u0663")


@settings(max_examples=200, deadline=None)
@given(post=POSTS)
def test_the_record_value_is_the_documents_json(post):
    """``to_json_bytes`` encodes the dataclass itself: the same document as ``to_dict``."""
    from lab_kit import json_codec

    try:
        value = post.to_json_bytes()
    except (UnicodeEncodeError, TypeError, ValueError):
        return  # a lone surrogate or a float JSON cannot hold: validation refuses those
    assert json_codec.loads_lenient(value) == json_codec.loads_lenient(
        json_codec.dumps(post.to_dict()))


FIELD_VALUES = (ODD | st.none() | st.integers() | st.floats() | st.booleans()
                | st.lists(ODD, max_size=2))
DOCS = st.fixed_dictionaries(
    {"user_id": ODD, "text": ODD, "post_id": ODD,
     "created_at": st.floats() | st.integers() | st.sampled_from([1.7e9, 1_700_000_000]),
     "media_urls": st.lists(ODD, max_size=2) | FIELD_VALUES,
     "lang": st.none() | ODD, "reply_to": st.none() | ODD},
    optional={"extra": FIELD_VALUES})


def _outcome(fn, value):
    try:
        return fn(value)
    except PostValidationError as exc:
        return ("refused", exc.field)


@settings(max_examples=400, deadline=None)
@given(doc=DOCS | st.dictionaries(st.sampled_from(["user_id", "text", "post_id", "lang", "x"]),
                                  FIELD_VALUES, max_size=7))
def test_decode_says_what_from_json_bytes_says(doc):
    """The stage's decode (fast path for the records encode writes) gives the same post, or
    refuses with the same field, as the full decoder, for any JSON object."""
    from lab_kit import json_codec
    from lab_kit.producer.encoding import decode

    try:
        value = json_codec.dumps(doc)
    except (UnicodeEncodeError, TypeError, ValueError):
        return  # not JSON at all (a lone surrogate)
    full = _outcome(lambda v: Post.from_json_bytes(v, check_size=False), value)
    fast = _outcome(decode, value)
    if isinstance(full, Post):
        assert isinstance(fast, Post)
        # a missing post id or created_at is filled in anew (a new id, now) at each decode:
        # compare the rest
        filled = {k: 0 for k in ("post_id", "created_at") if k not in doc}
        full, fast = full.to_dict() | filled, fast.to_dict() | filled
    assert fast == full


def test_decode_takes_what_encode_wrote_and_refuses_what_it_must():
    from lab_kit.producer.encoding import decode

    posts = Workload(seed=5).posts(200)
    assert [decode(encode(p, 1_048_576)[2]) for p in posts] == posts
    for bad, field in ((None, "value"), (b"[1]", "value"), (b"\xff", "value"),
                       (b'{"user_id": "u", "text": "\\u200b"}', "text")):
        try:
            decode(bad)
        except PostValidationError as exc:
            assert exc.field == field
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_a_null_media_list_is_refused_on_both_paths_naming_the_field():
    """``"media_urls": null`` is no list: the full decoder refuses it, and so must the
    stage's fast path (it once took it, a Post with ``media_urls=None``, as hypothesis
    found); a Post built with ``media_urls=None`` is refused before it is encoded."""
    from lab_kit.producer.encoding import decode

    doc = {"user_id": "0", "text": "0", "post_id": "0", "created_at": 946684800.0,
           "media_urls": None, "lang": None, "reply_to": None}
    value = json_codec.dumps(doc)
    for fn in (decode, lambda v: Post.from_json_bytes(v, check_size=False)):
        with pytest.raises(PostValidationError) as info:
            fn(value)
        assert info.value.field == "media_urls"
    post = Post(**{**doc, "media_urls": None})
    with pytest.raises(PostValidationError) as info:
        encode(post, 1_048_576)
    assert info.value.field == "media_urls"
