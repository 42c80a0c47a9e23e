"""A live JupyterLab dashboard for the async-producer lab.

Two pieces, both usable without a browser (the tests drive them headlessly):

* :class:`LoadGenerator` (:mod:`lab_kit.harness.load_generator`, re-exported here) feeds an
  :class:`~lab_kit.producer.AsyncPostProducer` from a background thread at a target rate, open
  loop; the rate is re-read on every tick, so moving the slider changes the load at once. When a
  run ends, its posts are read back from the topic: ``lost`` comes from that read.
* :class:`Dashboard` puts sliders, fault buttons, a status line and a three-panel live figure
  (throughput, ack latency p50 and p99 per second, error rate, fault windows shaded) in one
  ipywidgets layout::

      from lab_kit.widgets import Dashboard
      Dashboard().display()

Every button handler is a plain method (``on_pause_clicked()``, ...), so a test or a notebook cell
can press a button without a browser. :meth:`Dashboard.timeseries_frame` is the table the figure
draws: the generator's per-second counts plus ``ack_p50_ms`` and ``ack_p99_ms`` of each second
(:class:`WindowPercentiles`), the percentiles the lessons teach, never a mean.
"""

from __future__ import annotations

import html
import io
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import ipywidgets as w
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lab_kit import broker as lab_broker
from lab_kit.harness.load_generator import LoadGenerator
from lab_kit.metrics import MetricsRecorder, percentiles_ms
from lab_kit.plots import WINDOW_ALPHA, WINDOW_COLOR, register_notebook_display
from lab_kit.producer import CloseReport

__all__ = ["ACKS_OPTIONS", "Dashboard", "LoadGenerator", "RATE_MAX", "RATE_MIN",
           "WindowPercentiles"]

RATE_MIN, RATE_MAX = 100, 20_000  # posts per second (the slider's range)
ACKS_OPTIONS: tuple[tuple[str, str | int], ...] = (("all", "all"), ("1", 1), ("0", 0))
SLOW_BACKEND_MS = 300


# --------------------------------------------------------------------------------------------
# p50 and p99 per window
# --------------------------------------------------------------------------------------------
class WindowPercentiles(MetricsRecorder):
    """A :class:`~lab_kit.metrics.MetricsRecorder` that also keeps, for every time-series
    window (``interval_s`` wide, the same windows as :meth:`timeseries_frame`), the p50 and
    p99 of one latency (``"ack"``): nearest rank over that window's own values
    (:func:`lab_kit.metrics.percentiles_ms`), as the lessons compute them.

    Percentiles do not add up, so they cannot be derived from the per-window mean and max the
    base class keeps: each latency is also appended (one list append, no lock, as in
    :meth:`observe`) to a buffer; a window's values are kept until the window is over, then
    reduced to four numbers (``acks``, ``p50_ms``, ``p99_ms``, ``max_ms``). A window with fewer
    than 100 acks has its maximum as its p99 (nearest rank).
    """

    def __init__(self, *args: Any, latency: str = "ack", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latency = latency
        self._pct_lock = threading.Lock()
        self._pct_reset()

    def _pct_reset(self) -> None:
        self._pct_pending: list[complex] = []  # (seconds, now) packed, as the base class does
        self._pct_open: dict[int, list[np.ndarray]] = {}  # window index -> latencies (s)
        self._pct_done: dict[int, tuple[int, float, float, float]] = {}

    def observe(self, counter: str, latency: str, seconds: float, now: float) -> None:
        if latency == self.latency:
            self._pct_pending.append(complex(seconds, now))
        super().observe(counter, latency, seconds, now)

    def record_latency(self, name: str, seconds: float, now: float | None = None) -> None:
        if name == self.latency:
            now = self.clock() if now is None else now
            self._pct_pending.append(complex(seconds, now))
        super().record_latency(name, seconds, now)

    def reset(self) -> None:
        with self._pct_lock:
            super().reset()
            self._pct_reset()

    def _pct_fold_unlocked(self) -> None:
        pending = self._pct_pending
        n = len(pending)
        if n:
            arr = np.asarray(pending[:n], dtype=np.complex128)
            del pending[:n]  # appends racing with this land after index n and are kept
            secs = arr.real
            idx = np.maximum(((arr.imag - self.start) / self.interval_s).astype(np.int64), 0)
            for i in np.unique(idx):
                if int(i) not in self._pct_done:  # (a value later than its window's end: dropped)
                    self._pct_open.setdefault(int(i), []).append(secs[idx == i])
        # a window two intervals in the past gets no more values: reduce it to its numbers
        current = int(max(self.clock() - self.start, 0.0) / self.interval_s)
        for i in [i for i in self._pct_open if i < current - 1]:
            self._pct_done[i] = self._reduce(self._pct_open.pop(i))
        while len(self._pct_done) > self.max_buckets:
            del self._pct_done[min(self._pct_done)]

    @staticmethod
    def _reduce(chunks: list[np.ndarray]) -> tuple[int, float, float, float]:
        values = np.concatenate(chunks)
        p = percentiles_ms(values)
        return p["count"], p["p50_ms"], p["p99_ms"], p["max_ms"]

    def percentile_frame(self) -> pd.DataFrame:
        """One row per window that saw the latency, indexed by ``t_s`` (window start, seconds
        since start, as in :meth:`timeseries_frame`): ``acks``, ``p50_ms``, ``p99_ms``,
        ``max_ms``. The window in progress is included, computed from what it holds so far."""
        with self._pct_lock:
            self._pct_fold_unlocked()
            rows = dict(self._pct_done)
            rows.update({i: self._reduce(chunks) for i, chunks in self._pct_open.items()})
        index = pd.Index([i * self.interval_s for i in sorted(rows)], name="t_s", dtype=float)
        cols = ("acks", "p50_ms", "p99_ms", "max_ms")
        frame = pd.DataFrame([rows[i] for i in sorted(rows)], index=index, columns=list(cols))
        return frame.astype({"acks": "int64", "p50_ms": float, "p99_ms": float,
                             "max_ms": float})


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
    broker fault buttons act on; ``backend`` is a :class:`~lab_kit.moderation.backend.
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
            broker = lab_broker.ensure()
        self.broker = broker
        self.backend = backend
        cfg = dict(broker.client_config()) if broker is not None else {}
        if bootstrap_servers is not None:
            cfg["bootstrap_servers"] = bootstrap_servers
        bootstrap = cfg.pop("bootstrap_servers")
        self.refresh_s = float(refresh_s)
        #: how long each redraw took, ms: it runs in this process, and while matplotlib draws,
        #: the load generator and the Kafka client's threads mostly wait for the GIL
        self.refresh_ms: list[float] = []
        self.max_seconds = float(max_seconds)
        self.history_s = float(history_s)
        self.generator = LoadGenerator(bootstrap, topic, spool_path=spool_path,
                                       max_seconds=max_seconds, max_posts=max_posts,
                                       kafka_config=cfg)
        # before any producer exists: every producer the generator creates records into this
        # one, which also keeps the p50 and p99 of each second's acks for the latency panel
        self.generator.metrics = WindowPercentiles()
        self.metrics: WindowPercentiles = self.generator.metrics
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
        from IPython.display import display  # only a notebook shows the dashboard

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
        snap["last_second"] = self.last_second()
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
        last = s["last_second"]
        if last is not None and not math.isnan(last["p99_ms"]):
            parts.append(f"ack p50 {last['p50_ms']:.1f} ms, p99 {last['p99_ms']:.1f} ms "
                         f"(second {last['t_s']:g})")
        if s["rejected"] or s["skipped"]:
            parts.append(f"rejected {s['rejected']:,}, skipped {s['skipped']:,}")
        if s["ended"] and not s["running"]:
            parts.append(f"last run: {s['ended']}, {self._lost_text()}")
        if s["error"]:
            parts.append(f"error: {s['error']}")
        self.status_html.value = " · ".join(
            p if p.startswith("<b>") else html.escape(p) for p in parts)
        return s

    def timeseries_frame(self) -> pd.DataFrame:
        """What the figure draws, one row per second (``t_s``): the generator's counts
        (submitted, acked, spooled ...), ``throughput_per_s``, ``error_rate``, and the ack
        latency of that second as ``ack_p50_ms`` and ``ack_p99_ms`` (NaN in a second
        without acks)."""
        ts = self.metrics.timeseries_frame()
        pct = self.metrics.percentile_frame()
        ts = ts.join(pct[["p50_ms", "p99_ms"]].rename(columns=lambda c: f"ack_{c}"), how="left")
        ts = ts.drop(columns=["ack_mean_ms", "ack_max_ms"], errors="ignore")
        ts.attrs["interval_s"] = self.metrics.interval_s
        return ts

    def last_second(self) -> dict[str, Any] | None:
        """``t_s``, ``acks``, ``p50_ms``, ``p99_ms`` of the last whole second with acks (None
        before the first): what the status line shows."""
        pct = self.metrics.percentile_frame()
        whole = pct[pct.index + self.metrics.interval_s <= self.metrics.elapsed()]
        if whole.empty:
            return None
        t_s, row = whole.index[-1], whole.iloc[-1]
        return {"t_s": float(t_s), "acks": int(row["acks"]), "p50_ms": float(row["p50_ms"]),
                "p99_ms": float(row["p99_ms"])}

    def render_figure(self) -> Figure:
        """Three panels over time: throughput, ack latency (p50 and p99 of each second),
        error rate; fault windows shaded."""
        ts = self.timeseries_frame()
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
        ax_lat.plot(t, col("ack_p50_ms"), ".-", label="p50", color="tab:green")
        ax_lat.plot(t, col("ack_p99_ms"), ".-", label="p99", color="tab:orange")
        ax_lat.set_ylabel("ack latency (ms)")
        ax_err.plot(t, col("error_rate", 100.0), label="error rate", color="tab:red")
        ax_err.set_ylabel("errors (%)")
        ax_err.set_xlabel("time since start (s)")
        for ax, title in ((ax_tp, "Throughput"),
                          (ax_lat, "Ack latency of each second's acks: p50 and p99"),
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
        t0 = time.perf_counter()
        self.update_status()
        fig = self.render_figure()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        self.image.value = buf.getvalue()
        self.refresh_ms.append((time.perf_counter() - t0) * 1000)
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
