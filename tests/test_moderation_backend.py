"""Tests for lab_kit.rules and lab_kit.moderation_backend (real backend processes, no mocks)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from lab_kit.moderation_backend import (
    BackendBadRequest,
    BackendError,
    BackendGarbage,
    BackendTimeout,
    BackendUnavailable,
    ModerationBackend,
    ModerationBackendError,
    ModerationClient,
    ModerationResult,
    _parse_result,
)
from lab_kit.rules import (
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
    assert faults == {"latency_ms": 5.0, "jitter_ms": 2.0, "error_rate": 0.0,
                      "garbage_rate": 0.0}
    assert backend.set_faults(error_rate=0.5)["latency_ms"] == 5.0  # partial update
    assert backend.faults()["error_rate"] == 0.5
    with pytest.raises(BackendBadRequest) as err:
        backend.set_faults(error_rate=2)
    assert err.value.field == "error_rate"
    with pytest.raises(BackendBadRequest) as err:
        backend.set_faults(slowness=1)
    assert err.value.field == "slowness"
    assert set(backend.reset_faults().values()) == {0.0}
    health = backend.health()
    assert health["ok"] is True and health["pid"] == backend.pid and health["latency_ms"] == 0


def test_latency_fault_causes_timeout(backend: ModerationBackend) -> None:
    backend.set_faults(latency_ms=1000)
    client = ModerationClient(backend.url, timeout_s=0.1)
    t0 = time.monotonic()
    with pytest.raises(BackendTimeout):
        client.moderate("slow-1", "u", "hello")
    assert time.monotonic() - t0 < 0.8  # gave up long before the backend would answer
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
    t0 = time.monotonic()
    own_backend.stop(timeout_s=3)
    assert _gone(pid) and time.monotonic() - t0 < 3  # SIGCONT lets SIGTERM through


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
