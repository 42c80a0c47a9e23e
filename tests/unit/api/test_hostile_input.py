"""The post API under hostile input, in-process and without a broker: the app's HTTP layer
(body, validation, error mapping, metrics) with a stand-in producer (the lifespan, which builds
the real one, is not run). A property-based fuzzer (hypothesis) sends random and nested JSON,
odd unicode, wrong types and hostile post_ids: every answer is 2xx, or a 4xx with the JSON
error body, and the app keeps serving. Then the backpressure contract (503 + Retry-After)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from lab_kit.api.app import PostApi, wait_for_ack
from lab_kit.api.errors import MAX_BODY_BYTES, RETRY_AFTER_BUSY_S, RETRY_AFTER_FULL_S, ApiError
from lab_kit.api.metrics import REJECT_FIELDS
from lab_kit.posts import POST_ID_PATTERN, validate_post
from lab_kit.producer import BackpressureError
from lab_kit.producer.future import Delivery, PostFuture
from lab_kit.producer.spool import SpoolFullError, SpoolLockedError

JSON = {"content-type": "application/json"}


class FakeProducer:
    spool = None
    healthy = True
    in_flight = 0
    kafka_client = "kafka-python"


class FakeAio:
    """What the app calls on the producer: ``submit`` settles at once (acked), or raises."""

    def __init__(self, error: Exception | None = None):
        self.producer, self.error, self.posts = FakeProducer(), error, []

    def submit(self, post):
        if self.error is not None:
            raise self.error
        pf = PostFuture(post, 0.0)
        self.posts.append(post)
        pf.set_result(Delivery(post.post_id, "acked", "posts", 0, len(self.posts)))
        return pf


def make_api(error: Exception | None = None, body_timeout_s: float = 1.0) -> PostApi:
    api = PostApi(variant="async", topic="posts", bootstrap="127.0.0.1:9", spool_dir=None,
                  max_body_bytes=MAX_BODY_BYTES, max_tracked=500, verdicts=False,
                  producer_config=None, freeze_gc=False, body_timeout_s=body_timeout_s)
    api.aio = FakeAio(error)
    return api


API = make_api()
CLIENT = TestClient(API.asgi)  # no `with`: the lifespan (the real producer) is not run


def check_answer(r, body: bytes = b"") -> None:
    """The contract: 2xx, or a 4xx whose body is the JSON error naming field and limit."""
    assert r.status_code < 500, (r.status_code, r.text[:300], body[:200])
    if r.status_code >= 400:
        payload = r.json()
        assert set(payload) == {"error", "field", "limit"}, payload
        assert isinstance(payload["error"], str) and payload["error"]
    else:
        assert r.status_code in (201, 202)
        payload = r.json()
        assert payload["status"] == "accepted"
        assert POST_ID_PATTERN.fullmatch(payload["post_id"])


# --- strategies ----------------------------------------------------------------------------------

ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=300) | st.sampled_from([
    "\u200b", "\u200b\u200c\u200d\ufeff", "\x00\x01\x7f", "\u202e\u2066", "\u3164\u2800",
    "\u0301\u0301", " \t\n", "a\u0000b", "🙂" * 2000, "x" * 5001, "é" * 5000])
HOSTILE_IDS = st.sampled_from([
    "", " ", "../../etc/passwd", "a/b", "a?b=c", "%2e%2e", "p" * 65, "p" * 64, "\u200b",
    "-starts-with-dash", "ok-id.1:2_3", "x" * 100_000, "caf\u00e9", "a b", "\n"]) \
    | st.text(max_size=80)
JSON_LEAF = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
             | st.floats() | ODD_TEXT)
JSON_ANY = st.recursive(JSON_LEAF, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(ODD_TEXT, kids, max_size=4), max_leaves=20)
POST_LIKE = st.fixed_dictionaries({}, optional={
    "user_id": JSON_ANY | st.text(min_size=1, max_size=70), "text": JSON_ANY | ODD_TEXT,
    "post_id": JSON_ANY | HOSTILE_IDS, "created_at": JSON_ANY | st.integers(),
    "media_urls": JSON_ANY | st.lists(ODD_TEXT, max_size=12),
    "lang": JSON_ANY | ODD_TEXT | st.sampled_from(["en", "pt-BR", "x" * 40, "e n"]),
    "reply_to": JSON_ANY | HOSTILE_IDS,
    "k" * 1000: JSON_ANY, "\u202eevil": JSON_ANY})
DEEP = st.integers(1, 60_000).map(lambda n: b"[" * n + b"]" * n) \
    | st.integers(1, 20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
NEARLY_VALID = st.builds(
    lambda text, extra: {"user_id": "user-1", "text": text, **extra},
    st.just("hello") | ODD_TEXT,
    st.fixed_dictionaries({}, optional={
        "post_id": HOSTILE_IDS, "reply_to": HOSTILE_IDS, "lang": ODD_TEXT,
        "media_urls": st.lists(ODD_TEXT, max_size=3),
        "created_at": st.integers() | st.floats() | st.floats(1e9, 1.7e9)}))
BODIES = (POST_LIKE.map(lambda d: json.dumps(d).encode())
          | NEARLY_VALID.map(lambda d: json.dumps(d).encode())
          | JSON_ANY.map(lambda v: json.dumps(v).encode())
          | st.binary(max_size=300) | DEEP
          | st.builds(lambda d, k: json.dumps({**d, k: 1}).encode(), POST_LIKE, ODD_TEXT))


# --- the fuzzer ----------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES, query=st.sampled_from(["", "?wait=ack", "?wait=no", "?x=wait%3Dack",
                                           "?wait=ack&wait=ack", "?wait", "?%ff=%00"]))
def test_fuzzed_bodies_get_2xx_or_a_json_4xx(body, query):
    r = CLIENT.post("/posts" + query, content=body, headers=JSON)
    check_answer(r, body)
    if r.status_code < 300:  # what was accepted is a valid post, with its own status row
        assert validate_post(API.aio.posts[-1].to_dict()) is not None
        assert CLIENT.get("/posts/" + r.json()["post_id"]).status_code == 200


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=NEARLY_VALID)
def test_the_api_accepts_exactly_what_validate_post_accepts(data):
    """Differential: 202 iff the post is valid (and its post_id not taken), else a 4xx naming
    the same field as :func:`validate_post`."""
    api = make_api()
    c = TestClient(api.asgi)
    try:
        validate_post(data)
        error = None
    except ValueError as exc:
        error = exc
    body = json.dumps(data).encode()
    r = c.post("/posts", content=body, headers=JSON)
    check_answer(r)
    if len(body) > MAX_BODY_BYTES:
        assert r.status_code == 413
    elif error is None:
        assert r.status_code == 202, r.text
        assert api.aio.posts[0].to_dict() == {**api.aio.posts[0].to_dict(), **{
            k: v for k, v in data.items() if k != "media_urls" and k != "created_at"}}
        again = c.post("/posts", content=body, headers=JSON)
        assert again.status_code == (409 if "post_id" in data else 202)
    else:
        assert r.status_code == 422 and r.json()["field"] == error.field, (r.text, error)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(content_type=st.text(max_size=40) | st.sampled_from(["application/json; charset=utf-8",
                                                               "APPLICATION/JSON", ""]),
       body=st.binary(max_size=100))
def test_fuzzed_content_types(content_type, body):
    try:
        headers = {"content-type": content_type}
        r = CLIENT.post("/posts", content=body, headers=headers)
    except (UnicodeEncodeError, ValueError):  # httpx refuses the header itself
        return
    check_answer(r, body)


@settings(max_examples=100, deadline=None)
@given(path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"),
                   max_size=120))
def test_fuzzed_paths_and_methods_answer_json(path):
    for method in ("GET", "POST", "DELETE"):
        r = CLIENT.request(method, "/" + path.lstrip("/"), headers=JSON, content=b"{}")
        assert r.status_code < 500
        if r.status_code >= 400:
            assert set(r.json()) == {"error", "field", "limit"}


def test_after_the_fuzzing_the_app_serves_and_labels_stay_fixed():
    for key in ("color", "k" * 60_000, "\u202eevil"):  # unknown keys never become labels
        r = CLIENT.post("/posts", json={"user_id": "u", "text": "hi", key: 1})
        assert r.status_code == 422
    assert len(r.json()["field"]) <= 67  # an unknown key is quoted, cut at 64 characters
    assert CLIENT.get("/healthz").json()["status"] == "ok"
    text = CLIENT.get("/metrics").text
    labels = set(re.findall(r'lab_api_posts_rejected_total\{field="([^"]*)"\}', text))
    assert "unknown" in labels and labels <= REJECT_FIELDS | {"unknown"}, labels
    statuses = set(re.findall(r'lab_api_requests_total\{route="([^"]*)",status="(\d+)"\}', text))
    assert {route for route, _ in statuses} <= {"/posts", "/posts/{post_id}", "/healthz",
                                                 "/metrics", "other"}
    assert all(int(s) < 500 for _, s in statuses), statuses


# --- the cases the issue names -------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "field"), [
    (b"[" * 100_000, 413, "body"),  # over max_body_bytes: refused before it is parsed
    (b"[" * 60_000 + b"]" * 0, 400, "body"),  # RecursionError -> 400, not 500
    (json.dumps({"user_id": "u", "text": "\u200b\u200d\ufeff"}).encode(), 422, "text"),
    (json.dumps({"user_id": "u", "text": "\x00\x07\x1b"}).encode(), 422, "text"),
    (json.dumps({"user_id": "\u2800", "text": "hi"}).encode(), 422, "user_id"),
    (json.dumps({"user_id": "u", "text": "hi", "lang": "x" * 36}).encode(), 422, "lang"),
    (json.dumps({"user_id": "u", "text": "hi", "lang": "en us"}).encode(), 422, "lang"),
    (json.dumps({"user_id": "u", "text": "hi", "reply_to": "p" * 65}).encode(), 422,
     "reply_to"),
    (json.dumps({"user_id": "u", "text": "hi", "created_at": -1}).encode(), 422, "created_at"),
    (json.dumps({"user_id": "u", "text": "hi", "created_at": 10**300}).encode(), 422,
     "created_at"),
    (json.dumps({"user_id": "u", "text": "hi", "created_at": 4e9}).encode(), 422,
     "created_at"),
    (json.dumps({"user_id": "u", "text": "hi", "post_id": "p" * 65}).encode(), 422, "post_id"),
    (json.dumps({"user_id": "u", "text": "hi", "post_id": "../x"}).encode(), 422, "post_id"),
])
def test_named_edge_cases(body, status, field):
    r = CLIENT.post("/posts", content=body, headers=JSON)
    assert (r.status_code, r.json()["field"]) == (status, field), r.text[:200]
    assert r.json()["limit"] is not None


def test_a_taken_post_id_is_refused_and_the_first_post_keeps_its_row():
    api = make_api()
    c = TestClient(api.asgi)
    first = c.post("/posts", json={"user_id": "alice", "text": "mine", "post_id": "dup-1"})
    assert first.status_code == 202
    row = c.get("/posts/dup-1").json()
    second = c.post("/posts", json={"user_id": "mallory", "text": "now mine", "post_id": "dup-1"})
    assert second.status_code == 409 and second.json()["field"] == "post_id"
    assert c.get("/posts/dup-1").json() == row
    assert [p.user_id for p in api.aio.posts] == ["alice"]  # nothing sent for the second


@pytest.mark.parametrize(("query", "expected"), [
    (b"", False), (b"wait=ack", True), (b"x=1&wait=ack", True), (b"nowait=ack", False),
    (b"x=wait%3Dack", False), (b"wait=ack&wait=ack", True)])
def test_wait_is_a_query_parameter_not_a_substring(query, expected):
    assert wait_for_ack(query) is expected


@pytest.mark.parametrize("query", [b"wait=acknowledge", b"wait=", b"wait=ack&wait=no"])
def test_other_wait_values_are_400(query):
    with pytest.raises(ApiError) as info:
        wait_for_ack(query)
    assert (info.value.status, info.value.field) == (400, "wait")


def test_wait_ack_answers_201_with_the_offset():
    r = CLIENT.post("/posts?wait=ack", json={"user_id": "u", "text": "wait for it"})
    assert r.status_code == 201 and r.json()["delivery"] == "acked"


def run_asgi(app, body_parts, delay_s: float, headers=None) -> tuple[int, dict, dict]:
    """One POST /posts whose body arrives in ``body_parts``, ``delay_s`` apart."""
    sent: list[dict] = []
    parts = list(body_parts)

    async def receive():
        await asyncio.sleep(delay_s)
        chunk = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/posts", "query_string": b"",
             "headers": headers or [(b"content-type", b"application/json")]}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), json.loads(sent[1]["body"])


def test_a_slow_body_is_cut_off_with_408():
    api = make_api(body_timeout_s=0.3)
    body = json.dumps({"user_id": "u", "text": "slow"}).encode()
    status, _headers, payload = run_asgi(api.asgi, [bytes([b]) for b in body], 0.05)
    assert status == 408 and payload["field"] == "body"
    status, _headers, _payload = run_asgi(api.asgi, [body[:5], body[5:]], 0.01)
    assert status == 202  # a body split in parts, arriving in time, is fine


# --- backpressure: 503 + Retry-After, never a 500 ------------------------------------------------

@pytest.mark.parametrize(("error", "field", "retry_after"), [
    (SpoolFullError("/s.db", "full", "spool_rows", 1000), "spool_rows", RETRY_AFTER_FULL_S),
    (SpoolFullError("/s.db", "disk full"), "disk", RETRY_AFTER_FULL_S),
    (SpoolLockedError("/s.db", "locked"), "spool", RETRY_AFTER_FULL_S),
    (BackpressureError(10_000, 0.05), "max_in_flight", RETRY_AFTER_BUSY_S),
])
def test_a_post_that_cannot_be_accepted_durably_is_503_with_retry_after(error, field,
                                                                         retry_after):
    c = TestClient(make_api(error).asgi)
    r = c.post("/posts", json={"user_id": "u", "text": "hi"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(retry_after)
    assert r.headers["content-type"] == "application/json"
    assert r.json()["field"] == field and r.json()["error"]
    assert "Traceback" not in r.text
    text = c.get("/metrics").text
    assert f'lab_api_posts_rejected_total{{field="{field}"}} 1.0' in text


def test_an_unexpected_error_is_a_json_500_without_traceback():
    c = TestClient(make_api(ZeroDivisionError("boom")).asgi)
    r = c.post("/posts", json={"user_id": "u", "text": "hi"})
    assert r.status_code == 500 and r.json()["field"] == "server"
    assert "boom" not in r.text and "Traceback" not in r.text
