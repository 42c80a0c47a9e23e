"""Failover: when Kafka cannot take posts, they go to a durable spool, and come back in order.

One state value says where a new post goes::

    SENDING ──(probe fails, acks stall, or a retriable delivery error)──► SPOOLING
    SPOOLING ──(the broker answers again)──► REPLAYING
    REPLAYING ──(spool empty)──► SENDING
    REPLAYING ──(probe fails, or a replayed post fails)──► SPOOLING
    SENDING ──(overflow spooled under on_full="spool")──► REPLAYING
    SENDING ──(a delivery error: the post is about to be spooled or re-sent alone)──► REPLAYING

* ``SENDING``: posts go straight to the Kafka client.
* ``SPOOLING``: the broker is unreachable; posts go to the spool (SQLite, on disk).
* ``REPLAYING``: the broker answers; the health thread re-sends the spool oldest first, and new
  posts queue *behind* it, so no post overtakes an older one of its user. They queue in memory
  (the *tail*, at most ``tail_limit`` posts; the broker answers, so they are as safe there as
  in the client's own buffer) and are sent when the spool is empty; a full tail, or the broker
  going away again, moves the tail to the spool first, in order.

**Order per user.** A post either goes straight to the client or queues behind the backlog,
and that choice is made under the state lock (:meth:`Failover.queue_behind_backlog`). The
backlog (spool, then tail) waits while (1) a caller that read ``SENDING`` is still handing its
post to the client, (2) a failed post is still on its way to the spool or to its lone re-send
(the state left ``SENDING`` in the error callback itself, before that work was queued), or
(3) a replaced client still holds posts. Re-sent posts keep their submit stamp, and the spool
replays by it. What is left: a post already inside the client when an older one of its user
fails (kafka-python keeps a partition's order within one client, and a replaced client's posts
all fail over together). A tail chunk stops where one of its posts fails (the rest waits,
first in line). Without a spool there is no failover and nowhere to queue: while a refused
batch's posts are re-sent alone, or still sit in the client being replaced, every new post is
held as if ``max_in_flight`` were reached (``on_full``), then refused.
``tests/unit/producer/test_order_paths.py`` holds each window open.

The decisions are pure functions (:func:`decide_on_error`, :func:`after_probe`,
:func:`after_replay`), unit-tested branch by branch without a broker. :class:`Failover` applies
them: every change of state goes through :meth:`Failover._enter`, under one lock.

Threads: the caller's thread spools a post while the state is not ``SENDING``; the worker
thread spools posts whose delivery failed (those that failed together in one transaction);
the health thread (one per producer, only with a spool) probes the broker, notices stuck
clients, replays, and checkpoints the spool (an fsync: never in a caller's append).

The rare paths, each with a unit test (``tests/unit/producer/test_failover_rare_paths.py``):

* **No client at all** (the first never connected, or a rebuild failed): each round tries to
  build one first, pausing longer after each failure (:func:`rebuild_backoff`), whatever the
  probe says. And the probe never asks the client: for TLS/SASL it used to (a probe that is
  always false without a client, so the state stayed ``SPOOLING`` for good); now it sends
  ApiVersions over TLS, which Kafka answers before SASL authentication.
* **A replay batch never keeps its lease**: whatever raises after :meth:`Spool.lease` (the
  flush, a dead letter, the spool itself), the rows not acked are nacked before the error goes
  on; a refused post whose dead letter could not be written stays in the spool.
* **Nothing to lease** (another replayer holds every row) ends the round: the next one comes
  after ``probe_interval_s``, instead of a loop taking the spool's write lock at full speed.

The replay shares the process with new posts (and, in the post API, with the event loop that
answers users): it sends ``replay_batch`` posts, then rests, so that it takes at most
``replay_share`` of the time. Measured in ``bench api`` with the broker killed: unpaced, the
replay of ~45,000 posts made requests wait 150-250 ms behind it.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaTimeoutError, UnknownError

from lab_kit.producer.future import Delivery, InFlight, PostFuture
from lab_kit.producer.kafka_quirks import settle

log = logging.getLogger(__name__)

#: Records of a refused replay batch re-sent alone per round (each waits for its answer on the
#: health thread, so probes and the stall check pause meanwhile); the rest wait a round.
MAX_LONE_RESENDS = 100
OUTAGE_WINDOW = "broker unreachable"  # the label of outage windows in the metrics/plots


class State(enum.Enum):
    SENDING = "sending"
    SPOOLING = "spooling"
    REPLAYING = "replaying"


#: Every change of state that may happen; anything else is a bug (``_enter`` raises).
TRANSITIONS = {
    (State.SENDING, State.SPOOLING),
    (State.SENDING, State.REPLAYING),
    (State.SPOOLING, State.REPLAYING),
    (State.REPLAYING, State.SPOOLING),
    (State.REPLAYING, State.SENDING),
}


class Action(enum.Enum):
    SPOOL = "spool"  # keep it on disk; the replay sends it again
    RESEND_ALONE = "resend_alone"  # send it on its own: a refusal then is its own fault (→ DLQ)
    FAIL = "fail"  # no spool to fall back on: the future fails, the post is counted as failed


@dataclass(frozen=True)
class ErrorDecision:
    action: Action
    replace_client: bool  # the client that failed will not send again (kafka_quirks, quirk 2)
    outage: bool  # the broker looks unreachable: new posts go to the spool (→ SPOOLING)


def decide_on_error(*, retriable: bool, timed_out: bool, from_current_client: bool,
                    has_spool: bool) -> ErrorDecision:
    """What to do with a post whose delivery failed.

    ``from_current_client`` is False when the post was carried by a client that has been
    replaced since: its error says nothing about the broker, only that the post must go again.
    """
    replace = from_current_client and (timed_out or not retriable)
    if not from_current_client:
        return ErrorDecision(Action.SPOOL if has_spool else Action.RESEND_ALONE, replace, False)
    if not retriable:
        return ErrorDecision(Action.RESEND_ALONE, replace, False)
    if has_spool:
        return ErrorDecision(Action.SPOOL, replace, True)
    return ErrorDecision(Action.FAIL, replace, False)


def after_probe(state: State, *, answers: bool, stalled: bool) -> State:
    """The health thread's view: does the broker take posts (answers, and acks keep coming)?"""
    if not answers or stalled:
        return State.SPOOLING
    if state is State.SPOOLING:
        return State.REPLAYING
    return state


def after_replay(state: State, *, spool_empty: bool, failed: bool) -> State:
    """After a replay round: a failed re-send means the broker went away again."""
    if failed:
        return State.SPOOLING
    if state is State.REPLAYING and spool_empty:
        return State.SENDING
    return state


def rebuild_backoff(failures: int, base_s: float, cap_s: float = 10.0) -> float:
    """Seconds to wait before the next try to build a missing client, after ``failures``
    failed tries in a row: ``base_s`` doubled each time, at most ``cap_s`` (each try can block
    for the client's ``bootstrap_timeout_ms``)."""
    return min(cap_s, base_s * 2 ** max(0, failures - 1))


def api_versions_probe(host: str, port: int, timeout_s: float = 1.0,
                       tls: ssl.SSLContext | None = None) -> bool:
    """True if a Kafka broker answers an ApiVersions request within ``timeout_s``.

    A TCP connect is not enough: a paused (SIGSTOP) broker still accepts connections in the
    kernel, but answers nothing. So the probe sends a real (tiny) Kafka request; over TLS
    (``tls``) for an SSL listener. Kafka answers ApiVersions before any SASL authentication,
    so the probe needs no credentials.
    """
    client_id = b"lab-kit-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id  # api 18 = ApiVersions
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                (tls.wrap_socket(raw, server_hostname=host) if tls else raw) as s:
            s.settimeout(timeout_s)
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(s, 8)
            _size, correlation_id = struct.unpack(">ii", header)
            return correlation_id == 7
    except OSError:  # ssl.SSLError included
        return False


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def tls_context(kafka_config: dict[str, Any]) -> ssl.SSLContext:
    """The TLS settings kafka-python uses for the brokers: its ``ssl_context``, else one built
    from ``ssl_cafile`` (else the system's CAs), ``ssl_check_hostname``, ``ssl_certfile`` /
    ``ssl_keyfile`` / ``ssl_password`` (a client certificate)."""
    if kafka_config.get("ssl_context") is not None:
        return kafka_config["ssl_context"]
    ctx = ssl.create_default_context(cafile=kafka_config.get("ssl_cafile"))
    ctx.check_hostname = bool(kafka_config.get("ssl_check_hostname", True))
    if kafka_config.get("ssl_certfile"):
        ctx.load_cert_chain(kafka_config["ssl_certfile"], kafka_config.get("ssl_keyfile"),
                            kafka_config.get("ssl_password"))
    return ctx


def bootstrap_probe(kafka_config: dict[str, Any]) -> Callable[[], bool]:
    """The default health probe: ApiVersions to each bootstrap server, over TLS for
    ``SSL``/``SASL_SSL``. It never asks the Kafka client: a probe that needs a client can never
    say yes while there is none (and kafka-python 3's ``bootstrap_connected()`` is true only
    *while* it bootstraps, so it said no to a healthy client too)."""
    servers = kafka_config["bootstrap_servers"]
    if isinstance(servers, str):
        servers = servers.split(",")
    addresses = [(h, int(p)) for h, _, p in (s.strip().rpartition(":") for s in servers)]
    secured = kafka_config.get("security_protocol", "PLAINTEXT") in ("SSL", "SASL_SSL")
    tls: list[ssl.SSLContext] = []  # built on first use: a bad CA file is logged, not raised

    def probe() -> bool:
        if secured and not tls:
            try:
                tls.append(tls_context(kafka_config))
            except (OSError, ValueError) as exc:
                log.warning("health probe: cannot build the TLS context: %r", exc)
                return False
        return any(api_versions_probe(h, p, 1.0, tls[0] if tls else None)
                   for h, p in addresses)

    return probe


class Failover:
    """Owns the state, the spool side of the producer and the health thread.

    ``clients`` is the producer's :class:`~lab_kit.producer.async_producer.ClientSlot`;
    ``dead_letter_spooled(record, exc)`` writes a spooled record Kafka refused for good;
    ``resend_spooled(record)`` sends one on its own and waits (raising if it is refused again):
    a refused record may only have shared its batch with the one that was at fault.
    """

    def __init__(self, *, spool: Any, topic: str, clients: Any, in_flight: InFlight,
                 metrics: Any, dead_letter_spooled: Callable[[Any, BaseException], None],
                 probe: Callable[[], bool], probe_interval_s: float, stall_timeout_s: float,
                 state: State, send: Callable[[PostFuture, bytes, bytes], None],
                 tail_limit: int = 10_000, replay_batch: int = 1000,
                 replay_share: float = 0.5,
                 resend_spooled: Callable[[Any], Any] | None = None):
        self.spool = spool
        self._resend_spooled = resend_spooled
        self.topic = topic
        self._clients = clients
        self._in_flight = in_flight
        self._metrics = metrics
        self._dead_letter_spooled = dead_letter_spooled
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self._stall_timeout_s = stall_timeout_s
        # The state lock is held while a post is appended because the state is not SENDING,
        # and while the replayer switches back to SENDING: no post can be spooled between
        # the "spool empty" check and the switch (a direct send after it would overtake it).
        self._lock = threading.Lock()
        self._send = send  # the facade's direct send (in-flight bookkeeping, callbacks)
        self._tail: deque[tuple[PostFuture, bytes, bytes]] = deque()  # guarded by _lock
        self._tail_limit = tail_limit
        self._replay_batch_size = replay_batch
        self._replay_share = replay_share
        # Both guarded by _lock. Callers handing a post to the client because they read
        # SENDING, and failed posts not yet re-routed (spooled, re-sent alone or failed): while
        # either is non-zero, the backlog waits, or a newer post would overtake an older one.
        self._direct = 0
        self._reroutes = 0
        #: when the backlog last ran out (REPLAYING -> SENDING), on the metrics' clock
        self.replay_done_at: float | None = None
        self._state = State.SENDING
        self._enter(state, "start")
        # owned by the health thread
        self._stalled_since: float | None = None
        self._stale_generation: int | None = None  # replace that client once the broker answers
        self._rebuild_failures = 0  # rebuilds of a missing client that failed in a row
        self._next_rebuild_at = 0.0  # monotonic time of the next try
        self._last_checkpoint = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lab-health-replay")

    # --- the state ------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """For a reader (metrics, health): one attribute read. The caller's choice between
        sending directly and queueing is made under the lock, by :meth:`queue_behind_backlog`."""
        return self._state

    def _enter(self, new: State, reason: str) -> None:
        with self._lock:
            self._enter_locked(new, reason)

    def _enter_locked(self, new: State, reason: str) -> None:
        old = self._state
        if new is old:
            return
        if (old, new) not in TRANSITIONS and reason != "start":
            raise RuntimeError(f"failover: no transition {old.name} -> {new.name} ({reason})")
        self._state = new
        log.info("failover: %s -> %s (%s)", old.name, new.name, reason)
        if new is State.SPOOLING:
            try:  # the tail goes first: newer posts queue behind it
                self._tail_to_spool_locked()
            except Exception as exc:  # noqa: BLE001 - it stays in the tail, first in line
                log.error("failover: the tail (%d posts) stays in memory: %r", len(self._tail), exc)
            self._metrics.open_window(OUTAGE_WINDOW)
            self._metrics.incr("outages")
        elif old is State.SPOOLING:
            self._metrics.close_window(OUTAGE_WINDOW)
        if old is State.REPLAYING and new is State.SENDING:
            self.replay_done_at = self._metrics.clock()

    # --- spooling (caller and worker threads) --------------------------------------------------
    def spool_post(self, pf: PostFuture, key: bytes, value: bytes) -> None:
        """Write an accepted post to the spool. It returns only after SQLite committed, so the
        post survives a crash of this process; the future settles as ``spooled``."""
        self._spool([(pf, key, value)])

    def _spool(self, entries: list[tuple[PostFuture, bytes, bytes]]) -> None:
        """Append posts to the spool, in order, in one transaction; then count them and settle
        their futures as ``spooled`` (raises, settling nothing, if the spool refuses them)."""
        self.spool.append_many((self.topic, key, value, pf.post_id, pf.order)
                               for pf, key, value in entries)
        self._metrics.incr("spooled", len(entries))
        for pf, _key, _value in entries:
            pf.set_result(Delivery(pf.post_id, "spooled", self.topic))

    def queue_behind_backlog(self, pf: PostFuture, key: bytes, value: bytes) -> bool:
        """The caller's question, answered under the state lock: SENDING, so send it directly
        (False; the caller then calls :meth:`sent_directly` once the client has it), or queue
        it behind the backlog (True): in the tail while REPLAYING (it stays pending until it
        is sent and acked), else in the spool. Raises :class:`SpoolFullError` (nothing
        queued) when it would wait at a full spool's back."""
        with self._lock:
            if self._state is State.SENDING:
                self._direct += 1
                return False
            self.spool.check_room()
            if self._state is State.REPLAYING and len(self._tail) < self._tail_limit:
                self._tail.append((pf, key, value))
                return True
            self._tail_to_spool_locked()  # older posts first (raises, keeping them, if refused)
            self.spool_post(pf, key, value)
            return True

    def sent_directly(self) -> None:
        with self._lock:
            self._direct -= 1

    def reroute_coming(self) -> None:
        """Sender thread, on a failed post that will be spooled or re-sent alone: newer posts
        queue behind it from now on (the state leaves SENDING here, before the re-route),
        and nothing in the backlog is sent until :meth:`reroute_done`. The lock may be held
        by a caller writing to the spool: on a delivery error the sender thread can wait
        for one SQLite commit here (nothing holding the lock waits for the sender thread)."""
        with self._lock:
            self._reroutes += 1
            if self._state is State.SENDING:
                self._enter_locked(State.REPLAYING, "a post failed")

    def reroute_done(self, n: int = 1) -> None:
        with self._lock:
            self._reroutes -= n

    def _backlog_waits(self) -> bool:
        with self._lock:
            return not self._backlog_may_move()

    def _backlog_may_move(self) -> bool:
        """(Under the lock.) No failed post is still on its way, no caller is still handing a
        post it was allowed to send directly to the client: the backlog's turn."""
        return not self._reroutes and not self._direct

    @property
    def tail_length(self) -> int:
        return len(self._tail)

    def _tail_to_spool_locked(self) -> None:
        """Move the tail to the spool, in order, in one transaction (its posts settle as
        ``spooled``). If the spool refuses them, it raises and the tail keeps every post."""
        if not self._tail:
            return
        self._spool(list(self._tail))
        self._tail.clear()

    def tail_to_spool(self) -> list[PostFuture]:
        """At close: what still waits in the tail goes to disk, for the next producer. Returns
        the posts the spool refused (then taken out of the tail, for the caller to count)."""
        with self._lock:
            try:
                self._tail_to_spool_locked()
            except Exception as exc:  # noqa: BLE001
                log.error("failover: could not spool the tail (%d posts): %r", len(self._tail), exc)
                refused = [pf for pf, _key, _value in self._tail]
                self._tail.clear()
                return refused
            return []

    def spool_overflow(self, pf: PostFuture, key: bytes, value: bytes) -> None:
        """``on_full="spool"``: the post goes to disk, and newer posts queue behind it there
        until the replayer has drained the spool, so none of them overtakes it. Raises
        :class:`SpoolFullError` (not accepted) when the spool is at its cap."""
        with self._lock:
            self.spool.check_room()
            self.spool_post(pf, key, value)
            if self._state is State.SENDING:
                self._enter_locked(State.REPLAYING, "in-flight bound reached")

    def spool_failed(self, pfs: list[PostFuture], outage: bool) -> None:
        """Worker thread: posts whose delivery failed go to the spool, in order, in one
        transaction (raises if the spool cannot take them). Newer posts queue behind them
        from now on."""
        self._spool([(pf, pf.post.key_bytes(), pf.post.to_json_bytes()) for pf in pfs])
        with self._lock:
            if outage and self._state is not State.SPOOLING:
                self._enter_locked(State.SPOOLING, "delivery failed")
            elif self._state is State.SENDING:
                self._enter_locked(State.REPLAYING, "post re-spooled")

    # --- the health thread ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def broker_answers(self) -> bool:
        return self._probe()

    def _loop(self) -> None:
        while not self._stop.wait(self._probe_interval_s):
            try:
                self.step()
                self._checkpoint_if_due()
            except Exception:  # noqa: BLE001 - the loop must survive; log and go on
                log.exception("health/replay step failed")

    def _checkpoint_if_due(self, every_s: float = 1.0) -> None:
        """The spool's checkpoints (an fsync each) run here, not in a caller's append."""
        now = time.monotonic()
        if now - self._last_checkpoint >= every_s:
            self._last_checkpoint = now
            self.spool.checkpoint()

    def step(self) -> None:
        """One round: rebuild a missing client, probe, notice a stuck client, change state,
        replay what is spooled."""
        answers = self._probe()
        if self._rebuild_if_missing(answers) and not answers:
            answers = self._probe()  # a secured broker's probe asks the client just built
        stalled = self._in_flight.oldest_age() >= self._stall_timeout_s
        if stalled:  # whether the broker answers or not: see _replace_if_stuck
            self._replace_if_stuck(answers)
        else:
            self._stalled_since = None
        self._enter(after_probe(self._state, answers=answers, stalled=stalled),
                    "probe" if not answers else "acks stalled" if stalled else "broker answers")
        if self._state is State.SPOOLING:
            return
        generation, client = self._clients.current
        if client is not None and generation == self._stale_generation:
            self._clients.replace(generation)
            self._stale_generation = None
        if self._clients.current[1] is None:  # _rebuild_if_missing tries again, paced
            self._enter(State.SPOOLING, "no client could connect")
            return
        if self._backlog_waits():
            return  # the next round sends the backlog, behind the failed posts
        if self._in_flight.held_by_older_clients(self._clients.current[0]):
            # a replaced client's posts leave it by failing, then sort before newer posts in
            # the spool; sent through the new client now, newer posts would overtake them.
            # (If they never leave, the stuck-client check above sees them as stalled.)
            return
        failed = False
        while (not self.spool.is_empty() and not failed and not self._stop.is_set()
               and self._stale_generation is None  # a refused record poisons the client
               and not self._backlog_waits()):
            started = time.monotonic()
            outcome = self._replay_batch(self._replay_batch_size)
            if outcome is None:
                break  # every row is leased (by another replayer): try again next round
            failed = outcome
            self._pace(time.monotonic() - started)
            self._checkpoint_if_due()
        while not failed and not self._stop.is_set() and self._send_tail_chunk():
            pass
        with self._lock:  # the switch back to SENDING, unless a post was queued just now
            self._enter_locked(after_replay(
                self._state, failed=failed, spool_empty=(
                    self.spool.is_empty() and not self._tail and self._backlog_may_move())),
                "replay")

    def _rebuild_if_missing(self, answers: bool) -> bool:
        """No client (the first never connected, a rebuild failed, or a stuck one was dropped
        while the broker was away): try to build one. At once if the probe ``answers``; else
        with a growing pause between tries, whatever the probe says: a probe of a secured
        broker asks the client itself, and without a client it can never say yes. True if a
        client was built."""
        generation, client = self._clients.current
        now = time.monotonic()
        if client is not None:
            self._rebuild_failures = 0
            return False
        if now < self._next_rebuild_at and not answers:
            return False
        self._clients.replace(generation)
        if self._clients.current[1] is None:
            self._rebuild_failures += 1
            self._next_rebuild_at = now + rebuild_backoff(self._rebuild_failures,
                                                          self._probe_interval_s)
            return False
        self._rebuild_failures = 0
        return True

    def _pace(self, busy_s: float) -> None:
        """Replay takes at most ``replay_share`` of the time: it competes with new posts for
        the CPU (and for Python's GIL), and new posts must not wait behind old ones."""
        if self._replay_share < 1:
            self._stop.wait(min(1.0, busy_s * (1 - self._replay_share) / self._replay_share))

    def _send_tail_chunk(self, limit: int = 1000) -> bool:
        """Send the oldest posts of the tail (only once the spool is empty). False if there
        was nothing to send, or the state left REPLAYING."""
        with self._lock:
            if (self._state is not State.REPLAYING or not self._tail
                    or not self.spool.is_empty() or not self._backlog_may_move()):
                return False
            chunk = [self._tail.popleft() for _ in range(min(limit, len(self._tail)))]
        generation = self._clients.current[0]
        for i, (pf, key, value) in enumerate(chunk):  # in order: the client keeps a
            if self._reroutes or self._clients.current[0] != generation:  # partition's
                with self._lock:  # a post failed meanwhile, or the client changed: the rest
                    self._tail.extendleft(reversed(chunk[i:]))  # waits, first in line
                return False
            self._send(pf, key, value)
        return True

    def _replace_if_stuck(self, answers: bool) -> None:
        """Posts stay stuck in the client (no ack for ``stall_timeout_s``): replace it; what it
        held fails over to the spool (in submit order) and is replayed. Two cases:

        * the broker answers, yet after an outage kafka-python's idempotent producer can stop
          making progress (:mod:`~lab_kit.producer.kafka_quirks`, quirk 2): replaced once the
          stall has lasted twice the stall timeout more (it may still recover by itself);
        * the broker does not answer: the posts cannot leave, and if its connection stays
          open (a frozen broker, ``SIGSTOP``) kafka-python's sender thread spins on the
          unanswered requests, a whole core (measured: 1.05 of a CPU against 0.12 healthy),
          starving every other thread of the process, an API's event loop included.
          Replaced at once, by no client: the posts go to disk and the spinning stops;
          :meth:`_rebuild_if_missing` builds a new client as soon as the broker answers.
        """
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        if answers and now - self._stalled_since <= 2 * self._stall_timeout_s:
            return
        log.warning("%d posts are stuck in the client (broker %s): replacing it",
                    len(self._in_flight), "answers" if answers else "does not answer")
        self._stalled_since = None
        self._metrics.incr("stuck_client_rebuilds")
        if answers:
            self._clients.replace(self._clients.current[0])
        else:
            self._clients.replace(self._clients.current[0], rebuild=False)

    def _replay_batch(self, limit: int = 5000, timeout_s: float = 30.0) -> bool | None:
        """Re-send the oldest spooled posts (in spool order), then ack/nack them in one go.
        True if some could not be sent (they stay in the spool for the next round); None if
        nothing could be leased (every row is under another replayer's lease).

        A record the broker refuses for good (non-retriable, e.g. too large) leaves the spool
        for the dead-letter topic; one that failed retriably stays for the next round, and so
        does a refused one whose dead letter could not be written. Whatever goes wrong, no
        leased row is left behind: what was not acked is nacked, or at worst released.
        """
        records = self.spool.lease(limit, lease_s=timeout_s * 2)
        if not records:
            return None
        settled: set[int] = set()  # seqs acked or nacked already
        try:
            return self._resend_leased(records, settled, timeout_s)
        except BaseException:
            left = [rec.seq for rec in records if rec.seq not in settled]
            try:
                self.spool.nack(left)
            except Exception:  # noqa: BLE001 - the lease then expires; the error goes up
                log.exception("replay: could not give back %d leased posts", len(left))
            raise

    def _resend_leased(self, records: list, settled: set[int], timeout_s: float) -> bool:
        generation, client = self._clients.current
        futures = []
        for rec in records:
            try:
                kf = client.send(rec.topic, key=rec.key, value=rec.value)
            except Exception as exc:  # noqa: BLE001 - e.g. no metadata yet: retry next round
                log.warning("replay: could not send spooled post %s: %r", rec.post_id, exc)
                break
            futures.append((rec, kf))
        flush_failed = False
        try:
            client.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            pass
        except UnknownError:  # a batch was split: its records are still settling (quirk 8)
            settle([kf for _rec, kf in futures], timeout_s)
        except Exception as exc:  # noqa: BLE001 - e.g. the client was closed meanwhile
            log.warning("replay: flush failed (%r): the batch stays in the spool", exc)
            flush_failed = True
        acked, retry, refused = [], [], []
        for rec, kf in futures:
            if kf.succeeded():
                acked.append(rec.seq)
            elif kf.is_done and not getattr(kf.exception, "retriable", True):
                refused.append((rec, kf.exception))
            else:
                retry.append(rec.seq)
        retry += [rec.seq for rec in records[len(futures):]]
        dead = []  # refused for good, and now in the dead-letter topic
        for n, (rec, exc) in enumerate(refused):  # in spool order; after one that must
            outcome = ("retry" if retry or n >= MAX_LONE_RESENDS  # wait, the rest wait
                       else self._refused_again(rec, exc))
            {"acked": acked, "dead": dead, "retry": retry}[outcome].append(rec.seq)
        # counted before the rows leave the spool: whoever sees the spool empty (drain_spool,
        # a drill's report) must also see them counted; Kafka has them either way
        self._metrics.incr("replayed", len(acked))
        self.spool.ack(acked + dead)
        settled.update(acked + dead)
        if retry or refused or flush_failed:  # kafka-python fails every later send after such
            self._stale_generation = generation  # an error: a new client for the next round
        if retry:
            self.spool.nack(retry)
            settled.update(retry)
            self._metrics.incr("replay_failed", len(retry))
        return bool(retry)

    def _refused_again(self, rec: Any, exc: BaseException) -> str:
        """A record the broker refused with its batch: ``acked`` once re-sent on its own (its
        batch-mate was at fault), ``dead`` if refused alone too and dead-lettered, ``retry``
        (it stays spooled) if that could not be settled now."""
        if self._resend_spooled is not None:
            try:
                self._resend_spooled(rec)
                return "acked"
            except Exception as again:  # noqa: BLE001 - classified like the first refusal
                if getattr(again, "retriable", True):
                    return "retry"
                exc = again
        return "dead" if self._try_dead_letter(rec, exc) else "retry"

    def _try_dead_letter(self, rec: Any, exc: BaseException) -> bool:
        """Write a refused spooled record to the DLQ; False (it stays spooled) if that fails."""
        try:
            self._dead_letter_spooled(rec, exc)
        except Exception as dlq_exc:  # noqa: BLE001 - the record is kept and tried again
            log.error("replay: could not dead-letter spooled post %s: %r", rec.post_id, dlq_exc)
            self._metrics.incr("dlq_failed")
            return False
        return True
