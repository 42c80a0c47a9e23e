"""A live JupyterLab dashboard for the async-producer lab.

Two pieces, both usable without a browser (the tests drive them headlessly):

* :class:`LoadGenerator` feeds an :class:`~lab_kit.producer.AsyncPostProducer` from a background
  thread at a target rate. It is an *open loop*: every post has an intended send time on a fixed
  schedule, and ack latency is measured from that time, so a stalled producer shows up as
  latency instead of silently lowering the load. The rate is re-read on every tick, so moving the
  slider changes the load at once. One :class:`~lab_kit.metrics.MetricsRecorder` lives as long as
  the generator: its curves run across producer restarts and carry a mark for every fault.
  When a run ends, its posts are **read back** from the topic (and the DLQ) from the offsets the
  run started at (:func:`lab_kit.audit.audit`): ``lost`` comes from that read, never from the
  producer's counters, and is ``None`` until a run has been checked.
* :class:`Dashboard` puts sliders, fault buttons, a status line and a three-panel live figure
  (throughput, ack latency, error rate, fault windows shaded) in one ipywidgets layout::

      from lab_kit.widgets import Dashboard
      Dashboard().display()

Every button handler is a plain method (``on_pause_clicked()``, ...), so a test or a notebook cell
can press a button without a browser.
"""

from __future__ import annotations

import html
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from lab_kit.harness.readback import AuditReport, audit, end_offsets
from lab_kit.metrics import MetricsRecorder
from lab_kit.plots import WINDOW_ALPHA, WINDOW_COLOR, register_notebook_display
from lab_kit.posts import Workload
from lab_kit.producer import AsyncPostProducer, BackpressureError, CloseReport

__all__ = ["ACKS_OPTIONS", "Dashboard", "LoadGenerator", "RATE_MAX", "RATE_MIN"]

RATE_MIN, RATE_MAX = 100, 20_000  # posts per second (the slider's range)
ACKS_OPTIONS: tuple[tuple[str, str | int], ...] = (("all", "all"), ("1", 1), ("0", 0))
SLOW_BACKEND_MS = 300

TICK_S = 0.005  # the generator wakes at least this often to re-read the rate
MAX_BATCH = 500  # posts submitted between two checks of the stop flag
MAX_CATCH_UP_S = 2.0  # slots later than this are skipped (and counted), not burst out at once


# --------------------------------------------------------------------------------------------
# Load generator
# --------------------------------------------------------------------------------------------
class LoadGenerator:
    """Submit workload posts at ``rate`` posts/s from a background thread (open loop).

    ``start()`` creates a producer and the thread; ``stop()`` ends the thread, which flushes and
    closes the producer: :attr:`last_report` says what became of every accepted post (``lost``
    should be 0). A run also ends by itself after ``max_seconds`` or ``max_posts``.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None = None,
        topic: str = "posts",
        *,
        rate: float = 1000,
        acks: str | int = "all",
        linger_ms: int = 5,
        max_in_flight: int = 10_000,
        spool_path: str | None = None,
        max_seconds: float = 600,
        max_posts: int | None = None,
        seed: int = 42,
        close_timeout_s: float = 10.0,
        kafka_config: dict[str, Any] | None = None,
        audit_timeout_s: float = 60.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.acks = acks
        self.linger_ms = int(linger_ms)
        self.max_in_flight = max_in_flight
        self.spool_path = spool_path
        self.max_seconds = float(max_seconds)
        self.max_posts = max_posts
        self.close_timeout_s = close_timeout_s
        self.kafka_config = dict(kafka_config or {})
        self.metrics = MetricsRecorder()  # shared by every producer this generator creates
        self.producer: AsyncPostProducer | None = None
        self.last_report: CloseReport | None = None
        self.last_audit: AuditReport | None = None  # the last run's posts, read back
        self.audit_error: str | None = None
        self.audit_timeout_s = audit_timeout_s
        self._run_ids: list[str] = []  # post ids accepted in the current run
        self._since: dict[str, dict[int, int]] | None = {}  # end offsets at the run's start
        self.posts_sent = 0  # accepted by submit(), over all runs
        self.skipped = 0  # schedule slots dropped because the generator fell too far behind
        self.ended: str | None = None  # why the last run ended
        self.error: str | None = None
        self._posts = Workload(seed).iter_posts()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.set_rate(rate)

    # -- controls ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_rate(self, rate: float) -> None:
        """Change the target rate; a running generator picks it up on its next tick."""
        if not rate > 0:
            raise ValueError(f"rate: must be > 0 posts/s, got {rate!r}")
        self.rate = float(rate)

    def _new_producer(self) -> AsyncPostProducer:
        extra = dict(self.kafka_config)
        if self.acks != "all":
            extra["enable_idempotence"] = False  # idempotence needs acks="all"
        return AsyncPostProducer(
            self.bootstrap_servers, self.topic, acks=self.acks, linger_ms=self.linger_ms,
            max_in_flight=self.max_in_flight, spool_path=self.spool_path,
            metrics=self.metrics, **extra,
        )

    def start(self) -> None:
        """Create a producer with the current settings and start submitting (no-op if running)."""
        if self.running:
            return
        self._finish_run()  # a run that ended by itself: collect its report
        producer = self._new_producer()  # raises at once if no broker answers (no spool)
        self.last_audit = self.audit_error = None
        try:  # where this run begins on the (shared) topics: the checker reads from here
            self._since = end_offsets(self._client_config(),
                                      [producer.topic, producer.dlq_topic or producer.topic])
        except Exception as exc:  # noqa: BLE001 - e.g. started during an outage (spool)
            self._since = None
            self.audit_error = f"start offsets unknown ({type(exc).__name__}: {exc})"
        self.producer = producer
        self._run_ids = []
        self.error = self.ended = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self.producer, self._stop),
                                        name="lab-load-generator", daemon=True)
        self._thread.start()

    def _client_config(self) -> dict[str, Any]:
        """Settings for the checker's consumer: the producer's bootstrap and security."""
        if self.bootstrap_servers is None:
            from lab_kit import broker

            return broker.ensure().client_config()
        return {**self.kafka_config, "bootstrap_servers": self.bootstrap_servers}

    def stop(self) -> CloseReport | None:
        """Stop submitting, flush and close the producer (replaying its spool first while the
        broker answers), then read the run's posts back; returns the :class:`CloseReport`.
        What was found is in :attr:`last_audit`."""
        self._stop.set()
        self._finish_run()
        return self.last_report

    def _finish_run(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=self.close_timeout_s + 10)
            if self._thread.is_alive():
                self.error = "the generator thread did not stop in time"
            else:
                self._thread = None

    def reconfigure(self, *, acks: str | int | None = None,
                    linger_ms: int | None = None) -> CloseReport | None:
        """Apply new producer settings. A running generator closes its producer (nothing is
        lost: the report says so) and carries on with a new one; the metrics carry on too."""
        was_running = self.running
        report = self.stop() if was_running else None
        if acks is not None:
            self.acks = acks
        if linger_ms is not None:
            self.linger_ms = int(linger_ms)
        self.metrics.mark(f"acks={self.acks} linger={self.linger_ms}ms")
        if was_running:
            self.start()
        return report

    # -- the open loop (background thread) ------------------------------------------------------
    def _run(self, producer: AsyncPostProducer, stop: threading.Event) -> None:
        clock = time.perf_counter
        deadline = clock() + self.max_seconds
        next_at = clock()  # intended time of the next post
        try:
            while not stop.is_set():
                now = clock()
                if now >= deadline:
                    self.ended = f"max_seconds ({self.max_seconds:g} s) reached"
                    break
                interval = 1.0 / self.rate  # re-read every tick: the slider applies live
                if now - next_at > MAX_CATCH_UP_S:  # hopelessly behind: drop the oldest slots
                    n = int((now - next_at - MAX_CATCH_UP_S) / interval) + 1
                    self.skipped += n
                    next_at += n * interval
                for _ in range(MAX_BATCH):  # every slot that is due, up to a batch
                    if next_at > now:
                        break
                    if self.max_posts is not None and self.posts_sent >= self.max_posts:
                        self.ended = f"max_posts ({self.max_posts}) reached"
                        return
                    post = next(self._posts)
                    try:
                        producer.submit(post, intended_at=next_at)
                        self.posts_sent += 1
                        self._run_ids.append(post.post_id)
                    except BackpressureError:
                        pass  # not accepted; the producer counts it as "rejected"
                    next_at += interval
                stop.wait(min(TICK_S, max(0.0, next_at - clock())))
            else:
                self.ended = "stopped"
        except Exception as exc:  # noqa: BLE001 - shown in status(), the run ends
            self.error = f"{type(exc).__name__}: {exc}"
            self.ended = "error"
        finally:
            try:
                self.last_report = producer.close(timeout=self.close_timeout_s)
            except Exception as exc:  # noqa: BLE001
                self.error = f"close failed: {type(exc).__name__}: {exc}"
            self.check_last_run(producer)

    def check_last_run(self, producer: AsyncPostProducer | None = None) -> AuditReport | None:
        """Read the last run's posts back (the checker): found on the topic, in the DLQ,
        still in the spool, or lost; sets and returns :attr:`last_audit`. Runs by itself
        when a run ends; call it again to re-read. A failed read leaves ``last_audit`` None
        and says why in :attr:`audit_error`, never "0 lost"."""
        producer = producer or self.producer
        report = self.last_report
        if producer is None or self._since is None:
            self.last_audit = None  # audit_error says why: no offsets to read from
            return None
        try:
            pending: list[str] = []
            if self.spool_path and report is not None and report.spooled_pending:
                from lab_kit.producer.spool import Spool

                with Spool(self.spool_path) as spool:
                    pending = spool.post_ids()
            dlq = producer.dlq_topic
            if dlq and dlq not in self._since \
                    and not self.metrics.counters().get("dead_lettered", 0):
                dlq = None  # no DLQ topic when the run began, and nothing dead-lettered
            self.last_audit = audit(self._client_config(), producer.topic, self._run_ids,
                                    dlq_topic=dlq, since=self._since, pending_ids=pending,
                                    counters=self.metrics.counters(),
                                    timeout_s=self.audit_timeout_s)
        except Exception as exc:  # noqa: BLE001 - e.g. the broker is down: say so
            self.last_audit = None
            self.audit_error = f"{type(exc).__name__}: {exc}"
        else:
            self.audit_error = None
        return self.last_audit

    # -- numbers -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Current numbers as a plain dict (counters are totals over all runs)."""
        c = self.metrics.counters()
        producer = self.producer
        report = self.last_report
        return {
            "running": self.running,
            "rate": self.rate,
            "acks": self.acks,
            "linger_ms": self.linger_ms,
            "elapsed_s": self.metrics.elapsed(),  # the time axis of the plots
            "submitted": c["submitted"],
            "acked": c["acked"],
            "failed": c["failed"],
            "rejected": c["rejected"],
            "spooled": c["spooled"],
            "replayed": c["replayed"],
            "skipped": self.skipped,
            "in_flight": producer.in_flight if producer is not None else 0,
            "healthy": producer.healthy if producer is not None else None,
            # from reading the last run's posts back; None until a run was checked
            "lost": self.last_audit.lost if self.last_audit is not None else None,
            "audit": self.last_audit.to_dict(max_ids=5) if self.last_audit is not None
            else None,
            "audit_error": self.audit_error,
            "spool_pending": report.spooled_pending if report is not None else None,
            "ended": self.ended,
            "error": self.error,
        }

    def close(self) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------------------------
def _button(description: str, handler: Any, icon: str = "", style: str = "") -> w.Button:
    b = w.Button(description=description, icon=icon, button_style=style,
                 layout=w.Layout(width="auto"))
    b.on_click(handler)
    return b


class Dashboard:
    """Controls, fault buttons, a status line and a live figure for one load generator.

    ``broker`` (default: :func:`lab_kit.broker.ensure`) is both where posts go and what the
    broker fault buttons act on; ``backend`` is a :class:`~lab_kit.moderation_backend.
    ModerationBackend` for the backend buttons (they are disabled without one).
    """

    def __init__(
        self,
        broker: Any = None,
        backend: Any = None,
        bootstrap_servers: str | None = None,
        topic: str = "posts",
        spool_path: str | None = None,
        refresh_s: float = 1.0,
        max_seconds: float = 600,
        *,
        max_posts: int | None = None,
        history_s: float = 300,
    ) -> None:
        if broker is None and bootstrap_servers is None:
            from lab_kit import broker as lab_broker

            broker = lab_broker.ensure()
        self.broker = broker
        self.backend = backend
        cfg = dict(broker.client_config()) if broker is not None else {}
        if bootstrap_servers is not None:
            cfg["bootstrap_servers"] = bootstrap_servers
        bootstrap = cfg.pop("bootstrap_servers")
        self.refresh_s = float(refresh_s)
        self.max_seconds = float(max_seconds)
        self.history_s = float(history_s)
        self.generator = LoadGenerator(bootstrap, topic, spool_path=spool_path,
                                       max_seconds=max_seconds, max_posts=max_posts,
                                       kafka_config=cfg)
        self.metrics = self.generator.metrics
        self.message = ""  # result of the last button press
        self.last_error: str | None = None
        self._open_faults: set[str] = set()
        self._syncing = False  # True while code (not the user) moves the toggle
        self._control = threading.Lock()  # held while a control handler starts/stops the load
        self._refresh_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._build()

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        g = self.generator
        self.rate_slider = w.IntSlider(value=int(g.rate), min=RATE_MIN, max=RATE_MAX, step=100,
                                       description="posts/s")
        self.rate_slider.observe(self.on_rate_change, names="value")
        self.acks_dropdown = w.Dropdown(options=list(ACKS_OPTIONS), value=g.acks,
                                        description="acks", layout=w.Layout(width="150px"))
        self.acks_dropdown.observe(self.on_config_change, names="value")
        self.linger_slider = w.IntSlider(value=g.linger_ms, min=0, max=100,
                                         description="linger_ms", continuous_update=False)
        self.linger_slider.observe(self.on_config_change, names="value")
        self.start_toggle = w.ToggleButton(value=False, description="Start", icon="play",
                                           button_style="success")
        self.start_toggle.observe(self.on_toggle, names="value")
        controls = w.HBox([self.rate_slider, self.acks_dropdown, self.linger_slider,
                           self.start_toggle])

        node_ids = [n.id for n in self.broker.nodes()] if self.broker is not None else []
        self.node_dropdown = w.Dropdown(options=node_ids, value=node_ids[0] if node_ids else None,
                                        description="node", layout=w.Layout(width="130px"))
        self.kill_button = _button("kill", self.on_kill_clicked, "skull", "danger")
        self.pause_button = _button("pause", self.on_pause_clicked, "pause", "warning")
        self.resume_button = _button("resume", self.on_resume_clicked, "play")
        self.broker_start_button = _button("start", self.on_broker_start_clicked, "power-off")
        broker_buttons = [self.kill_button, self.pause_button, self.resume_button,
                          self.broker_start_button]
        can_fault = self.broker is not None and getattr(self.broker, "backend", "") != "external"
        if not can_fault:
            why = ("no broker to act on" if self.broker is None
                   else "an external broker cannot be killed or paused from here")
            for b in [self.node_dropdown, *broker_buttons]:
                b.disabled, b.tooltip = True, why
        broker_row = w.HBox([w.HTML("<b>Broker</b>"), self.node_dropdown, *broker_buttons])

        self.backend_down_button = _button("backend down", self.on_backend_down_clicked,
                                           "skull", "danger")
        self.backend_slow_button = _button(f"backend slow (+{SLOW_BACKEND_MS} ms)",
                                           self.on_backend_slow_clicked, "hourglass", "warning")
        self.backend_heal_button = _button("backend heal", self.on_backend_heal_clicked,
                                           "medkit", "success")
        backend_buttons = [self.backend_down_button, self.backend_slow_button,
                           self.backend_heal_button]
        if self.backend is None:
            for b in backend_buttons:
                b.disabled = True
                b.tooltip = "no moderation backend: pass backend=ModerationBackend.ensure()"
        backend_row = w.HBox([w.HTML("<b>Moderation backend</b>"), *backend_buttons])

        self.status_html = w.HTML()
        self.message_html = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(width="100%", max_width="900px"))
        self.widget = w.VBox([
            w.HTML("<h3>StreamSocial async producer: live dashboard</h3>"),
            controls, broker_row, backend_row, self.status_html, self.message_html, self.image,
        ])
        self.update_status()

    def display(self) -> None:
        """Show the dashboard in the notebook and start the live refresh."""
        from IPython.display import display

        display(self.widget)
        self.start_refresh()

    def _ipython_display_(self) -> None:
        self.display()

    # -- control handlers ----------------------------------------------------------------------
    def on_rate_change(self, change: dict | None = None) -> None:
        self.generator.set_rate(self.rate_slider.value)

    def on_config_change(self, change: dict | None = None) -> None:
        acks, linger = self.acks_dropdown.value, self.linger_slider.value
        with self._control:
            self._act(f"producer now acks={acks}, linger_ms={linger}", lambda: self._report(
                self.generator.reconfigure(acks=acks, linger_ms=linger)))
            self._sync_toggle()

    def on_toggle(self, change: dict | None = None) -> None:
        if self._syncing:
            return
        if self.start_toggle.value:
            self.on_start_clicked()
        else:
            self.on_stop_clicked()

    def on_start_clicked(self, button: Any = None) -> None:
        with self._control:
            started = self._act("load generator started", self.generator.start)
            self._sync_toggle()
        if started:
            self.start_refresh()

    def on_stop_clicked(self, button: Any = None) -> None:
        with self._control:
            self._act("load generator stopped", lambda: self._report(self.generator.stop()))
            self._sync_toggle()
        self.refresh()

    def _report(self, report: CloseReport | None) -> str:
        if report is None:
            return ""
        return (f"producer closed: {report.acked:,} acked in all, "
                f"{report.spooled_pending:,} waiting in the spool; {self._lost_text()}")

    def _lost_text(self) -> str:
        """``lost N`` from the read-back of the last run, or why there is no number."""
        g = self.generator
        if g.last_audit is not None:
            a = g.last_audit
            return (f"read back {a.delivered_unique:,}/{a.submitted:,}, lost {a.lost:,}"
                    + (f", {a.pending:,} still in the spool" if a.pending else ""))
        if g.audit_error:
            return f"lost unknown (read-back failed: {g.audit_error})"
        return "lost not checked yet"

    def _sync_toggle(self) -> None:
        """Make the toggle show the generator's real state (without re-triggering it)."""
        running = self.generator.running
        self._syncing = True
        try:
            self.start_toggle.value = running
            self.start_toggle.description = "Stop" if running else "Start"
            self.start_toggle.icon = "stop" if running else "play"
            self.start_toggle.button_style = "danger" if running else "success"
        finally:
            self._syncing = False

    # -- fault handlers: each one marks the event and opens/closes a shaded window -------------
    def _act(self, what: str, fn: Any) -> bool:
        """Run a button's action; its outcome (or error) goes to the message line."""
        try:
            detail = fn()
        except Exception as exc:  # noqa: BLE001 - show it to the student instead of a traceback
            self.last_error = f"{what}: {type(exc).__name__}: {exc}"
            self.message = f"✗ {self.last_error}"
            ok = False
        else:
            self.last_error = None
            self.message = f"✓ {what}" + (f" ({detail})" if isinstance(detail, str) and detail
                                          else "")
            ok = True
        self.message_html.value = html.escape(self.message)
        self.update_status()
        return ok

    def _open(self, label: str) -> None:
        if label not in self._open_faults:
            self.metrics.open_window(label)
            self._open_faults.add(label)

    def _close(self, label: str) -> None:
        if label in self._open_faults:
            self.metrics.close_window(label)
            self._open_faults.discard(label)

    def _broker_fault(self, verb: str, action: Any, opens: str | None = None,
                      closes: tuple[str, ...] = ()) -> None:
        node = self.node_dropdown.value

        def run() -> None:
            self.metrics.mark(f"{verb} node {node}")
            action(node)
            for state in closes:
                self._close(f"node {node} {state}")
            if opens:
                self._open(f"node {node} {opens}")

        self._act(f"{verb} node {node}", run)

    def on_kill_clicked(self, button: Any = None) -> None:
        self._broker_fault("kill", self.broker.kill, opens="down", closes=("paused",))

    def on_pause_clicked(self, button: Any = None) -> None:
        self._broker_fault("pause", self.broker.pause, opens="paused")

    def on_resume_clicked(self, button: Any = None) -> None:
        self._broker_fault("resume", self.broker.resume, closes=("paused",))

    def on_broker_start_clicked(self, button: Any = None) -> None:
        self._broker_fault("start", self.broker.start, closes=("down", "paused"))

    def _backend_fault(self, what: str, action: Any, opens: str | None = None,
                       closes: tuple[str, ...] = ()) -> None:
        def run() -> None:
            self.metrics.mark(what)
            action()
            for label in closes:
                self._close(label)
            if opens:
                self._open(opens)

        self._act(what, run)

    def on_backend_down_clicked(self, button: Any = None) -> None:
        self._backend_fault("backend down", self.backend.kill, opens="backend down")

    def on_backend_slow_clicked(self, button: Any = None) -> None:
        self._backend_fault(f"backend slow (+{SLOW_BACKEND_MS} ms)",
                            lambda: self.backend.set_faults(latency_ms=SLOW_BACKEND_MS),
                            opens="backend slow")

    def on_backend_heal_clicked(self, button: Any = None) -> None:
        def heal() -> None:
            if not self.backend.is_running():
                self.backend.restart()  # same port: clients just reconnect
            self.backend.reset_faults()

        self._backend_fault("backend heal", heal, closes=("backend down", "backend slow"))

    # -- numbers, status line and figure --------------------------------------------------------
    def _node_states(self) -> dict[int, str]:
        if self.broker is None:
            return {}
        try:
            return {n.id: n.state for n in self.broker.nodes()}
        except Exception:  # noqa: BLE001 - a status line must not fail
            return {}

    def snapshot(self) -> dict[str, Any]:
        """The dashboard's current numbers (generator status, node states, fault windows)."""
        snap = self.generator.status()
        snap["nodes"] = self._node_states()
        snap["backend_running"] = self.backend.is_running() if self.backend is not None else None
        snap["open_faults"] = sorted(self._open_faults)
        snap["windows"] = self.metrics.windows
        return snap

    def wait_for(self, condition: Any, timeout_s: float = 30.0, what: str = "the condition"
                 ) -> dict[str, Any]:
        """Poll :meth:`snapshot` until ``condition(snapshot)`` is true; return that snapshot.
        For a demo script: wait for a fault to take effect (e.g. ``s["spooled"] > 0``)
        instead of sleeping and hoping. Raises ``TimeoutError`` naming ``what``."""
        deadline = time.monotonic() + timeout_s
        while True:
            snap = self.snapshot()
            if condition(snap):
                return snap
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
            time.sleep(0.1)

    def update_status(self) -> dict[str, Any]:
        s = self.snapshot()
        nodes = ", ".join(f"node {i} {st}" for i, st in s["nodes"].items()) or "n/a"
        healthy = {True: "✓ healthy", False: "✗ unhealthy", None: "–"}[s["healthy"]]
        parts = [
            "<b>running</b>" if s["running"] else "stopped",
            f"in flight {s['in_flight']:,}",
            f"acked {s['acked']:,}",
            f"failed {s['failed']:,}",
            f"spooled {s['spooled']:,}",
            f"broker: {nodes}",
            f"producer {healthy}",
        ]
        if s["rejected"] or s["skipped"]:
            parts.append(f"rejected {s['rejected']:,}, skipped {s['skipped']:,}")
        if s["ended"] and not s["running"]:
            parts.append(f"last run: {s['ended']}, {self._lost_text()}")
        if s["error"]:
            parts.append(f"error: {s['error']}")
        self.status_html.value = " · ".join(
            p if p.startswith("<b>") else html.escape(p) for p in parts)
        return s

    def render_figure(self) -> Figure:
        """Three panels over time: throughput, ack latency, error rate; fault windows shaded."""
        ts = self.metrics.timeseries_frame()
        interval = ts.attrs.get("interval_s", 1.0)
        now = self.metrics.elapsed()
        ts = ts[(ts.index + interval <= now) & (ts.index >= now - self.history_s)]  # whole buckets
        register_notebook_display()
        fig = Figure(figsize=(9, 7), layout="constrained")
        ax_tp, ax_lat, ax_err = fig.subplots(3, 1, sharex=True)
        t = ts.index.to_numpy(dtype=float)

        def col(name: str, scale: float = 1.0) -> Any:
            return ts[name].to_numpy(dtype=float) * scale if name in ts else t * 0.0

        ax_tp.plot(t, col("submitted", 1 / interval), label="submitted/s", color="tab:gray")
        ax_tp.plot(t, col("acked", 1 / interval), label="acked/s", color="tab:blue")
        for name, color in (("spooled", "tab:purple"), ("replayed", "tab:olive")):
            if name in ts and ts[name].sum() > 0:  # only once an outage sent posts to disk
                ax_tp.plot(t, col(name, 1 / interval), label=f"{name}/s", color=color, ls="--")
        ax_tp.set_ylabel("posts/s")
        # markers too: a second with acks between two without shows as a dot, not nothing
        ax_lat.plot(t, col("ack_mean_ms"), ".-", label="mean", color="tab:green")
        ax_lat.plot(t, col("ack_max_ms"), ".-", label="max", color="tab:orange")
        ax_lat.set_ylabel("ack latency (ms)")
        ax_err.plot(t, col("error_rate", 100.0), label="error rate", color="tab:red")
        ax_err.set_ylabel("errors (%)")
        ax_err.set_xlabel("time since start (s)")
        for ax, title in ((ax_tp, "Throughput"), (ax_lat, "Ack latency per second"),
                          (ax_err, "Error rate")):
            for i, (start, end, label) in enumerate(self.metrics.windows):
                if end >= now - self.history_s:
                    ax.axvspan(start, end, color=WINDOW_COLOR, alpha=WINDOW_ALPHA, lw=0)
                    y = 0.97 - 0.12 * (i % 3)  # stagger the labels of overlapping windows
                    ax.text(start, y, f" {label}", transform=ax.get_xaxis_transform(),
                            va="top", fontsize="x-small", color=WINDOW_COLOR)
            for t_s, label in self.metrics.events:  # button presses: a dotted line each
                if t_s >= now - self.history_s:
                    ax.axvline(t_s, color="0.4", ls=":", lw=1)
                    if ax is ax_tp:
                        ax.text(t_s, 0.03, f" {label}", transform=ax.get_xaxis_transform(),
                                rotation=90, va="bottom", fontsize="x-small", color="0.3")
            ax.set_title(title, fontsize="medium", loc="left")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if len(t):
                ax.legend(loc="upper right", fontsize="small")
            else:
                ax.text(0.5, 0.5, "no data yet: press Start", transform=ax.transAxes,
                        ha="center", va="center", color="0.5")
        return fig

    def refresh(self) -> None:
        """Redraw the figure and the status line once (the refresh thread calls this)."""
        self.update_status()
        fig = self.render_figure()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        self.image.value = buf.getvalue()
        if not self.generator.running and self.start_toggle.value:
            if self._control.acquire(blocking=False):  # not while a handler is at work
                try:
                    self._sync_toggle()  # the run ended by itself (max_seconds / max_posts)
                finally:
                    self._control.release()

    # -- refresh thread ---------------------------------------------------------------------------
    def start_refresh(self) -> None:
        """Start the background redraw (every ``refresh_s``, for at most ``max_seconds``)."""
        if self._closed.is_set() or (self._refresh_thread and self._refresh_thread.is_alive()):
            return
        self._refresh_thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                                name="lab-dashboard-refresh")
        self._refresh_thread.start()

    def _refresh_loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(max(1, int(self.max_seconds / self.refresh_s))):  # bounded in count...
            if time.monotonic() > deadline:  # ... and in time
                break
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep the dashboard alive, say why
                self.message_html.value = html.escape(f"✗ refresh: {type(exc).__name__}: {exc}")
            if self._closed.wait(self.refresh_s):
                return
        self.message_html.value = (f"live refresh ended after {self.max_seconds:g} s: "
                                   f"press Start to resume")

    @property
    def refreshing(self) -> bool:
        return self._refresh_thread is not None and self._refresh_thread.is_alive()

    def close(self) -> None:
        """Stop the load, the refresh thread and the producer; close the widgets."""
        self._closed.set()
        self.generator.stop()
        if self._refresh_thread is not None:
            self._refresh_thread.join(timeout=self.refresh_s + 30)
        _close_tree(self.widget)


def _close_tree(widget: w.Widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def iter_widgets(widget: w.Widget) -> Iterator[w.Widget]:
    """Every widget in a layout tree, depth first (tests find controls by description)."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from iter_widgets(child)
