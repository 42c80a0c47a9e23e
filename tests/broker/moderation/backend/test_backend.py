"""Tests for lab_kit.moderation.rules and lab_kit.moderation.backend (real processes, no mocks)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from lab_kit.moderation.backend import (
    DEFAULT_SETTINGS,
    FAULT_KEYS,
    MAX_BATCH_POSTS,
    SETTING_KEYS,
    BackendBadRequest,
    BackendError,
    BackendGarbage,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    ModerationBackend,
    ModerationBackendError,
    ModerationClient,
    ModerationResult,
)
from lab_kit.moderation.backend.client import _parse_batch, _parse_result
from lab_kit.moderation.rules import (
    BLOCKLIST,
    RepeatTracker,
    Verdict,
    fallback_verdict,
    score_post,
)

SHOUT = "THIS IS THE BEST CONCERT EVER EVERYONE COME NOW"

# =========================================================================================
# rules
# =========================================================================================


@pytest.mark.parametrize(
    ("text", "label", "reason"),
    [
        ("Lovely sunset at the beach today", "approve", None),
        ("you are an idiot", "reject", "blocklist:idiot"),
        ("What a bunch of LOSERS", "reject", "blocklist:loser"),
        ("FREE followers here https://spam.example/x", "spam", "link"),
        ("click now, cheap watches", "spam", "spam_term:cheap"),
        ("see http://a.example and https://b.example", "spam", "link"),
        (SHOUT, "review", "shouting"),
        (SHOUT + " YOU STUPID", "reject", "shouting"),
    ],
)
def test_score_post_labels(text: str, label: str, reason: str | None) -> None:
    v = score_post("u1", text)
    assert v.label == label
    assert 0.0 <= v.score <= 1.0
    if reason is None:
        assert v.reasons == () and v.score == 0.0
    else:
        assert reason in v.reasons


def test_score_post_thresholds_single_signals_are_only_noted() -> None:
    lone_link = score_post("u", "my blog post https://blog.example/post")
    assert lone_link.label == "approve" and lone_link.reasons == ("link",)
    assert lone_link.score == pytest.approx(0.4)
    lone_term = score_post("u", "feel free to join us")
    assert lone_term.label == "approve" and lone_term.reasons == ("spam_term:free",)
    short_caps = score_post("u", "OMG WOW")  # fewer than 20 letters: not shouting
    assert short_caps.label == "approve"
    assert score_post("u", "whatever, the trashcan is full").label == "approve"  # whole words
    two = score_post("u", "idiot and loser")
    assert two.label == "reject" and two.score == pytest.approx(0.9)
    assert 0.5 < score_post("u", SHOUT).score <= 0.75


def test_score_post_repeat_needs_tracker_and_is_per_user() -> None:
    tracker = RepeatTracker(max_users=100, window_s=60)
    text = "Check out my new song"
    assert score_post("u1", text, repeat_tracker=tracker, post_id="p1").label == "approve"
    second = score_post("u1", "check  out my NEW song", repeat_tracker=tracker, post_id="p2")
    assert second.label == "spam" and "repeat" in second.reasons
    # a retry of the same post_id gets the same answer as the first time
    assert score_post("u1", text, repeat_tracker=tracker, post_id="p2").label == "spam"
    assert score_post("u1", text, repeat_tracker=tracker, post_id="p1").label == "approve"
    assert score_post("u2", text, repeat_tracker=tracker, post_id="p3").label == "approve"
    assert score_post("u1", text).label == "approve"  # no tracker: no repeat detection


def test_repeat_tracker_window_expires() -> None:
    now = [1000.0]
    tracker = RepeatTracker(max_users=10, window_s=60, clock=lambda: now[0])
    assert tracker.check("u", "hello") is False
    now[0] += 30
    assert tracker.check("u", "hello") is True
    now[0] += 61
    assert tracker.check("u", "hello") is False


def test_repeat_tracker_memory_is_bounded() -> None:
    tracker = RepeatTracker(max_users=3, window_s=60, max_posts_per_user=4)
    for i in range(10):
        tracker.check(f"user{i}", "same text")
    assert len(tracker) == 3
    assert tracker.check("user0", "same text") is False  # user0 was evicted (LRU)
    assert tracker.check("user9", "same text") is True  # recent user still remembered
    for i in range(50):
        tracker.check("user9", f"post number {i}")
    assert tracker.entries() <= 3 * 4
    with pytest.raises(ValueError):
        RepeatTracker(max_users=0)


def test_fallback_verdict_is_conservative_and_degraded() -> None:
    ok = fallback_verdict("u", "Lovely sunset")
    assert ok == Verdict("approve", 0.0, ("degraded",)) and ok.degraded
    bad = fallback_verdict("u", "you are trash")
    assert bad.label == "reject" and "blocklist:trash" in bad.reasons and bad.degraded
    # a single link is enough for the fallback, while the full rules only note it
    text = "my blog https://blog.example/post"
    assert score_post("u", text).label == "approve"
    assert fallback_verdict("u", text).label == "spam"
    assert fallback_verdict("u", "winner winner").reasons == ("degraded", "spam_term:winner")
    for word in BLOCKLIST:
        assert fallback_verdict("u", f"so {word}").label == "reject"
    assert not score_post("u", "Lovely sunset").degraded


def test_verdict_validates() -> None:
    with pytest.raises(ValueError):
        Verdict("maybe", 0.1, ())
    with pytest.raises(ValueError):
        Verdict("approve", 1.5, ())
    assert Verdict("spam", 0.7, ["link"]).reasons == ("link",)


def test_parse_result_names_what_is_wrong() -> None:
    good = {"post_id": "p", "label": "approve", "score": 0.0, "reasons": [], "latency_ms": 1.0}
    assert _parse_result(good, "p", 2.0).label == "approve"
    for key, value in [
        ("label", "fine"),
        ("score", "high"),
        ("reasons", "none"),
        ("post_id", "other"),
        ("latency_ms", -1),
    ]:
        with pytest.raises(BackendGarbage, match=key):
            _parse_result({**good, key: value}, "p", 2.0)
    with pytest.raises(BackendGarbage, match="score"):
        _parse_result({k: v for k, v in good.items() if k != "score"}, "p", 2.0)
    with pytest.raises(BackendGarbage, match="object"):
        _parse_result([1, 2], "p", 2.0)


# =========================================================================================
# backend process
# =========================================================================================


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def shared_backend(tmp_path_factory: pytest.TempPathFactory):
    backend = ModerationBackend(state_dir=tmp_path_factory.mktemp("moderation"))
    try:
        backend.start()
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def backend(shared_backend: ModerationBackend):
    shared_backend.reset_faults()
    yield shared_backend
    if shared_backend.is_running():
        shared_backend.reset_faults()


@pytest.fixture
def own_backend(tmp_path: Path):
    """A backend this test may kill, pause or stop."""
    b = ModerationBackend(state_dir=tmp_path / "state")
    try:
        b.start()
        yield b
    finally:
        if b.is_paused():
            b.resume()
        b.stop()
        assert not b.is_running()


def _raw(url: str, method: str, path: str, body: bytes | None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_moderate_labels(backend: ModerationBackend) -> None:
    with ModerationClient(backend.url, timeout_s=2) as client:
        ok = client.moderate("p-1", "alice", "Great game last night!")
        assert isinstance(ok, ModerationResult)
        assert (ok.label, ok.post_id, ok.reasons) == ("approve", "p-1", ())
        assert 0 < ok.latency_ms < 1000 and ok.rtt_ms >= ok.latency_ms
        assert client.moderate(2, "bob", "you stupid idiot").label == "reject"
        spam = client.moderate(3, "carol", "WINNER! claim your prize at https://x.example")
        assert spam.label == "spam" and "link" in spam.reasons
        shout = client.moderate(4, "dave", SHOUT)
        assert shout.label == "review" and shout.verdict == Verdict("review", shout.score,
                                                                    ("shouting",))


def test_repeated_posts_flagged_by_backend(backend: ModerationBackend) -> None:
    with ModerationClient(backend.url, timeout_s=2) as client:
        assert client.moderate("r1", "erin", "Follow me for more").label == "approve"
        again = client.moderate("r2", "erin", "Follow me for more")
        assert again.label == "spam" and "repeat" in again.reasons
        assert client.moderate("r2", "erin", "Follow me for more").label == "spam"  # retry
        assert client.moderate("r3", "frank", "Follow me for more").label == "approve"


def test_bad_requests_get_400_naming_the_field(backend: ModerationBackend) -> None:
    status, doc = _raw(backend.url, "POST", "/moderate", b"{not json")
    assert status == 400 and doc["field"] == "body" and "JSON" in doc["error"]
    status, doc = _raw(backend.url, "POST", "/moderate", b'{"post_id": 1, "user_id": "u"}')
    assert status == 400 and doc["field"] == "text" and "text" in doc["error"]
    body = json.dumps({"post_id": 1, "user_id": 7, "text": "hi"}).encode()
    status, doc = _raw(backend.url, "POST", "/moderate", body)
    assert status == 400 and doc["field"] == "user_id"
    status, doc = _raw(backend.url, "GET", "/nowhere", None)
    assert status == 404
    with ModerationClient(backend.url, timeout_s=2) as client:
        with pytest.raises(BackendBadRequest) as err:
            client.moderate(1, "u", None)  # type: ignore[arg-type]
        assert err.value.field == "text" and not err.value.retryable
        assert client.moderate(2, "u", "still fine").label == "approve"  # connection reused


def test_fault_model_roundtrip_and_validation(backend: ModerationBackend) -> None:
    faults = backend.set_faults(latency_ms=5, jitter_ms=2)
    # the answer also carries the settings (cost model, capacity), unchanged here
    assert {k: faults[k] for k in FAULT_KEYS} == {"latency_ms": 5.0, "jitter_ms": 2.0,
                                                  "error_rate": 0.0, "garbage_rate": 0.0}
    assert {k: faults[k] for k in SETTING_KEYS} == DEFAULT_SETTINGS
    assert backend.set_faults(error_rate=0.5)["latency_ms"] == 5.0  # partial update
    assert backend.faults()["error_rate"] == 0.5
    with pytest.raises(BackendBadRequest) as err:
        backend.set_faults(error_rate=2)
    assert err.value.field == "error_rate"
    with pytest.raises(BackendBadRequest) as err:
        backend.set_faults(slowness=1)
    assert err.value.field == "slowness"
    reset = backend.reset_faults()
    assert {reset[k] for k in FAULT_KEYS} == {0.0}
    assert {k: reset[k] for k in SETTING_KEYS} == DEFAULT_SETTINGS
    health = backend.health()
    assert health["ok"] is True and health["pid"] == backend.pid and health["latency_ms"] == 0


def test_latency_fault_causes_timeout(backend: ModerationBackend) -> None:
    backend.set_faults(latency_ms=2000)
    client = ModerationClient(backend.url, timeout_s=0.1)
    t0 = time.monotonic()
    with pytest.raises(BackendTimeout):
        client.moderate("slow-1", "u", "hello")
    # gave up long before the backend would answer (a margin of 1.5 s for a loaded machine)
    assert time.monotonic() - t0 < 1.6
    backend.set_faults(latency_ms=50)
    assert client.moderate("slow-2", "u", "hello again").latency_ms >= 50
    client.close()


def test_error_fault_gives_backend_error(backend: ModerationBackend) -> None:
    backend.set_faults(error_rate=1)
    with ModerationClient(backend.url, timeout_s=2) as client:
        for i in range(3):
            with pytest.raises(BackendError) as err:
                client.moderate(i, "u", "hello")
            assert err.value.status == 503 and err.value.retryable
        assert client.health()["ok"] is True  # health is not subject to faults
        assert client.health()["errors_injected"] >= 3


def test_garbage_fault_gives_backend_garbage(backend: ModerationBackend) -> None:
    backend.set_faults(garbage_rate=1)
    with ModerationClient(backend.url, timeout_s=2) as client:
        for i in range(6):
            with pytest.raises(BackendGarbage, match="not JSON"):
                client.moderate(i, "u", "hello")
        backend.reset_faults()
        assert client.moderate(99, "u", "hello").label in {"approve", "spam"}


def test_client_refuses_concurrent_use(backend: ModerationBackend) -> None:
    backend.set_faults(latency_ms=300)
    client = ModerationClient(backend.url, timeout_s=2)
    t = threading.Thread(target=client.moderate, args=("c1", "u", "one"))
    t.start()
    deadline = time.monotonic() + 5
    while not client._busy.locked() and time.monotonic() < deadline:  # the call is under way
        time.sleep(0.005)
    with pytest.raises(RuntimeError, match="thread"):
        client.moderate("c2", "u", "two")
    t.join()
    client.close()


def test_errors_share_a_base_class() -> None:
    for cls in (BackendUnavailable, BackendTimeout, BackendError, BackendGarbage,
                BackendBadRequest):
        assert issubclass(cls, ModerationBackendError)


def test_kill_then_restart_on_same_port(own_backend: ModerationBackend) -> None:
    client = ModerationClient(own_backend.url, timeout_s=0.5)
    assert client.moderate("k1", "u", "before").label == "approve"
    port, old_pid = own_backend.port, own_backend.pid
    own_backend.kill()
    assert _gone(old_pid) and not own_backend.is_running()
    with pytest.raises(BackendUnavailable):
        client.moderate("k2", "u", "during")
    assert ModerationBackend.load(own_backend.state_dir) is None  # stale state file
    own_backend.restart()
    assert own_backend.port == port and own_backend.pid != old_pid
    assert client.moderate("k3", "u", "after").label == "approve"  # same client object
    client.close()


def test_graceful_restart_with_open_keepalive_connection(own_backend: ModerationBackend) -> None:
    client = ModerationClient(own_backend.url, timeout_s=0.5)
    assert client.moderate("g1", "u", "before").label == "approve"
    own_backend.restart()
    # the kept-alive socket is dead; the client retries once on a fresh connection
    assert client.moderate("g2", "u", "after").label == "approve"
    client.close()


def test_pause_times_out_and_resume_recovers(own_backend: ModerationBackend) -> None:
    client = ModerationClient(own_backend.url, timeout_s=0.2)
    assert client.moderate("s1", "u", "before").label == "approve"
    own_backend.pause()
    assert own_backend.is_paused() and own_backend.is_running()
    with pytest.raises(BackendTimeout):
        client.moderate("s2", "u", "during")
    with pytest.raises(BackendTimeout):  # a brand-new connection is accepted but unanswered
        ModerationClient(own_backend.url, timeout_s=0.2).moderate("s3", "u", "during")
    own_backend.resume()
    assert not own_backend.is_paused()
    assert client.moderate("s4", "u", "after").label == "approve"
    client.close()


def test_load_finds_running_backend_and_can_stop_it(own_backend: ModerationBackend) -> None:
    other = ModerationBackend.load(own_backend.state_dir)
    assert other is not None and other is not own_backend
    assert (other.pid, other.port, other.url) == (own_backend.pid, own_backend.port,
                                                  own_backend.url)
    assert other.health()["pid"] == own_backend.pid
    with pytest.raises(RuntimeError, match="already running"):
        ModerationBackend(own_backend.state_dir).start()
    assert ModerationBackend.ensure(own_backend.state_dir).pid == own_backend.pid
    pid = other.pid
    other.stop()  # stopping via the loaded handle (not the Popen owner)
    assert _gone(pid) and not own_backend.is_running()
    assert ModerationBackend.load(own_backend.state_dir) is None


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    b = ModerationBackend(state_dir=tmp_path).start()
    pid = b.pid
    assert psutil.pid_exists(pid) and b.state_file.exists()
    b.stop()
    assert not psutil.pid_exists(pid) or _gone(pid)
    assert not b.is_running() and not b.state_file.exists()
    assert "stopped after" in b.log_tail()  # graceful SIGTERM path ran
    b.stop()  # idempotent


def test_stop_while_paused(own_backend: ModerationBackend) -> None:
    pid = own_backend.pid
    own_backend.pause()
    own_backend.stop(timeout_s=30)  # SIGKILL only after 30 s: the margin of a loaded machine
    assert _gone(pid)
    # the graceful SIGTERM path ran (not the SIGKILL fallback): SIGCONT let SIGTERM through
    assert "stopped after" in own_backend.log_tail()


def test_never_signals_an_unrelated_process(tmp_path: Path) -> None:
    state = tmp_path / "backend.json"
    state.write_text(json.dumps({"pid": os.getpid(), "port": 1, "host": "127.0.0.1"}))
    assert ModerationBackend.load(tmp_path) is None  # our pytest pid is not a backend
    impostor = ModerationBackend(tmp_path)
    impostor._pid = os.getpid()
    impostor.stop()
    impostor.kill()
    assert psutil.pid_exists(os.getpid())  # still alive, obviously: nothing was signalled
    with pytest.raises(RuntimeError, match="not running"):
        impostor.pause()  # refused before any signal is sent


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        b = ModerationBackend(state_dir=tmp_path)
        with pytest.raises(RuntimeError, match="Address already in use"):
            b.start(port)
    assert not b.is_running()


def test_refuses_non_loopback_host(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        ModerationBackend(tmp_path, host="0.0.0.0")


# =========================================================================================
# batch route, cost model, capacity
# =========================================================================================


def _raw_full(url: str, method: str, path: str, body: bytes | None,
              ) -> tuple[int, dict[str, str], dict]:
    """One raw HTTP request: (status, headers, JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def _batch_body(posts: list) -> bytes:
    return json.dumps({"posts": posts}).encode()


def _unique_posts(n: int, tag: str) -> list[tuple[str, str, str]]:
    """n posts of distinct users and texts (no repeats), all approved."""
    return [(f"{tag}-{i}", f"{tag}-user-{i}", f"A calm post number {i} about {tag}")
            for i in range(n)]


def test_batch_happy_path_keeps_order(backend: ModerationBackend) -> None:
    posts = [
        ("b-0", "bu-0", "Great game last night!"),
        (1, "bu-1", "you stupid idiot"),
        ("b-2", "bu-2", "WINNER! claim your prize at https://x.example"),
        ("b-3", "bu-3", SHOUT),
        ("b-4", "bu-4", "feel free to join us"),
        ("b-5", "bu-5", "Follow me for more"),
        ("b-6", "bu-5", "follow  me FOR more"),  # the same user again: a repeat
    ] + _unique_posts(50, "order")
    before = backend.health()
    with ModerationClient(backend.url, timeout_s=5) as client:
        results = client.moderate_batch(posts)
        assert client.moderate_batch([]) == []  # nothing to send: no request
    assert [r.post_id for r in results] == [p[0] for p in posts]
    assert all(isinstance(r, ModerationResult) for r in results)
    assert [r.label for r in results[:7]] == ["approve", "reject", "spam", "review", "approve",
                                              "approve", "spam"]
    assert results[6].reasons == ("repeat",)
    for (_pid, user, text), r in zip(posts[:6], results[:6], strict=True):
        assert r.verdict == score_post(user, text)  # the same rules as the library
    assert all(r.label == "approve" for r in results[7:])
    assert len({r.latency_ms for r in results}) == 1 and results[0].latency_ms > 0
    assert results[0].rtt_ms >= results[0].latency_ms
    after = backend.health()
    assert after["requests"] == before["requests"] + 1
    assert after["posts"] == before["posts"] + len(posts)


def test_batch_one_bad_post_does_not_fail_the_others(backend: ModerationBackend) -> None:
    with ModerationClient(backend.url, timeout_s=5) as client:
        results = client.moderate_batch([
            ("ok-1", "u", "fine post"),
            ("bad-1", "u", None),  # type: ignore[list-item]
            ("ok-2", "u", "you idiot"),
        ])
    assert [type(r) for r in results] == [ModerationResult, BackendBadRequest,
                                          ModerationResult]
    assert results[1].field == "text" and "bad-1" in str(results[1])
    assert not results[1].retryable
    assert (results[0].label, results[2].label) == ("approve", "reject")

    items = [
        {"post_id": "x1", "user_id": "u", "text": "fine"},
        {"post_id": "x2", "text": "no user"},
        "not an object",
        {"user_id": "u", "text": "no post id"},
        {"post_id": True, "user_id": "u", "text": "bool id"},
        {"post_id": "x6", "user_id": "u", "text": 7},
        {"post_id": 7, "user_id": "u", "text": "int id is fine"},
    ]
    status, _h, doc = _raw_full(backend.url, "POST", "/moderate/batch", _batch_body(items))
    assert status == 200 and len(doc["results"]) == len(items)
    res = doc["results"]
    assert res[0]["label"] == "approve" and res[6] == {
        "post_id": 7, "label": "approve", "score": 0.0, "reasons": []}
    assert res[1] == {"post_id": "x2", "error": "missing field 'user_id'", "field": "user_id"}
    assert res[2]["post_id"] is None and res[2]["field"] == "post"
    assert res[3]["post_id"] is None and res[3]["field"] == "post_id"
    assert res[4]["post_id"] is True and res[4]["field"] == "post_id"
    assert res[5]["post_id"] == "x6" and res[5]["field"] == "text" and "string" in res[5]["error"]


def test_batch_bad_bodies_get_400_naming_field_and_limit(backend: ModerationBackend) -> None:
    url = backend.url
    for body, field in [
        (b"[1, 2]", "body"),
        (b"{not json", "body"),
        (b"{}", "posts"),
        (b'{"posts": []}', "posts"),
        (b'{"posts": "many"}', "posts"),
        (b'{"posts": {"post_id": 1}}', "posts"),
    ]:
        status, _h, doc = _raw_full(url, "POST", "/moderate/batch", body)
        assert (status, doc["field"]) == (400, field), body
    too_many = [{"post_id": i, "user_id": "u", "text": "t"} for i in range(MAX_BATCH_POSTS + 1)]
    status, _h, doc = _raw_full(url, "POST", "/moderate/batch", _batch_body(too_many))
    assert status == 400 and doc["field"] == "posts"
    assert str(MAX_BATCH_POSTS) in doc["error"] and str(MAX_BATCH_POSTS + 1) in doc["error"]
    with ModerationClient(url, timeout_s=5) as client:
        with pytest.raises(BackendBadRequest) as err:
            client.moderate_batch([(i, "u", "t") for i in range(MAX_BATCH_POSTS + 1)])
        assert err.value.field == "posts"
        # a full batch of long posts (~1.5 MB) fits the batch route's larger body limit
        full = [(i, f"u{i}", f"post {i} " + "x" * 1500) for i in range(MAX_BATCH_POSTS)]
        assert len(client.moderate_batch(full)) == MAX_BATCH_POSTS
    # a 5 MiB body is refused from its Content-Length, before being read
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", "/moderate/batch")
        conn.putheader("Content-Length", str(5 * 1024 * 1024))
        conn.endheaders()
        resp = conn.getresponse()
        status, doc = resp.status, json.loads(resp.read())
    finally:
        conn.close()
    assert status == 413 and str(4 * 1024 * 1024) in doc["error"]
    # /moderate keeps its 64 KiB limit
    single = json.dumps({"post_id": 1, "user_id": "u", "text": "x" * 100_000}).encode()
    status, _h, doc = _raw_full(url, "POST", "/moderate", single)
    assert status == 413 and str(64 * 1024) in doc["error"]


def test_capacity_gives_429_then_recovers(backend: ModerationBackend) -> None:
    assert backend.set_faults(capacity_per_s=100)["capacity_per_s"] == 100
    before = backend.health()["rejected_429"]
    posts = _unique_posts(100, "cap")
    overloaded: list[BackendOverloaded] = []
    with ModerationClient(backend.url, timeout_s=5) as client:
        for _ in range(3):
            try:
                client.moderate_batch(posts)
            except BackendOverloaded as e:
                overloaded.append(e)
        assert overloaded, "3 batches of 100 posts at 100 posts/s: some must be refused"
        err = overloaded[-1]
        assert err.status == 429 and err.field == "capacity_per_s" and err.retryable
        assert isinstance(err, BackendError) and err.retry_after_s > 0
        assert "capacity 100 posts/s" in str(err)
        with pytest.raises(BackendOverloaded):  # the single-post route shares the bucket
            client.moderate("cap-single", "u", "hello")
        status, headers, doc = _raw_full(backend.url, "POST", "/moderate/batch",
                                         _batch_body([{"post_id": 1, "user_id": "u",
                                                       "text": "t"}]))
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert doc["field"] == "capacity_per_s" and doc["retry_after_s"] > 0
        assert backend.health()["rejected_429"] >= before + len(overloaded) + 2
        # a 100-post batch was told when to come back; the bucket refills at 100 posts/s
        time.sleep(err.retry_after_s + 0.05)
        assert len(client.moderate_batch(posts)) == 100
        backend.set_faults(capacity_per_s=0)  # 0 = unlimited
        for _ in range(5):
            assert len(client.moderate_batch(posts)) == 100


def test_max_concurrent_gives_503_overloaded(backend: ModerationBackend) -> None:
    backend.set_faults(max_concurrent=1, latency_ms=500)
    slow_result: list[object] = []

    def slow_call() -> None:
        with ModerationClient(backend.url, timeout_s=5) as c:
            slow_result.append(c.moderate_batch(_unique_posts(1, "slow")))

    t = threading.Thread(target=slow_call)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while backend.health()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # /health answers although the one slot is taken
        with ModerationClient(backend.url, timeout_s=5) as client:
            with pytest.raises(BackendOverloaded) as err:
                client.moderate_batch([("second", "u", "hello")])
            assert err.value.status == 503 and err.value.field == "max_concurrent"
            assert "1 requests in progress" in str(err.value)
            with pytest.raises(BackendOverloaded):
                client.moderate("third", "u", "hello")
    finally:
        t.join()
    assert slow_result and slow_result[0][0].label == "approve"  # type: ignore[index]
    assert backend.health()["rejected_503"] >= 2


def test_cost_model_sleeps_per_post(backend: ModerationBackend) -> None:
    backend.set_faults(post_ms=2)
    with ModerationClient(backend.url, timeout_s=10) as client:
        t0 = time.monotonic()
        results = client.moderate_batch(_unique_posts(500, "cost"))
        elapsed = time.monotonic() - t0
    assert elapsed >= 1.0 and results[0].latency_ms >= 1000  # 500 x 2 ms, lower bound only
    backend.set_faults(post_ms=0, request_ms=300)
    with ModerationClient(backend.url, timeout_s=10) as client:
        assert client.moderate("cost-1", "u", "hello").latency_ms >= 300 * 0.75  # +-25 %


def test_faults_apply_to_the_batch_route(backend: ModerationBackend) -> None:
    posts = _unique_posts(20, "faults")
    with ModerationClient(backend.url, timeout_s=5) as client:
        backend.set_faults(error_rate=1)
        with pytest.raises(BackendError) as err:
            client.moderate_batch(posts)
        assert err.value.status == 503 and not isinstance(err.value, BackendOverloaded)
        backend.set_faults(error_rate=0, garbage_rate=1)
        for _ in range(3):
            with pytest.raises(BackendGarbage):
                client.moderate_batch(posts)
        backend.set_faults(garbage_rate=0, latency_ms=200)
        assert client.moderate_batch(posts)[0].latency_ms >= 200  # once per request
        health = client.health()
        assert health["ok"] is True and health["errors_injected"] >= 1
        assert health["garbage_injected"] >= 3


def test_settings_at_start_at_run_time_and_reset(tmp_path: Path) -> None:
    start = {"request_ms": 0.5, "post_ms": 0.01, "capacity_per_s": 2000.0, "max_concurrent": 4}
    b = ModerationBackend(state_dir=tmp_path, **start)
    try:
        b.start()
        health = b.health()
        assert {k: health[k] for k in SETTING_KEYS} == start
        for key in ("requests", "posts", "rejected_429", "rejected_503"):
            assert health[key] == 0
        changed = b.set_faults(capacity_per_s=0, max_concurrent=0, request_ms=3, post_ms=1.5)
        assert {k: changed[k] for k in SETTING_KEYS} == {
            "request_ms": 3.0, "post_ms": 1.5, "capacity_per_s": 0.0, "max_concurrent": 0}
        assert b.faults()["request_ms"] == 3.0
        for bad in ({"capacity_per_s": -1}, {"max_concurrent": 1.5}, {"request_ms": "slow"},
                    {"post_ms": -0.1}, {"capacity": 5}):
            with pytest.raises(BackendBadRequest) as err:
                b.set_faults(**bad)
            assert err.value.field == next(iter(bad))
        reset = b.reset_faults()  # back to the values the process started with
        assert {k: reset[k] for k in SETTING_KEYS} == start
        assert {reset[k] for k in FAULT_KEYS} == {0.0}
        loaded = ModerationBackend.load(tmp_path)
        assert loaded is not None and loaded.settings == start
        b.set_faults(max_concurrent=9)
        b.restart()  # the start values again, not the run-time change
        assert b.health()["max_concurrent"] == 4
    finally:
        b.stop()
    for bad in ({"capacity_per_s": -5}, {"max_concurrent": -1}, {"post_ms": float("nan")},
                {"request_ms": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ModerationBackend(state_dir=tmp_path, **bad)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--capacity-per-s", "-5"], "--capacity-per-s must be >= 0"),
        (["--max-concurrent", "-1"], "--max-concurrent must be >= 0"),
        (["--max-concurrent", "1.5"], "--max-concurrent"),
        (["--request-ms", "-0.5"], "--request-ms must be >= 0"),
        (["--post-ms", "nan"], "--post-ms must be a finite number"),
    ],
)
@pytest.mark.parametrize("module", ["lab_kit.moderation.backend", "lab_kit.moderation_backend"])
def test_cli_rejects_bad_settings_with_one_line(args: list[str], expected: str,
                                                module: str) -> None:
    # the module's name before the package layout still starts the same command line
    root = Path(__file__).resolve().parents[4]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-m", module, *args],
                          capture_output=True, text=True, timeout=30, env=env, cwd=root)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "error" in lines[0], proc.stderr


def test_parse_batch_names_what_is_wrong() -> None:
    posts = [("p1", "u", "a"), (2, "u", "b")]
    ok = {"post_id": "p1", "label": "approve", "score": 0.0, "reasons": []}
    err = {"post_id": 2, "error": "missing field 'text'", "field": "text"}
    good = {"results": [ok, err], "latency_ms": 3.0}
    out = _parse_batch(good, posts, 4.0)
    assert isinstance(out[0], ModerationResult) and out[0].latency_ms == 3.0
    assert out[0].rtt_ms == 4.0 and out[0].post_id == "p1"
    assert isinstance(out[1], BackendBadRequest) and out[1].field == "text"
    for doc, match in [
        ([ok, err], "object"),
        ({"results": [ok], "latency_ms": 1.0}, "1 results for 2 posts"),
        ({"results": "x", "latency_ms": 1.0}, "results"),
        ({"results": [ok, err], "latency_ms": -1}, "latency_ms"),
        ({"results": [{**ok, "label": "fine"}, err], "latency_ms": 1.0}, "label"),
        ({"results": [{**ok, "post_id": "other"}, err], "latency_ms": 1.0}, "post_id"),
        ({"results": [{**ok, "score": 2}, err], "latency_ms": 1.0}, "score"),
        ({"results": [{**ok, "score": True}, err], "latency_ms": 1.0}, "score"),
        ({"results": [{**ok, "reasons": [1]}, err], "latency_ms": 1.0}, "reasons"),
        ({"results": [ok, {**err, "post_id": 3}], "latency_ms": 1.0}, "post_id"),
        ({"results": [ok, [1]], "latency_ms": 1.0}, "object"),
    ]:
        with pytest.raises(BackendGarbage, match=match):
            _parse_batch(doc, posts, 1.0)


def test_overloaded_error_is_a_retryable_backend_error() -> None:
    import lab_kit.moderation.backend as mb

    assert "BackendOverloaded" in mb.__all__
    assert issubclass(BackendOverloaded, BackendError)
    e = BackendOverloaded("HTTP 429: overloaded", retry_after_s=0.25, field="capacity_per_s")
    assert (e.status, e.retry_after_s, e.retryable) == (429, 0.25, True)
