"""The instructor demo's "users posting" panel: the user's side of the same story.

:class:`UsersPostingPanel` serves the post API (:mod:`lab_kit.api`) on the lab's broker, has
simulated users post to it over HTTP at a rate you set (open loop,
:func:`lab_kit.harness.http_load.run_load`, in chunks of ``chunk_s`` so a new rate applies
within seconds), and shows what those users feel, polled from the API's ``/metrics`` once a second
(:class:`lab_kit.api.UsersPostingFeed`): requests/s, accepted/s, spooled/s, the share answered
within 100 ms, broker health and spool depth. Kill the broker from the dashboard and watch the
users keep posting: answers stay fast, posts go to the API's spool and come back.

``lost`` comes from reading the panel's topic back after the API drained (:meth:`check`),
never from the server's counters.
"""

from __future__ import annotations

import html
import tempfile
import threading
import time
from typing import Any

import ipywidgets as w
import pandas as pd
from matplotlib.figure import Figure

from lab_kit import broker as lab_broker
from lab_kit import lab_env
from lab_kit.api import ApiServer, UsersPostingFeed
from lab_kit.harness.http_load import make_bodies, run_load
from lab_kit.harness.readback import AuditReport, audit
from lab_kit.plots import register_notebook_display
from lab_kit.topics import ensure_topics

__all__ = ["UsersPostingPanel"]

RATE_MIN, RATE_MAX = 10, 3_000  # users' posts per second (the slider's range)


class UsersPostingPanel:
    """An API server, users posting to it, and a live status line fed by its ``/metrics``."""

    def __init__(self, broker: Any = None, *, rate: int = 200, refresh_s: float = 1.0,
                 max_seconds: float = 600, chunk_s: float = 2.0, topic: str | None = None):
        if not RATE_MIN <= rate <= RATE_MAX:
            raise ValueError(f"rate: must be in [{RATE_MIN}, {RATE_MAX}] posts/s, got {rate!r}")
        if broker is None:

            broker = lab_broker.ensure()
        self.broker = broker
        self.topic = topic or f"lab.demo.users.{time.strftime('%H%M%S')}.{time.time_ns() % 997}"
        ensure_topics(broker.client_config(), names=(self.topic,), partitions={self.topic: 6})
        self.rate = int(rate)
        self.refresh_s, self.max_seconds, self.chunk_s = refresh_s, max_seconds, chunk_s
        self._spool_dir = tempfile.TemporaryDirectory(prefix="lab-users-spool-")
        # the API's Kafka client chatter (retries while the broker is frozen) goes to a file,
        # not into the notebook under the figure
        self.api_log = lab_env.state_dir() / "users-panel-api.log"
        self.api = ApiServer(topic=self.topic, spool_dir=self._spool_dir.name, verdicts="off",
                             bootstrap=broker.bootstrap_servers, log_path=self.api_log).start()
        self.feed = UsersPostingFeed(self.api.url)
        self.rows: list[dict[str, Any]] = []
        self.accepted_ids: list[str] = []
        self.sent = 0
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._users_stop = threading.Event()
        self._users: threading.Thread | None = None
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, daemon=True, name="lab-users-poll")
        self._build()
        self._poller.start()

    # -- the users ------------------------------------------------------------------------------
    @property
    def posting(self) -> bool:
        return self._users is not None and self._users.is_alive()

    def start_users(self) -> None:
        """Users start posting at :attr:`rate` (for at most ``max_seconds``)."""
        if self.posting or self._closed.is_set():
            return
        self._users_stop.clear()
        self._users = threading.Thread(target=self._post_loop, daemon=True, name="lab-users")
        self._users.start()
        self.toggle.value = True

    def stop_users(self) -> None:
        self._users_stop.set()
        if self._users is not None:
            self._users.join(timeout=self.chunk_s + 40)
        self.toggle.value = False

    def _post_loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        seed = 0
        while not self._users_stop.is_set() and time.monotonic() < deadline:
            seed += 1
            rate = self.rate
            run = run_load(self.api.url, make_bodies(max(1, int(rate * self.chunk_s)), seed=seed),
                           rate, self.chunk_s, connections=32, timeout_s=10.0)
            with self._lock:
                self.sent += run.sent
                self.accepted_ids += run.accepted_ids

    # -- what they feel ---------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        """One row from ``/metrics`` (rates since the previous poll), kept for the figure."""
        row = {"t_s": round(time.monotonic() - self._t0, 2), **self.feed.poll()}
        with self._lock:
            self.rows.append(row)
        return row

    def wait_for(self, condition: Any, timeout_s: float = 60.0, what: str = "the condition"
                 ) -> dict[str, Any]:
        """Wait until a polled row satisfies ``condition(row)`` (e.g. a fault took effect:
        ``row["spooled_per_s"] > 0``); return it. Raises ``TimeoutError`` naming ``what``."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            with self._lock:
                new, seen = self.rows[seen:], len(self.rows)
            for row in new:
                if condition(row):
                    return row
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
            time.sleep(0.1)

    def _poll_loop(self) -> None:
        for _ in range(max(1, int(self.max_seconds / self.refresh_s))):  # bounded in count
            try:
                self._show(self.poll())
            except Exception as exc:  # noqa: BLE001 - keep the panel alive, say why
                self.status_html.value = html.escape(f"✗ /metrics: {type(exc).__name__}: {exc}")
            if self._closed.wait(self.refresh_s):
                return

    def _show(self, row: dict[str, Any]) -> None:
        within = row["within_100ms"]
        parts = [
            "<b>users posting</b>" if self.posting else "users idle",
            f"{row['requests_per_s']:,.0f} requests/s",
            f"accepted {row['accepted_per_s']:,.0f}/s",
            f"spooled {row['spooled_per_s']:,.0f}/s",
            "answered within 100 ms: " + ("–" if within is None else f"{within:.1%}"),
            "broker " + ("✓" if row["broker_healthy"] else "✗ unreachable"),
            f"spool depth {row['spool_depth'] or 0:,.0f}",
        ]
        self.status_html.value = " · ".join(
            p if p.startswith("<b>") else html.escape(p) for p in parts)

    def frame(self) -> pd.DataFrame:
        with self._lock:
            return pd.DataFrame(self.rows).set_index("t_s") if self.rows else pd.DataFrame()

    def render_figure(self) -> Figure:
        """Requests and spooled posts per second, and the share answered within 100 ms."""
        df = self.frame()
        register_notebook_display()
        fig = Figure(figsize=(9, 4.5), layout="constrained")
        ax_rate, ax_fast = fig.subplots(2, 1, sharex=True)
        if not df.empty:
            ax_rate.plot(df.index, df["accepted_per_s"], label="accepted/s", color="tab:blue")
            ax_rate.plot(df.index, df["spooled_per_s"], label="spooled/s", color="tab:purple",
                         ls="--")
            ax_fast.plot(df.index, df["within_100ms"] * 100, ".-", color="tab:green")
            down = df.index[df["broker_healthy"] == 0]
            for ax in (ax_rate, ax_fast):
                for t in down:
                    ax.axvspan(t - self.refresh_s, t, color="tab:red", alpha=0.12, lw=0)
            ax_rate.legend(loc="upper right", fontsize="small")
        ax_rate.set_ylabel("posts/s")
        ax_rate.set_title("Users posting through the API (red: broker unreachable)",
                          fontsize="medium", loc="left")
        ax_fast.set_ylabel("within 100 ms (%)")
        ax_fast.set_ylim(0, 105)
        ax_fast.set_xlabel("time since the panel started (s)")
        for ax in (ax_rate, ax_fast):
            ax.grid(alpha=0.3)
        return fig

    def check(self, timeout_s: float = 120.0) -> AuditReport:
        """Stop the users, wait for the API to drain its spool, and read the topic back."""
        self.stop_users()
        self.api.wait_drained(timeout_s=timeout_s)
        with self._lock:
            ids = list(self.accepted_ids)
        return audit(self.broker.client_config(), self.topic, ids, timeout_s=timeout_s)

    # -- widgets -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.rate_slider = w.IntSlider(value=self.rate, min=RATE_MIN, max=RATE_MAX, step=10,
                                       description="users' posts/s")
        self.rate_slider.observe(lambda ch: setattr(self, "rate", int(ch["new"])), names="value")
        self.toggle = w.ToggleButton(value=False, description="Users post", icon="users")
        self.toggle.observe(self._on_toggle, names="value")
        self.status_html = w.HTML("users idle")
        self.widget = w.VBox([w.HTML(f"<b>Users posting</b> to {html.escape(self.api.url)}"),
                              w.HBox([self.rate_slider, self.toggle]), self.status_html])

    def _on_toggle(self, change: dict) -> None:
        if change["new"] and not self.posting:
            self.start_users()
        elif not change["new"] and self.posting:
            threading.Thread(target=self.stop_users, daemon=True).start()

    def display(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()

    def close(self) -> None:
        """Stop the users, the poller and the API (it flushes, or spools what is left)."""
        self._closed.set()
        self.stop_users()
        self._poller.join(timeout=self.refresh_s + 10)
        self.api.stop()
        self._spool_dir.cleanup()
        self.widget.close()
