"""Pure-logic tests for lab_kit.posts (no Kafka needed)."""

import json
import math
import time
from collections import Counter

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from lab_kit.harness.open_loop import OpenLoopRun, run_open_loop
from lab_kit.posts import (
    BLOCKLIST,
    DEFAULT_MAX_REQUEST_SIZE,
    MAX_LANG_CHARS,
    MAX_MEDIA_URLS,
    MAX_POST_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_URL_CHARS,
    MAX_USER_ID_CHARS,
    Post,
    PostValidationError,
    Workload,
    encoded_size,
    kind_of,
    malformed_records,
    open_loop_schedule,
    oversized_post,
    validate_post,
)


def valid_dict(**changes):
    d = {
        "post_id": "p-1",
        "user_id": "user-00001",
        "text": "Just tried the new taco truck. Would recommend!",
        "created_at": 1_700_000_000.5,
        "media_urls": ["https://cdn.streamsocial.example/img/1.jpg"],
        "lang": "en",
        "reply_to": None,
    }
    d.update(changes)
    return d


def without(key):
    d = valid_dict()
    del d[key]
    return d


# --------------------------------------------------------------------------- validation


def test_valid_dict_gives_post():
    post = validate_post(valid_dict(created_at=1_700_000_000))
    assert post.user_id == "user-00001"
    assert post.created_at == 1_700_000_000.0 and isinstance(post.created_at, float)
    assert post.media_urls == ("https://cdn.streamsocial.example/img/1.jpg",)


def test_minimal_dict_gets_defaults():
    before = time.time()
    post = validate_post({"user_id": "u1", "text": "hello"})
    assert post.post_id and post.media_urls == () and post.lang is None
    assert before <= post.created_at <= time.time()


@pytest.mark.parametrize(
    ("data", "field", "limit"),
    [
        (without("user_id"), "user_id", "required"),
        (without("text"), "text", "required"),
        (valid_dict(user_id=""), "user_id", "non-empty"),
        (valid_dict(text="   "), "text", "non-empty"),
        (valid_dict(post_id=""), "post_id", "non-empty"),
        (valid_dict(post_id=None), "post_id", "str"),
        (valid_dict(user_id=123), "user_id", "str"),
        (valid_dict(text=b"bytes"), "text", "str"),
        (valid_dict(text="x" * (MAX_TEXT_CHARS + 1)), "text", MAX_TEXT_CHARS),
        (valid_dict(user_id="u" * (MAX_USER_ID_CHARS + 1)), "user_id", MAX_USER_ID_CHARS),
        (valid_dict(created_at="yesterday"), "created_at", "number"),
        (valid_dict(created_at=True), "created_at", "number"),
        (valid_dict(created_at=math.nan), "created_at", "finite number"),
        (valid_dict(media_urls="https://x.example/a.jpg"), "media_urls", "list of str"),
        (valid_dict(media_urls=["https://x.example/a.jpg"] * (MAX_MEDIA_URLS + 1)),
         "media_urls", MAX_MEDIA_URLS),
        (valid_dict(media_urls=["https://x.example/" + "a" * MAX_URL_CHARS]),
         "media_urls", MAX_URL_CHARS),
        (valid_dict(media_urls=[42]), "media_urls", "str"),
        (valid_dict(lang=5), "lang", "str"),
        (valid_dict(reply_to=""), "reply_to", "non-empty"),
    ],
)
def test_validation_errors_name_field_and_limit(data, field, limit):
    with pytest.raises(PostValidationError) as info:
        validate_post(data)
    assert info.value.field == field
    assert info.value.limit == limit
    assert str(info.value).startswith(f"{field}:")
    assert str(limit) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_text_too_long_message():
    with pytest.raises(PostValidationError) as info:
        validate_post(valid_dict(text="y" * 5123))
    assert str(info.value) == "text: 5123 characters exceeds the limit of 5000"


def test_text_at_limit_is_fine():
    assert len(validate_post(valid_dict(text="z" * MAX_TEXT_CHARS)).text) == MAX_TEXT_CHARS


def test_not_a_post_or_dict():
    with pytest.raises(PostValidationError) as info:
        validate_post(["user", "text"])
    assert info.value.field == "post"


@pytest.mark.parametrize("field", ["text", "user_id", "media_urls", "lang"])
def test_lone_surrogate_is_rejected(field):
    value = "hi \ud800 there"
    data = valid_dict(**{field: [value] if field == "media_urls" else value})
    with pytest.raises(PostValidationError) as info:
        validate_post(data)
    assert info.value.field == field
    assert info.value.limit == "valid UTF-8"
    assert "valid UTF-8" in str(info.value)


def test_unknown_key_is_named():
    with pytest.raises(PostValidationError) as info:
        validate_post(valid_dict(likes=3))
    assert info.value.field == "likes"
    assert "likes" in str(info.value)


def test_validate_accepts_post_and_normalises_media_list():
    post = Post(user_id="u1", text="hello", media_urls=["https://x.example/a.jpg"])
    clean = validate_post(post)
    assert clean.media_urls == ("https://x.example/a.jpg",)
    assert clean.post_id == post.post_id


def test_unvalidated_post_is_checked_too():
    with pytest.raises(PostValidationError) as info:
        validate_post(Post(user_id="", text="hello"))
    assert info.value.field == "user_id"


def test_size_limit():
    post = validate_post(valid_dict())
    size = encoded_size(post)
    assert size == len(post.key_bytes()) + len(post.to_json_bytes()) + 128
    assert validate_post(post, max_request_size=size) == post
    with pytest.raises(PostValidationError) as info:
        validate_post(post, max_request_size=size - 1)
    assert info.value.field == "size"
    assert info.value.limit == size - 1
    assert str(size - 1) in str(info.value)


def test_check_size_false_skips_only_the_size_check():
    post = validate_post(valid_dict(), max_request_size=10, check_size=False)
    assert post.user_id == "user-00001"
    with pytest.raises(PostValidationError) as info:
        validate_post(valid_dict(text="x" * 6000), max_request_size=10, check_size=False)
    assert info.value.field == "text"


def test_encoded_size_is_at_least_kafka_python_estimate():
    post = validate_post(valid_dict(text="é" * MAX_TEXT_CHARS))
    kafka_estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        post.key_bytes(), post.to_json_bytes(), []
    )
    assert encoded_size(post) >= kafka_estimate
    assert encoded_size(post) < DEFAULT_MAX_REQUEST_SIZE


# --------------------------------------------------------------------------- JSON


def test_json_round_trip():
    post = Post(
        user_id="user-00042",
        text="Café ☀️ \"quoted\" and a newline\nhere",
        post_id="p-7",
        created_at=1_700_000_000.25,
        media_urls=("https://cdn.streamsocial.example/img/a.jpg",),
        lang="fr",
        reply_to="p-6",
    )
    value = post.to_json_bytes()
    assert Post.from_json_bytes(value) == post
    assert json.loads(value)["post_id"] == "p-7"
    assert "Café ☀️".encode() in value  # real UTF-8, not \u escapes
    assert b", " not in value and b'": ' not in value  # compact separators
    assert post.key_bytes() == b"user-00042"
    assert Post.from_dict(post.to_dict()) == post


def test_default_post_ids_are_unique():
    assert Post(user_id="u", text="a").post_id != Post(user_id="u", text="a").post_id


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe{}", None, b""]
)
def test_from_json_bytes_rejects_non_objects(raw):
    with pytest.raises(PostValidationError) as info:
        Post.from_json_bytes(raw)
    assert info.value.field == "value"


def test_from_dict_validates():
    with pytest.raises(PostValidationError) as info:
        Post.from_dict({"user_id": "u1"})
    assert info.value.field == "text"


# --------------------------------------------------------------------------- workload


def fingerprint(post):
    return (post.post_id, post.user_id, post.text, post.media_urls, post.lang, post.reply_to)


def test_workload_is_deterministic():
    a = [fingerprint(p) for p in Workload(seed=7).posts(300)]
    b = [fingerprint(p) for p in Workload(seed=7).posts(300)]
    c = [fingerprint(p) for p in Workload(seed=8).posts(300)]
    assert a == b
    assert a[0][0] == "p-7-00000000" and a[299][0] == "p-7-00000299"
    assert [x[2] for x in a] != [x[2] for x in c]


def test_posts_match_iter_posts_prefix():
    w = Workload(seed=3)
    stream = w.iter_posts()
    first = [fingerprint(next(stream)) for _ in range(50)]
    assert first == [fingerprint(p) for p in w.posts(50)]


@pytest.fixture(scope="module")
def labeled():
    return Workload(seed=42).labeled_posts(5000)


def test_users_follow_a_long_tail(labeled):
    counts = Counter(p.user_id for kind, p in labeled if kind != "spam")
    top = sorted(counts.values(), reverse=True)[:100]  # top 10% of 1000 users
    assert sum(top) / sum(counts.values()) > 0.4


def test_average_encoded_size_is_a_few_hundred_bytes(labeled):
    sizes = [len(p.to_json_bytes()) for _, p in labeled]
    assert 150 <= sum(sizes) / len(sizes) <= 600


def test_workload_posts_are_valid(labeled):
    for _, post in labeled:
        assert validate_post(post) == post


def test_spam_and_toxic_proportions(labeled):
    kinds = Counter(kind for kind, _ in labeled)
    assert abs(kinds["spam"] / 5000 - 0.05) < 0.015
    assert abs(kinds["toxic"] / 5000 - 0.03) < 0.012
    assert kinds["normal"] + kinds["spam"] + kinds["toxic"] == 5000


def test_kind_of_matches_labels(labeled):
    assert all(kind_of(post) == kind for kind, post in labeled)
    spam = next(p for k, p in labeled if k == "spam")
    assert "http://" in spam.text and "FREE" in spam.text
    toxic = next(p for k, p in labeled if k == "toxic")
    assert any(word in toxic.text.lower() for word in BLOCKLIST)


def test_kind_of_on_handmade_posts():
    assert kind_of(Post(user_id="u", text="Lovely ramen tonight")) == "normal"
    assert kind_of(Post(user_id="u", text="You absolute idiot")) == "toxic"
    assert kind_of(Post(user_id="u", text="buy at http://cheap-pills.example/x")) == "spam"
    assert kind_of(Post(user_id="u", text="I am a hater of nothing")) == "normal"  # whole words


def test_no_oversized_or_malformed_by_default(labeled):
    assert all(len(p.text) <= MAX_TEXT_CHARS for _, p in labeled)
    assert all(kind != "malformed" for kind, _, _ in Workload(seed=1).records(300))


def test_oversized_posts_in_workload():
    w = Workload(seed=5, oversized_ratio=0.05, oversized_bytes=20_000)
    big = [p for kind, p in w.labeled_posts(400) if kind == "oversized"]
    assert 5 <= len(big) <= 40
    for post in big:
        assert len(post.text) == 20_000 and kind_of(post) == "oversized"
        assert post.post_id.startswith("p-5-")
        with pytest.raises(PostValidationError):
            validate_post(post)


def test_oversized_post_helper():
    post = oversized_post(3)
    assert len(post.to_json_bytes()) > 2_000_000
    assert post.text == oversized_post(3).text
    assert kind_of(post) == "oversized"
    with pytest.raises(PostValidationError) as info:
        validate_post(post)
    assert info.value.field == "text"
    small = oversized_post(4, size_bytes=50_000)
    with pytest.raises(PostValidationError) as info:
        validate_post(small, check_size=False)
    assert info.value.field == "text"  # still breaks MAX_TEXT_CHARS


def test_bad_ratios_rejected():
    with pytest.raises(ValueError):
        Workload(spam_ratio=0.7, toxic_ratio=0.5)
    with pytest.raises(ValueError):
        Workload(malformed_ratio=-0.1)


def test_malformed_records_all_fail():
    records = malformed_records(12, seed=1)
    assert len(records) == 12
    assert records == malformed_records(12, seed=1)
    fields = set()
    for raw in records:
        assert isinstance(raw, bytes) and len(raw) < DEFAULT_MAX_REQUEST_SIZE
        with pytest.raises(PostValidationError) as info:
            Post.from_json_bytes(raw)
        fields.add(info.value.field)
    assert {"value", "user_id", "text"} <= fields


def test_workload_records_mix_in_malformed():
    records = Workload(seed=9, malformed_ratio=0.2).records(500)
    bad = [value for kind, _, value in records if kind == "malformed"]
    assert 60 <= len(bad) <= 140
    for value in bad:
        with pytest.raises(PostValidationError):
            Post.from_json_bytes(value)
    good = [(kind, key, value) for kind, key, value in records if kind != "malformed"]
    expected = Workload(seed=9).posts(len(good))
    for (kind, key, value), post in zip(good, expected, strict=True):
        decoded = Post.from_json_bytes(value)
        assert decoded.post_id == post.post_id and key == post.key_bytes()
        assert kind_of(decoded) == kind


# --------------------------------------------------------------------------- open loop


def test_open_loop_schedule():
    offsets = open_loop_schedule(4, 2.5)
    assert len(offsets) == 10
    assert offsets[0] == 0.0 and offsets[-1] == pytest.approx(2.25)
    assert all(b - a == pytest.approx(0.25) for a, b in zip(offsets, offsets[1:], strict=False))
    assert len(open_loop_schedule(4, 2.5, max_posts=3)) == 3
    assert len(open_loop_schedule(0.1, 30)) == 3  # no extra slot from float noise
    with pytest.raises(ValueError):
        open_loop_schedule(0, 1)


class FakeTime:
    """A clock that only moves when someone sleeps or does (fake) work."""

    def __init__(self, start=100.0):
        self.now = start
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def posts_forever():
    return Workload(seed=1).iter_posts()


def test_run_open_loop_passes_intended_times():
    fake = FakeTime()
    calls = []

    def submit(post, intended_at):
        calls.append((post.post_id, intended_at, fake.now))

    run = run_open_loop(submit, posts_forever(), rate=10, duration_s=1.0,
                        clock=fake.clock, sleep=fake.sleep)
    assert isinstance(run, OpenLoopRun)
    assert run.submitted == 10 and run.skipped == 0 and run.planned == 10
    assert [c[1] for c in calls] == pytest.approx([100.0 + i * 0.1 for i in range(10)])
    assert [c[2] for c in calls] == pytest.approx([c[1] for c in calls])  # sent on time
    assert calls[0][0] == "p-1-00000000"
    assert len(fake.sleeps) == 9
    assert run.max_lag_s == pytest.approx(0.0)
    assert run.achieved_rate == pytest.approx(10.0)


def test_run_open_loop_catches_up_after_slow_submits():
    fake = FakeTime()
    intended = []

    def submit(post, intended_at):
        intended.append(intended_at)
        if len(intended) <= 5:
            fake.now += 0.1  # five slow sends: 0.5 s behind schedule

    run = run_open_loop(submit, posts_forever(), rate=100, duration_s=1.0,
                        clock=fake.clock, sleep=fake.sleep)
    assert run.submitted == 100 and run.skipped == 0
    assert intended == pytest.approx([100.0 + i * 0.01 for i in range(100)])  # no slot skipped
    assert run.max_lag_s == pytest.approx(0.45)  # 6th send: at 0.5 s, intended at 0.05 s
    assert run.finished_at - run.started_at == pytest.approx(0.99)


def test_run_open_loop_gives_up_after_grace():
    fake = FakeTime()

    def submit(post, intended_at):
        fake.now += 0.05  # can only do 20/s but asked for 100/s

    run = run_open_loop(submit, posts_forever(), rate=100, duration_s=1.0,
                        clock=fake.clock, sleep=fake.sleep)
    assert run.planned == 100
    assert run.skipped > 0 and run.submitted + run.skipped == 100
    assert 38 <= run.submitted <= 42
    assert run.finished_at - run.started_at <= 1.0 + 1.0 + 0.05 + 1e-6  # duration+grace+1 send
    assert run.max_lag_s > 1.0
    assert run.achieved_rate < 25


def test_run_open_loop_stops_when_posts_run_out():
    fake = FakeTime()
    posts = Workload(seed=2).posts(3)
    run = run_open_loop(lambda post, intended_at: None, posts, rate=10, duration_s=1.0,
                        max_posts=8, clock=fake.clock, sleep=fake.sleep)
    assert run.planned == 8 and run.submitted == 3 and run.skipped == 5


def test_run_open_loop_real_clock_sustains_10k_per_second():
    sent = []
    run = run_open_loop(lambda post, intended_at: sent.append(intended_at),
                        Workload(seed=3).posts(2000), rate=10_000, duration_s=0.2,
                        progress=True)
    assert run.submitted == 2000 and run.skipped == 0 and len(sent) == 2000
    assert 0.15 <= run.finished_at - run.started_at < 1.2
    assert sent == sorted(sent)


# --------------------------------------------------------------------------- hostile input (#22)


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d\u2060\ufeff", "\x00\x01\x1b\x7f",
                                  "\u202e\u2066\u2069", " \t\u3000\n", "\u0301\u0302",
                                  "\u3164\u2800", "\U000e0041\U000e0042"])
def test_text_of_only_invisible_characters_is_empty(text):
    with pytest.raises(PostValidationError) as info:
        validate_post(valid_dict(text=text))
    assert (info.value.field, info.value.limit) == ("text", "non-empty")


@pytest.mark.parametrize("text", ["a\u200b", "\u200bé", "e\u0301", "🙂", "١٢٣", "漢"])
def test_text_with_one_visible_character_passes(text):
    assert validate_post(valid_dict(text=text)).text == text


@pytest.mark.parametrize(("changes", "field", "limit"), [
    ({"post_id": "p" * (MAX_POST_ID_CHARS + 1)}, "post_id", MAX_POST_ID_CHARS),
    ({"post_id": "../etc/passwd"}, "post_id", "A-Z a-z 0-9 . _ : -"),
    ({"post_id": "a b"}, "post_id", "A-Z a-z 0-9 . _ : -"),
    ({"post_id": "a/b"}, "post_id", "A-Z a-z 0-9 . _ : -"),
    ({"post_id": "café"}, "post_id", "A-Z a-z 0-9 . _ : -"),
    ({"reply_to": "r" * (MAX_POST_ID_CHARS + 1)}, "reply_to", MAX_POST_ID_CHARS),
    ({"reply_to": "x?y"}, "reply_to", "A-Z a-z 0-9 . _ : -"),
    ({"lang": "e" * (MAX_LANG_CHARS + 1)}, "lang", MAX_LANG_CHARS),
    ({"lang": "english language"}, "lang", "language tag"),
    ({"lang": "e"}, "lang", "language tag"),
    ({"created_at": -1.0}, "created_at", "946684800..now+86400"),
    ({"created_at": 10**400}, "created_at", "946684800..now+86400"),
    ({"created_at": time.time() + 2 * 86_400}, "created_at", "946684800..now+86400"),
    ({"created_at": math.inf}, "created_at", "finite number"),
])
def test_caps_on_ids_lang_and_created_at(changes, field, limit):
    with pytest.raises(PostValidationError) as info:
        validate_post(valid_dict(**changes))
    assert (info.value.field, info.value.limit) == (field, limit)
    assert str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize("post_id", ["p-1", "a" * MAX_POST_ID_CHARS, "0123abcdef", "x.y:z_w-1",
                                     "9f1c2b3a4d5e6f708192a3b4c5d6e7f8"])
def test_ids_that_fit(post_id):
    assert validate_post(valid_dict(post_id=post_id, reply_to=post_id)).post_id == post_id


@pytest.mark.parametrize("lang", ["en", "pt-BR", "zh-Hant-TW", "EN"])
def test_language_tags_that_fit(lang):
    assert validate_post(valid_dict(lang=lang)).lang == lang


def test_an_unknown_key_is_quoted_at_most_64_characters():
    with pytest.raises(PostValidationError) as info:
        validate_post(valid_dict(**{"k" * 70_000: 1}))
    assert info.value.field == "k" * 64 + "..."
    assert len(str(info.value)) < 400


def test_deeply_nested_kafka_value_is_a_validation_error():
    with pytest.raises(PostValidationError) as info:
        Post.from_json_bytes(b"[" * 100_000)
    assert info.value.field == "value" and "nested" in str(info.value)
    with pytest.raises(PostValidationError):
        Post.from_json_bytes(b'{"user_id": "u", "text": "t", "created_at": ' + b"9" * 5000 + b"}")


def test_workload_posts_all_pass_the_new_rules():
    for post in Workload(seed=3).posts(2000):
        assert validate_post(post) is post or validate_post(post) == post


def test_the_fast_path_of_has_visible_char_agrees_with_the_full_check():
    """A letter or digit first takes the fast path: for every code point, the full check
    (category, then the blank fillers) says the same."""
    import sys
    import unicodedata

    from lab_kit.posts import BLANK_LETTERS, has_visible_char

    def full(ch: str) -> bool:
        cat = unicodedata.category(ch)
        return cat[0] not in "CZ" and cat not in ("Mn", "Me") and ch not in BLANK_LETTERS

    fast = [chr(c) for c in range(sys.maxunicode + 1)
            if chr(c).isalnum() and chr(c) not in BLANK_LETTERS]
    assert len(fast) > 100_000
    assert [hex(ord(ch)) for ch in fast if not full(ch)] == []
    assert all(has_visible_char(ch) for ch in fast)
    assert not has_visible_char("\u3164x"[:1]) and has_visible_char("\u3164x")
