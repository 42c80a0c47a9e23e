"""StreamSocial posts: the message model, its validation, a synthetic workload
and the open-loop schedule (the driver that keeps to it is
:func:`lab_kit.harness.open_loop.run_open_loop`).

A post travels to Kafka as

* key   = ``user_id`` in UTF-8 (same user -> same partition -> per-user ordering)
* value = the post as compact UTF-8 JSON (see :meth:`Post.to_json_bytes`)

Nothing in this module talks to Kafka; it is plain Python so it can be tested
without a broker.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import time
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from lab_kit import json_codec

# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------

MAX_TEXT_CHARS = 5000
MAX_USER_ID_CHARS = 64
MAX_MEDIA_URLS = 10
MAX_URL_CHARS = 2048
#: ``post_id`` and ``reply_to``: 1-64 characters of ``A-Z a-z 0-9 . _ : -``, starting with a
#: letter or digit (ids travel in URLs: ``GET /posts/{post_id}``). Generated ids (uuid4 hex,
#: the workload's ``p-42-00000001``) fit.
MAX_POST_ID_CHARS = 64
POST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
#: ``lang``: a language tag such as ``en`` or ``pt-BR`` (BCP 47's shape), at most 35 characters.
MAX_LANG_CHARS = 35
LANG_PATTERN = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")
#: ``created_at``: epoch seconds from 2000-01-01 to a day ahead of this machine's clock.
MIN_CREATED_AT = 946_684_800.0
MAX_CREATED_AT_AHEAD_S = 86_400.0
#: an unknown field's name is quoted at most this long in the error
MAX_FIELD_NAME_CHARS = 64

#: kafka-python's default ``max_request_size`` (1 MiB).
DEFAULT_MAX_REQUEST_SIZE = 1_048_576

#: Allowance for the record batch header and per-record framing. kafka-python
#: estimates 61 (batch header) + 21 (record overhead) + a few varint bytes, so
#: 128 is a safe upper bound for a record without headers.
RECORD_OVERHEAD_BYTES = 128


class PostValidationError(ValueError):
    """A post broke a rule. ``field`` names what is wrong, ``limit`` the rule.

    Example message: ``text: 5123 characters exceeds the limit of 5000``.
    """

    def __init__(self, field: str, limit: str | int | None, problem: str) -> None:
        self.field = field
        self.limit = limit
        message = f"{field}: {problem}"
        if limit is not None and str(limit) not in problem:
            message += f" (limit: {limit})"
        super().__init__(message)


# ---------------------------------------------------------------------------
# The post
# ---------------------------------------------------------------------------


def _new_post_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Post:
    """One StreamSocial post. The constructor does not validate: use
    :func:`validate_post` (or :meth:`from_dict`) for data you did not build yourself."""

    user_id: str
    text: str
    post_id: str = field(default_factory=_new_post_id)
    created_at: float = field(default_factory=time.time)  # epoch seconds
    media_urls: tuple[str, ...] = ()
    lang: str | None = None
    reply_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-friendly dict (``media_urls`` becomes a list)."""
        return {
            "post_id": self.post_id,
            "user_id": self.user_id,
            "text": self.text,
            "created_at": self.created_at,
            "media_urls": list(self.media_urls),
            "lang": self.lang,
            "reply_to": self.reply_to,
        }

    def to_json_bytes(self) -> bytes:
        """The Kafka value: compact UTF-8 JSON, the fields in the order above (the same
        document as :meth:`to_dict`, encoded straight from the dataclass: no dict per post)."""
        return json_codec.dumps(self)

    def key_bytes(self) -> bytes:
        """The Kafka key: ``user_id`` in UTF-8, so one user's posts stay in order."""
        return self.user_id.encode("utf-8")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Post:
        """Build a post from a dict, validating it (see :func:`validate_post`)."""
        return validate_post(d)

    @classmethod
    def from_json_bytes(cls, b: bytes | bytearray | memoryview | None, *,
                        check_size: bool = True) -> Post:
        """Decode a Kafka value. Anything that is not a valid post raises
        :class:`PostValidationError` (``field="value"`` if it is not a JSON object).

        ``check_size=False`` skips the producer-side size limit: a consumer reads records
        the broker already accepted, and re-encoding each post only to measure it costs
        more than the rest of the validation."""
        limit = "UTF-8 JSON object"
        if b is None:
            raise PostValidationError("value", limit, "record has no value")
        try:
            data = json_codec.loads_lenient(b)
        except UnicodeDecodeError as exc:
            raise PostValidationError("value", limit, f"not valid UTF-8 ({exc.reason})") from exc
        except json.JSONDecodeError as exc:
            raise PostValidationError("value", limit, f"not JSON ({exc.msg})") from exc
        except RecursionError as exc:  # [[[[... nested deeper than the parser's stack
            raise PostValidationError("value", limit, "nested too deeply") from exc
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise PostValidationError("value", limit, f"not JSON ({exc})") from exc
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise PostValidationError("value", limit, f"JSON {kind} is not an object")
        return validate_post(data, check_size=check_size)


POST_FIELDS = tuple(f.name for f in fields(Post))


def encoded_size(post: Post) -> int:
    """Bytes the post will count for against the producer's ``max_request_size``."""
    return len(post.key_bytes()) + len(post.to_json_bytes()) + RECORD_OVERHEAD_BYTES


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PostValidationError(
            name, "valid UTF-8", f"cannot be encoded as valid UTF-8 ({exc.reason})"
        ) from exc


#: Letters that draw nothing (Hangul fillers, the blank Braille pattern): not "visible".
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_char(value: str) -> bool:
    """True if ``value`` shows something: one character that is not whitespace, a control or
    format character (zero-width space, joiners, BOM, bidi marks...), a lone combining mark,
    unassigned or a blank filler. Stops at the first visible character (normal text: the
    first)."""
    if value and value[0].isalnum() and value[0] not in BLANK_LETTERS:
        return True  # a letter or digit first (categories L* and N*): the usual case, fast
    for ch in value:
        cat = unicodedata.category(ch)
        if cat[0] not in "CZ" and cat not in ("Mn", "Me") and ch not in BLANK_LETTERS:
            return True
    return False


def _check_str(name: str, value: Any, *, max_chars: int | None = None) -> None:
    """A str with a visible character, that encodes to UTF-8 and is not longer than
    max_chars."""
    if not isinstance(value, str):
        raise PostValidationError(name, "str", f"expected str, got {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:  # first: the scans below are O(n)
        raise PostValidationError(
            name, max_chars, f"{len(value)} characters exceeds the limit of {max_chars}"
        )
    if not has_visible_char(value):
        raise PostValidationError(name, "non-empty", "must be a non-empty string (blank, "
                                  "zero-width and control characters do not count)")
    _check_utf8(name, value)


def _check_id(name: str, value: Any) -> None:
    """A post id (``post_id``, ``reply_to``): see :data:`POST_ID_PATTERN`."""
    _check_str(name, value, max_chars=MAX_POST_ID_CHARS)
    if not POST_ID_PATTERN.fullmatch(value):
        raise PostValidationError(name, "A-Z a-z 0-9 . _ : -", "may hold only letters, digits "
                                  "and . _ : - and must start with a letter or digit")


def _check_lang(value: Any) -> None:
    _check_str("lang", value, max_chars=MAX_LANG_CHARS)
    if not LANG_PATTERN.fullmatch(value):
        raise PostValidationError("lang", "language tag", f"{value!r} is not a language tag "
                                  "such as en or pt-BR")


def _check_created_at(created_at: Any) -> None:
    # bool is a subclass of int in Python, so reject it explicitly.
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        raise PostValidationError(
            "created_at", "number", f"expected a number, got {type(created_at).__name__}"
        )
    if isinstance(created_at, float) and not math.isfinite(created_at):
        raise PostValidationError("created_at", "finite number", f"{created_at} is not finite")
    latest = time.time() + MAX_CREATED_AT_AHEAD_S
    if not MIN_CREATED_AT <= created_at <= latest:  # compares big ints without a float
        shown = created_at if isinstance(created_at, float) or abs(created_at) < 10**20 \
            else f"an integer of {len(str(abs(created_at)))} digits"
        raise PostValidationError(
            "created_at", f"{MIN_CREATED_AT:.0f}..now+{MAX_CREATED_AT_AHEAD_S:.0f}",
            f"{shown} is outside 2000-01-01 .. a day from now (epoch seconds)")


def _build_post(data: dict[str, Any], created_at: float, media_urls: Any) -> Post:
    return Post(
        user_id=data["user_id"],
        text=data["text"],
        post_id=data["post_id"] if "post_id" in data else _new_post_id(),
        created_at=float(created_at),
        media_urls=tuple(media_urls),
        lang=data.get("lang"),
        reply_to=data.get("reply_to"),
    )


def validate_post(
    obj: Post | dict[str, Any],
    *,
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
    check_size: bool = True,
) -> Post:
    """Check a Post or a dict and return a clean Post, or raise PostValidationError.

    ``check_size=False`` skips only the final size check (e.g. to send an
    oversized post on purpose and watch the broker reject it).
    """
    if isinstance(obj, Post):
        data = {name: getattr(obj, name) for name in POST_FIELDS}
    elif isinstance(obj, dict):
        data = obj
    else:
        raise PostValidationError(
            "post", "Post or dict", f"expected a Post or a dict, got {type(obj).__name__}"
        )

    for key in data:
        if key not in POST_FIELDS:
            name = str(key)
            if len(name) > MAX_FIELD_NAME_CHARS:
                name = name[:MAX_FIELD_NAME_CHARS] + "..."
            raise PostValidationError(
                name, "known field", f"unknown field (known fields: {', '.join(POST_FIELDS)})"
            )
    for name in ("user_id", "text"):
        if name not in data:
            raise PostValidationError(name, "required", "required field is missing")

    _check_str("user_id", data["user_id"], max_chars=MAX_USER_ID_CHARS)
    _check_str("text", data["text"], max_chars=MAX_TEXT_CHARS)
    if "post_id" in data:
        _check_id("post_id", data["post_id"])

    created_at = data.get("created_at", time.time())
    _check_created_at(created_at)

    media_urls = data.get("media_urls", ())
    if not isinstance(media_urls, list | tuple):
        raise PostValidationError(
            "media_urls", "list of str", f"expected a list, got {type(media_urls).__name__}"
        )
    if len(media_urls) > MAX_MEDIA_URLS:
        raise PostValidationError(
            "media_urls",
            MAX_MEDIA_URLS,
            f"{len(media_urls)} URLs exceeds the limit of {MAX_MEDIA_URLS}",
        )
    for url in media_urls:
        _check_str("media_urls", url, max_chars=MAX_URL_CHARS)

    if data.get("lang") is not None:
        _check_lang(data["lang"])
    if data.get("reply_to") is not None:
        _check_id("reply_to", data["reply_to"])

    if isinstance(obj, Post) and isinstance(obj.media_urls, tuple) \
            and isinstance(obj.created_at, float):
        post = obj  # already a clean, frozen Post: no copy needed
    else:
        post = _build_post(data, created_at, media_urls)
    if check_size:
        size = encoded_size(post)
        if size > max_request_size:
            raise PostValidationError(
                "size",
                max_request_size,
                f"{size} bytes (key + value + {RECORD_OVERHEAD_BYTES} overhead) exceeds "
                f"the limit of {max_request_size}",
            )
    return post


# ---------------------------------------------------------------------------
# Synthetic workload
# ---------------------------------------------------------------------------

#: Mild placeholder insults. A post containing one of these words is "toxic".
BLOCKLIST = ("idiot", "stupid", "trash", "loser", "hate", "moron", "dumb")

#: Link domains used by spam posts. A post mentioning one of these is "spam".
SPAM_DOMAINS = (
    "cheap-pills.example",
    "free-followers.example",
    "crypto-doubler.example",
    "win-a-phone.example",
)

#: Exponent of the Zipf-like user popularity (bigger = more skewed).
ZIPF_EXPONENT = 1.1

# topic -> (subjects, remarks, hashtags)
_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "food": (
        ("a tiny ramen bar near the station", "my first attempt at sourdough",
         "the new taco truck on Fifth Street", "grandma's apple pie recipe",
         "the farmers market this morning"),
        ("The broth was rich and the noodles had exactly the right bite.",
         "It took three tries, but the crust finally came out golden and crisp.",
         "Portions were generous and nothing cost more than twelve dollars.",
         "I swapped the butter for olive oil and honestly nobody noticed.",
         "The café next door does a crème brûlée that is worth the queue."),
        ("#foodie", "#homecooking", "#streetfood"),
    ),
    "travel": (
        ("a weekend trip to Lisbon", "the night train to Vienna",
         "a foggy hike along the coast", "our first family camping trip",
         "a layover that turned into a city tour"),
        ("The trams are slow, but that is half of the charm.",
         "Pack layers: the weather changed four times before noon.",
         "We got lost twice and found the best bakery in town both times.",
         "The view from the ridge made every blister worth it.",
         "Booking early saved us almost half the price. ☀️"),
        ("#travel", "#wanderlust", "#weekendtrip"),
    ),
    "sports": (
        ("last night's derby", "my Sunday five-a-side match", "this marathon training plan",
         "the basketball playoffs", "a beginner climbing class"),
        ("What a comeback in the second half, the whole stadium was on its feet.",
         "My legs are sore, but I finally ran ten kilometres without stopping.",
         "The referee had a tough evening, some calls were really close.",
         "Our keeper saved a penalty in the very last minute!",
         "Stretching before and after makes a bigger difference than I expected."),
        ("#matchday", "#running", "#sports"),
    ),
    "tech": (
        ("the new phone update", "a side project written in Python", "my home server setup",
         "the keyboard I built this weekend", "learning Kafka for work"),
        ("Battery life is noticeably better since the update.",
         "Asynchronous code is tricky until the callbacks finally click.",
         "It runs on an old laptop and uses less power than a light bulb.",
         "Half the fun was soldering the switches, the other half was debugging them.",
         "Reading the docs twice saved me a whole afternoon of guessing."),
        ("#tech", "#python", "#opensource"),
    ),
    "music": (
        ("the jazz trio at the corner café", "a vinyl I found at a flea market",
         "my guitar practice streak", "this summer's festival lineup"),
        ("The bass player stole the show with a ten-minute solo.",
         "The record has a few scratches, which somehow makes it sound warmer.",
         "Day forty of practice and barre chords are finally getting easier.",
         "Three of my favourite bands are playing on the same evening."),
        ("#music", "#livemusic", "#vinyl"),
    ),
    "pets": (
        ("our rescue dog", "the neighbour's very curious cat", "a new aquarium setup",
         "puppy training class"),
        ("She learned to sit in two days and now does it for every single treat.",
         "He spends the whole afternoon watching birds from the window.",
         "The water finally cleared up and the fish look much happier.",
         "Patience and tiny treats work better than any fancy gadget."),
        ("#dogsofstreamsocial", "#catlife", "#pets"),
    ),
}
_OPENERS = ("Just tried", "Still thinking about", "Quick update on", "Honest review of",
            "Spent the whole day on", "Some thoughts on", "Finally got around to")
_CLOSERS = ("Would recommend!", "Anyone else been there?", "More photos soon.",
            "What do you think?", "10/10 would do it again.", "Thanks for reading!")
_SPAM_THINGS = ("followers", "pills", "crypto", "gift cards", "phones")
_SPAM_LINES = (
    "FREE {thing}!!! Click here: http://{domain}/deal?id={n} and buy now, offer ends tonight.",
    "Want more {thing}? click http://{domain}/promo/{n} BUY NOW, only 3 left!!!",
    "Congratulations, you won FREE {thing}! Claim it at http://{domain}/claim?u={n} click fast.",
)
_TOXIC_LINES = (
    "You are such an idiot for liking this.",
    "This is stupid and so is everyone who agrees.",
    "Total trash, please delete your account.",
    "What a loser take, as usual.",
    "I hate people who post things like this.",
    "Only a moron would recommend that.",
    "Dumb post, dumb opinion.",
)
_OVERSIZED_LINE = "Live blog of the city marathon, minute by minute, with every single detail. "
_WORD_RE = re.compile(r"[a-z]+")


def kind_of(post: Post) -> str:
    """Ground-truth label of a workload post, derived from its text:
    ``"oversized"``, ``"spam"``, ``"toxic"`` or ``"normal"``."""
    if len(post.text) > MAX_TEXT_CHARS:
        return "oversized"
    lowered = post.text.lower()
    if any(domain in lowered for domain in SPAM_DOMAINS):
        return "spam"
    if set(_WORD_RE.findall(lowered)) & set(BLOCKLIST):
        return "toxic"
    return "normal"


def oversized_post(
    seed_or_index: int,
    size_bytes: int = 2_000_000,
    *,
    user_id: str | None = None,
    post_id: str | None = None,
) -> Post:
    """A post whose text alone is ``size_bytes`` long, built with the constructor
    (no validation) so it can be sent to show size errors and the DLQ.

    Note: it also breaks MAX_TEXT_CHARS, so ``validate_post(..., check_size=False)``
    still rejects it.
    """
    header = f"[{seed_or_index}] "
    repeats = size_bytes // len(_OVERSIZED_LINE) + 1
    text = (header + _OVERSIZED_LINE * repeats)[:size_bytes]
    return Post(
        user_id=user_id or f"user-{seed_or_index % 1000 + 1:05d}",
        text=text,
        post_id=post_id or f"p-big-{seed_or_index:08d}",
        lang="en",
    )


_MALFORMED_KINDS = ("not_json", "json_array", "missing_user_id", "wrong_type",
                    "invalid_utf8", "huge")


def malformed_records(n: int, seed: int = 0) -> list[bytes]:
    """``n`` raw Kafka values that are NOT valid posts, cycling through:
    not JSON, a JSON array, no user_id, a wrong type, invalid UTF-8 and a huge
    text (about 100 kB: it still fits in a Kafka request, so it can poison a topic)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        kind = _MALFORMED_KINDS[i % len(_MALFORMED_KINDS)]
        number = rng.randrange(1_000_000)
        if kind == "not_json":
            value = f"hello from user {number}, this is not JSON {{".encode()
        elif kind == "json_array":
            value = json.dumps([f"user-{number}", "a post inside a list"]).encode()
        elif kind == "missing_user_id":
            value = json.dumps({"post_id": f"bad-{number}", "text": "who wrote me?"}).encode()
        elif kind == "wrong_type":
            value = json.dumps({"user_id": number, "text": "my user_id is a number"}).encode()
        elif kind == "invalid_utf8":
            # b"\xe9" is 'é' in Latin-1 but an invalid byte sequence in UTF-8.
            value = b'{"user_id":"user-1","text":"caf\xe9 ' + str(number).encode() + b'"}'
        else:  # huge
            text = "spam " * (20 * MAX_TEXT_CHARS // 5)
            value = json.dumps({"user_id": f"user-{number}", "text": text}).encode()
        records.append(value)
    return records


class Workload:
    """Deterministic synthetic StreamSocial traffic.

    The same ``seed`` always gives the same users, texts and post ids
    (``p-{seed}-{i:08d}``); only ``created_at`` comes from the wall clock.
    Users are named ``user-00001`` ... and follow a long tail: lower numbers
    post much more. Spam comes from a few ``bot-NNN`` accounts.
    """

    def __init__(
        self,
        seed: int = 42,
        users: int = 1000,
        spam_ratio: float = 0.05,
        toxic_ratio: float = 0.03,
        oversized_ratio: float = 0.0,
        malformed_ratio: float = 0.0,
        oversized_bytes: int = 2_000_000,
    ) -> None:
        ratios = (spam_ratio, toxic_ratio, oversized_ratio, malformed_ratio)
        if any(r < 0 or r > 1 for r in ratios) or sum(ratios[:3]) > 1:
            raise ValueError("ratios must be in [0, 1] and spam+toxic+oversized <= 1")
        if users < 1:
            raise ValueError("users must be >= 1")
        self.seed = seed
        self.users = users
        self.spam_ratio = spam_ratio
        self.toxic_ratio = toxic_ratio
        self.oversized_ratio = oversized_ratio
        self.malformed_ratio = malformed_ratio
        self.oversized_bytes = oversized_bytes
        self.user_ids = [f"user-{rank:05d}" for rank in range(1, users + 1)]
        weights = [1 / rank**ZIPF_EXPONENT for rank in range(1, users + 1)]
        self._cum_weights = list(itertools.accumulate(weights))

    def iter_labeled(self) -> Iterator[tuple[str, Post]]:
        """Infinite ``(kind, post)`` stream; kind is normal/spam/toxic/oversized."""
        rng = random.Random(self.seed)
        for i in itertools.count():
            post_id = f"p-{self.seed}-{i:08d}"
            user_id = rng.choices(self.user_ids, cum_weights=self._cum_weights)[0]
            r = rng.random()
            if r < self.spam_ratio:
                kind = "spam"
                user_id = f"bot-{rng.randrange(50):03d}"
                line = rng.choice(_SPAM_LINES)
                text = line.format(thing=rng.choice(_SPAM_THINGS),
                                   domain=rng.choice(SPAM_DOMAINS), n=rng.randrange(100_000))
            elif r < self.spam_ratio + self.toxic_ratio:
                kind = "toxic"
                subjects = _TOPICS[rng.choice(list(_TOPICS))][0]
                text = f"Stop posting about {rng.choice(subjects)}. {rng.choice(_TOXIC_LINES)}"
            elif r < self.spam_ratio + self.toxic_ratio + self.oversized_ratio:
                yield "oversized", oversized_post(i, self.oversized_bytes,
                                                  user_id=user_id, post_id=post_id)
                continue
            else:
                kind = "normal"
                text = self._normal_text(rng)

            media: tuple[str, ...] = ()
            if kind == "normal" and rng.random() < 0.2:
                media = tuple(f"https://cdn.streamsocial.example/img/{rng.getrandbits(64):016x}.jpg"
                              for _ in range(rng.randint(1, 3)))
            reply_to = None
            if i > 0 and rng.random() < 0.1:
                reply_to = f"p-{self.seed}-{rng.randrange(max(0, i - 1000), i):08d}"
            lang = "en" if rng.random() < 0.9 else None
            yield kind, Post(user_id=user_id, text=text, post_id=post_id,
                             media_urls=media, lang=lang, reply_to=reply_to)

    @staticmethod
    def _normal_text(rng: random.Random) -> str:
        subjects, remarks, tags = _TOPICS[rng.choice(list(_TOPICS))]
        parts = [f"{rng.choice(_OPENERS)} {rng.choice(subjects)}."]
        parts += rng.sample(remarks, rng.randint(1, 2))
        parts.append(rng.choice(_CLOSERS))
        parts += rng.sample(tags, rng.randint(1, 2))
        return " ".join(parts)

    def labeled_posts(self, n: int) -> list[tuple[str, Post]]:
        """The first ``n`` ``(kind, post)`` pairs (always the same for a seed)."""
        return list(itertools.islice(self.iter_labeled(), n))

    def iter_posts(self) -> Iterator[Post]:
        """Infinite stream of posts (the posts of :meth:`iter_labeled`)."""
        for _, post in self.iter_labeled():
            yield post

    def posts(self, n: int) -> list[Post]:
        """The first ``n`` posts (always the same for a seed)."""
        return list(itertools.islice(self.iter_posts(), n))

    def records(self, n: int) -> list[tuple[str, bytes | None, bytes]]:
        """``n`` ready-to-send ``(kind, key, value)`` records. A share
        ``malformed_ratio`` of them are ``("malformed", None, raw_bytes)``; the
        others are the workload posts, encoded."""
        coin = random.Random(f"malformed-{self.seed}")  # separate stream: posts stay the same
        bad = iter(malformed_records(n, self.seed))
        good = self.iter_labeled()
        out: list[tuple[str, bytes | None, bytes]] = []
        for _ in range(n):
            if coin.random() < self.malformed_ratio:
                out.append(("malformed", None, next(bad)))
            else:
                kind, post = next(good)
                out.append((kind, post.key_bytes(), post.to_json_bytes()))
        return out


# ---------------------------------------------------------------------------
# Open-loop schedule
# ---------------------------------------------------------------------------

def open_loop_schedule(
    rate: float, duration_s: float, max_posts: int | None = None
) -> list[float]:
    """Intended send offsets (seconds from start) at a constant ``rate``:
    ``i / rate`` for every slot before ``duration_s``, at most ``max_posts``."""
    return [i / rate for i in range(_slot_count(rate, duration_s, max_posts))]


def _slot_count(rate: float, duration_s: float, max_posts: int | None) -> int:
    if rate <= 0 or duration_s < 0:
        raise ValueError("rate must be > 0 and duration_s >= 0")
    n = math.ceil(rate * duration_s - 1e-9)  # 1e-9: ignore float noise like 30.000000000004
    if max_posts is not None:
        n = min(n, max(0, max_posts))
    return max(0, n)
