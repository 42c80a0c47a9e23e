"""Matplotlib figures for the async-producer lab.

Every plotting function returns a :class:`matplotlib.figure.Figure` built with
the object-oriented API (``Figure()``, not ``pyplot``): nothing is shown, nothing
global is left open, and a notebook displays the figure when it is the cell's
result (or with ``display(fig)``); scripts call ``fig.savefig(...)``.
:func:`register_notebook_display` is what lets Jupyter show such a figure; every
plotting function here calls it, and so should any other code building a ``Figure``
for a notebook (the dashboard in :mod:`lab_kit.widgets` does).

Inputs are the frames/dicts produced by :mod:`lab_kit.metrics`:
``MetricsRecorder.timeseries_frame()`` (indexed by ``t_s``),
``latency_frame()`` rows or ``summary_ms()`` dicts, ``cdf_frame()`` and
``MetricsRecorder.windows`` (``(start_s, end_s, label)`` fault windows); the
benchmark, experiment and drill results of :mod:`lab_kit.bench`,
:mod:`lab_kit.experiments` and ``lab_kit.drills`` (:func:`sync_vs_async`,
:func:`cpu_per_post`, :func:`event_timeline`, :func:`moderation_modes`,
:func:`scale_out`, :func:`overload_timeline`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    "register_notebook_display",
    "latency_percentiles",
    "latency_cdf",
    "throughput_over_time",
    "error_rate_over_time",
    "sync_vs_async",
    "cpu_per_post",
    "timeline",
    "tuning_sweep",
    "event_timeline",
    "bars",
    "moderation_modes",
    "scale_out",
    "overload_timeline",
]

FIGSIZE = (8.0, 4.0)
WINDOW_COLOR = "tab:red"
WINDOW_ALPHA = 0.15

_PERCENTILES: tuple[tuple[str, str], ...] = (
    ("p50_ms", "p50"),
    ("p90_ms", "p90"),
    ("p99_ms", "p99"),
    ("p999_ms", "p99.9"),
)

Window = tuple[float, float, str] | tuple[float, float]
Event = tuple[float, str]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def register_notebook_display() -> None:
    """Let Jupyter show a returned ``Figure`` as a PNG even when pyplot was never imported.

    Registers a PNG formatter for :class:`~matplotlib.figure.Figure` with the running
    IPython shell; a no-op outside IPython. Idempotent, so call it before building any
    figure meant for a notebook.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None and hasattr(ip, "display_formatter"):
        ip.display_formatter.formatters["image/png"].for_type(Figure, _png)


def _figure(ncols: int = 1, figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, list[Axes]]:
    register_notebook_display()
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _value(v: Any) -> float:
    """A float, or NaN for None / missing / non-numeric."""
    if v is None:
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _summary(obj: Any) -> dict[str, Any]:
    """Accept a summary dict, a latency_frame row (Series) or a latency_frame / 1-row frame."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, pd.Series):
        return obj.to_dict()
    if isinstance(obj, pd.DataFrame):
        if len(obj) == 1:
            return obj.iloc[0].to_dict()
        if "name" in obj.columns and (obj["name"] == "ack").any():
            return obj.loc[obj["name"] == "ack"].iloc[0].to_dict()
        raise ValueError("pass one latency summary per contender (a dict, a row, or a 1-row frame)")
    raise TypeError(f"unsupported latency summary: {type(obj).__name__}")


def _t(ts: pd.DataFrame) -> np.ndarray:
    """Time axis (seconds): the ``t_s`` column if present, else the index."""
    if "t_s" in ts.columns:
        return ts["t_s"].to_numpy(dtype=float)
    return ts.index.to_numpy(dtype=float)


def _interval(ts: pd.DataFrame) -> float:
    iv = ts.attrs.get("interval_s")
    if iv:
        return float(iv)
    t = _t(ts)
    if len(t) > 1:
        d = np.diff(t)
        d = d[d > 0]
        if len(d):
            return float(d.min())
    return 1.0


def _shade(ax: Axes, windows: Iterable[Window]) -> int:
    """Shade fault windows with axvspan, label them at the top; returns how many."""
    n = 0
    seen: set[str] = set()
    for w in windows or ():
        start, end = float(w[0]), float(w[1])
        label = str(w[2]) if len(w) > 2 else "fault"
        legend_label = label if label not in seen else "_nolegend_"
        seen.add(label)
        ax.axvspan(start, end, color=WINDOW_COLOR, alpha=WINDOW_ALPHA, lw=0, label=legend_label)
        ax.text(  # staggered, so overlapping windows keep readable labels
            (start + end) / 2, 0.98 - 0.07 * (n % 3), label, transform=ax.get_xaxis_transform(),
            ha="center", va="top", fontsize="small", color=WINDOW_COLOR,
        )
        n += 1
    return n


def _headroom(ax: Axes, frac: float = 0.12) -> None:
    """y from 0 with room at the top for the window labels."""
    ax.set_ylim(bottom=0)
    top = ax.get_ylim()[1]
    ax.set_ylim(0, top * (1 + frac) if top > 0 else 1)


def _events(ax: Axes, events: Iterable[Event]) -> None:
    for t, label in events or ():
        ax.axvline(float(t), color="0.3", ls=":", lw=1)
        ax.text(float(t), 0.02, f" {label}", transform=ax.get_xaxis_transform(),
                rotation=90, ha="left", va="bottom", fontsize="x-small", color="0.3")


def _legend(ax: Axes, *others: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for other in others:
        h, lab = other.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        ax.legend(handles, labels, loc="best", fontsize="small")


def _no_data(ax: Axes, what: str = "no data") -> None:
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="0.5")


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return ""
    return f"{v:.3g}"


# ---------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------


def latency_percentiles(frames: Mapping[str, pd.DataFrame | pd.Series | Mapping[str, Any]],
                        *, title: str = "Latency percentiles") -> Figure:
    """Grouped bars of p50/p90/p99/p99.9 (ms, log y) - one colour per contender.

    ``frames`` maps a contender label to a latency summary: a
    ``summary_ms()`` dict, a ``latency_frame()`` row, or a 1-row frame.
    Missing/None values leave an empty slot.
    """
    fig, (ax,) = _figure()
    labels = list(frames)
    x = np.arange(len(_PERCENTILES))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        s = _summary(frames[label])
        heights = [_value(s.get(key)) for key, _ in _PERCENTILES]
        offset = (i - (len(labels) - 1) / 2) * width
        bars = ax.bar(x + offset, heights, width, label=str(label))
        ax.bar_label(bars, labels=[_fmt(h) for h in heights], fontsize="x-small", padding=1)
    ax.set_xticks(x, [name for _, name in _PERCENTILES])
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(title)
    ax.grid(axis="y", which="both", alpha=0.3)
    if labels:
        ax.legend(fontsize="small")
    else:
        _no_data(ax)
    return fig


def latency_cdf(cdfs: Mapping[str, pd.DataFrame], *, title: str = "Latency CDF") -> Figure:
    """One CDF line per label (x: latency ms, log; y: fraction of messages <= x).

    Each frame has columns ``latency_ms`` and ``fraction`` (``cdf_frame()``).
    """
    fig, (ax,) = _figure()
    drawn = 0
    for label, df in cdfs.items():
        if df is None or len(df) == 0:
            continue
        ax.plot(df["latency_ms"].to_numpy(dtype=float), df["fraction"].to_numpy(dtype=float),
                label=str(label), drawstyle="steps-post")
        drawn += 1
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize="small", loc="lower right")
    else:
        _no_data(ax)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of messages ≤ latency")
    ax.set_title(title)
    ax.grid(which="both", alpha=0.3)
    return fig


# ---------------------------------------------------------------------------
# time series
# ---------------------------------------------------------------------------


def throughput_over_time(ts: pd.DataFrame, windows: Sequence[Window] = (), *,
                         events: Sequence[Event] = (),
                         title: str = "Delivered throughput") -> Figure:
    """``throughput_per_s`` (acked messages per second) vs ``t_s``, fault windows shaded."""
    fig, (ax,) = _figure()
    ax.plot(_t(ts), ts["throughput_per_s"].to_numpy(dtype=float), color="tab:blue",
            label="acked msgs/s", drawstyle="steps-post")
    _shade(ax, windows)
    _events(ax, events)
    _headroom(ax)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("throughput (msgs/s)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def error_rate_over_time(ts: pd.DataFrame, windows: Sequence[Window] = (), *,
                         events: Sequence[Event] = (),
                         title: str = "Delivery error rate") -> Figure:
    """``error_rate`` (%) vs ``t_s`` with shaded fault windows.

    If the frame has ``spooled`` / ``replayed`` columns they are drawn as counts
    per interval on a second y axis (right).
    """
    fig, (ax,) = _figure()
    t = _t(ts)
    ax.plot(t, ts["error_rate"].to_numpy(dtype=float) * 100.0, color="tab:red",
            label="error rate (%)", drawstyle="steps-post")
    _shade(ax, windows)
    _events(ax, events)
    _headroom(ax)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("error rate (% of completed sends)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    extra = [c for c in ("spooled", "replayed") if c in ts.columns]
    if extra:
        ax2 = ax.twinx()
        styles = {"spooled": ("tab:orange", "--"), "replayed": ("tab:green", "-.")}
        for col in extra:
            color, ls = styles[col]
            ax2.plot(t, ts[col].to_numpy(dtype=float), color=color, ls=ls,
                     label=f"{col} (count)", drawstyle="steps-post")
        _headroom(ax2)
        ax2.set_ylabel(f"messages per interval ({_interval(ts):g} s)")
        _legend(ax, ax2)
    else:
        _legend(ax)
    return fig


def timeline(ts: pd.DataFrame, columns: Sequence[str], windows: Sequence[Window] = (), *,
             events: Sequence[Event] = (), title: str = "Timeline") -> Figure:
    """Several counters as rates (per second) vs ``t_s``, fault windows shaded.

    Columns absent from ``ts`` are skipped (e.g. ``moderated`` in a run
    without moderation). Counts per interval are divided by the interval width.
    """
    fig, (ax,) = _figure()
    t = _t(ts)
    interval = _interval(ts)
    drawn = 0
    for col in columns:
        if col not in ts.columns:
            continue
        ax.plot(t, ts[col].to_numpy(dtype=float) / interval, label=col, drawstyle="steps-post")
        drawn += 1
    if not drawn:
        _no_data(ax, "none of the columns are in the frame")
    _shade(ax, windows)
    _events(ax, events)
    _headroom(ax)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("messages per second")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


# ---------------------------------------------------------------------------
# comparisons and sweeps
# ---------------------------------------------------------------------------


def sync_vs_async(results: Mapping[str, Mapping[str, Any]], *,
                  title: str = "Synchronous vs asynchronous send") -> Figure:
    """Two panels: throughput (msgs/s bars) and latency bars (ms, log).

    ``results`` maps a mode (``"sync"``, ``"async"``, ...) to a dict with any of
    ``msgs_per_s, submit_p50_ms, submit_p99_ms, ack_p50_ms, ack_p99_ms``.
    Missing keys and None values are skipped; ack groups appear only if some
    mode reports them.
    """
    fig, (ax_tp, ax_lat) = _figure(2, figsize=(10.0, 4.0))
    modes = list(results)
    colors = {m: f"C{i}" for i, m in enumerate(modes)}

    # panel 1: throughput
    xs, hs, cs = [], [], []
    for i, mode in enumerate(modes):
        v = _value(results[mode].get("msgs_per_s"))
        if math.isfinite(v):
            xs.append(i)
            hs.append(v)
            cs.append(colors[mode])
    if xs:
        bars = ax_tp.bar(xs, hs, color=cs, width=0.6)
        ax_tp.bar_label(bars, labels=[f"{h:,.0f}" for h in hs], fontsize="small", padding=1)
    else:
        _no_data(ax_tp)
    ax_tp.set_xticks(range(len(modes)), [str(m) for m in modes])
    ax_tp.set_ylabel("throughput (msgs/s)")
    ax_tp.set_title("Throughput")
    ax_tp.grid(axis="y", alpha=0.3)

    # panel 2: latency groups
    groups = [("submit_p50_ms", "submit p50"), ("submit_p99_ms", "submit p99"),
              ("ack_p50_ms", "ack p50"), ("ack_p99_ms", "ack p99")]
    groups = [(k, name) for k, name in groups
              if k.startswith("submit")
              or any(math.isfinite(_value(r.get(k))) for r in results.values())]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(modes))
    drawn = 0
    for i, mode in enumerate(modes):
        offset = (i - (len(modes) - 1) / 2) * width
        pos, hs = [], []
        for j, (key, _) in enumerate(groups):
            v = _value(results[mode].get(key))
            if math.isfinite(v) and v > 0:
                pos.append(x[j] + offset)
                hs.append(v)
        if pos:
            bars = ax_lat.bar(pos, hs, width, color=colors[mode], label=str(mode))
            ax_lat.bar_label(bars, labels=[_fmt(h) for h in hs], fontsize="x-small", padding=1)
            drawn += 1
    ax_lat.set_xticks(x, [name for _, name in groups])
    if drawn:
        ax_lat.set_yscale("log")
        ax_lat.legend(fontsize="small")
    else:
        _no_data(ax_lat)
    ax_lat.set_ylabel("latency (ms, log scale)")
    ax_lat.set_title("Latency")
    ax_lat.grid(axis="y", which="both", alpha=0.3)
    fig.suptitle(title)
    return fig


def cpu_per_post(results: Mapping[str, Mapping[str, Any]], *,
                 title: str = "Where the CPU goes, per post",
                 background: str = "background (sender thread)") -> Figure:
    """Stacked horizontal bars: CPU µs per post on the caller's thread and in the background.

    ``results`` maps a mode to a dict with ``caller_cpu_us_per_post`` and
    ``background_cpu_us_per_post`` (see :class:`lab_kit.metrics.CpuMeter`); ``background``
    labels the second bar (kafka-python: its sender thread).
    """
    background_label = background
    fig, (ax,) = _figure(1, figsize=(8.0, 0.9 + 0.6 * max(1, len(results))))
    modes = [m for m in results
             if math.isfinite(_value(results[m].get("caller_cpu_us_per_post")))]
    if not modes:
        _no_data(ax)
        return fig
    y = np.arange(len(modes))
    caller = np.array([_value(results[m]["caller_cpu_us_per_post"]) for m in modes])
    background = np.array([_value(results[m].get("background_cpu_us_per_post")) for m in modes])
    background = np.where(np.isfinite(background), background, 0.0)
    ax.barh(y, caller, color="C0", label="caller thread (submit)")
    ax.barh(y, background, left=caller, color="C1", label=background_label)
    for i, total in enumerate(caller + background):
        ax.text(total, i, f" {total:,.1f} µs", va="center", fontsize="small")
    ax.set_yticks(y, [str(m) for m in modes])
    ax.invert_yaxis()
    ax.set_xlabel("CPU time per post (µs)")
    ax.set_xlim(0, float((caller + background).max()) * 1.25)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def callback_timeline(timeline: pd.DataFrame, *,
                      title: str = "When and where each post's callback ran") -> Figure:
    """One lane per client model (``lab_kit.producer.client_models.callback_timeline``): grey
    ticks where posts were submitted, dots where their callbacks ran (one colour per thread),
    crosses where an ``await`` resumed (asyncio)."""
    fig, (ax,) = _figure(1, figsize=(9.0, 3.6))
    models = list(dict.fromkeys(timeline["model"]))
    for lane, model in enumerate(models):
        part = timeline[timeline["model"] == model]
        ax.scatter(part["submitted_at_s"] * 1e3, [lane - 0.2] * len(part), marker="|",
                   color="0.6", label="submit" if lane == 0 else None)
        for thread, rows in part.groupby("callback_thread"):
            ax.scatter(rows["callback_at_s"] * 1e3, [lane + 0.05] * len(rows), s=8,
                       label=f"callback on {thread}")
        resumed = part.dropna(subset=["resumed_at_s"])
        if len(resumed):
            ax.scatter(resumed["resumed_at_s"] * 1e3, [lane + 0.3] * len(resumed), s=8,
                       marker="x", label=f"await resumed on {resumed['resumed_thread'].iloc[0]}")
    ax.set_yticks(range(len(models)), models)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the model's first submit")
    ax.set_title(title)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig  # the constrained layout makes room for the legend (no tight_layout)


def offsets_per_user(deliveries: pd.DataFrame, *,
                     title: str = "Per-user order: a user's posts on one partition, at "
                                  "increasing offsets") -> Figure:
    """One line per user: the offset each of the user's posts got, in the order they were
    submitted (columns ``user_id``, ``submitted``, ``offset``). A line that only rises is a
    user whose posts are in order."""
    fig, (ax,) = _figure(1, figsize=(8.0, 3.5))
    for user, part in deliveries.sort_values("submitted").groupby("user_id"):
        ax.plot(range(len(part)), part["offset"].to_numpy(), marker=".", label=str(user))
    if len(deliveries) == 0:
        _no_data(ax)
    else:
        ax.legend(fontsize="small")
    ax.set_xlabel("n-th post of the user (in submit order)")
    ax.set_ylabel("offset in its partition")
    ax.set_title(title)
    return fig


def batch_outcomes(posts: pd.DataFrame, limit_bytes: int, *,
                   title: str = "Posts of one batch, split by the client: green acked, "
                                "red refused") -> Figure:
    """One bar per post of a batch (columns ``bytes``, ``outcome``), green if ``acked``, red
    otherwise, against the topic's ``max.message.bytes`` (a dashed line; log scale)."""
    fig, (ax,) = _figure(1, figsize=(8.0, 3.0))
    acked = [o == "acked" for o in posts["outcome"]]
    ax.bar(range(len(posts)), posts["bytes"],
           color=["tab:green" if ok else "tab:red" for ok in acked])
    ax.axhline(limit_bytes, ls="--", color="0.3", label="the topic's max.message.bytes")
    ax.set_xticks(range(len(posts)), [f"#{i}\n{'acked' if ok else 'refused'}"
                                      for i, ok in enumerate(acked)], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("record value (bytes)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def expiry_lanes(events: pd.DataFrame, delivery_timeout_s: float, *,
                 title: str = "Posts wait behind a held sender thread, and expire") -> Figure:
    """Three lanes over time (columns ``event``, ``at_s``): the sends, the errbacks
    (``KafkaTimeoutError``) and the callbacks (``acked``), with a ``×n`` count at each lane's
    last mark; grey while the sender thread was held (events ``sender thread held`` and
    ``sender thread free``), and a dashed line at the first send + ``delivery_timeout_s``."""
    fig, (ax,) = _figure(1, figsize=(8.0, 2.6))
    lanes = {"sent": ("send()", "tab:blue"),
             "KafkaTimeoutError": ("errback: KafkaTimeoutError", "tab:red"),
             "acked": ("callback: acked", "tab:green")}
    for lane, (event, (_, color)) in enumerate(lanes.items()):
        at = events.loc[events["event"] == event, "at_s"]
        ax.scatter(at, [lane] * len(at), color=color, s=40)
        if len(at):
            ax.annotate(f"×{len(at)}", (at.max(), lane), xytext=(6, 6),
                        textcoords="offset points")
    held = events.set_index("event")["at_s"]
    if "sender thread held" in held and "sender thread free" in held:
        ax.axvspan(held["sender thread held"], held["sender thread free"], color="0.9",
                   label="sender thread busy in a callback")
    sent = events.loc[events["event"] == "sent", "at_s"]
    if len(sent):
        ax.axvline(sent.min() + delivery_timeout_s, ls="--", color="0.3",
                   label="sent + delivery_timeout_ms")
    ax.set_yticks(range(len(lanes)), [name for name, _ in lanes.values()])
    ax.set_ylim(-0.5, len(lanes) - 0.5)
    ax.set_xlabel("seconds since the first send")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def tuning_sweep(df: pd.DataFrame, x: str, y: str, hue: str | None = None, *,
                 title: str | None = None, logx: bool = False, logy: bool = False) -> Figure:
    """Parameter sweep: ``y`` vs ``x`` as lines with markers, one line per ``hue`` value.

    Example: ``tuning_sweep(results, x="linger_ms", y="msgs_per_s", hue="acks")``.
    Points are sorted by ``x``; rows with a missing ``y`` are dropped.
    """
    fig, (ax,) = _figure()
    data = df.dropna(subset=[y])
    if hue is None:
        part = data.sort_values(x)
        ax.plot(part[x], part[y], marker="o", label=y)
    else:
        for value, part in data.groupby(hue, sort=True, dropna=False):
            part = part.sort_values(x)
            ax.plot(part[x], part[y], marker="o", label=f"{hue}={value}")
        ax.legend(title=None, fontsize="small")
    if data.empty:
        _no_data(ax)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    ax.set_title(title or f"{y} vs {x}" + (f" by {hue}" if hue else ""))
    ax.grid(alpha=0.3)
    return fig


def with_runs(fig: Figure, runs: pd.DataFrame, x: str, y: str,
              hue: str | None = None) -> Figure:
    """Each single run of ``runs`` as a faint dot behind the lines of medians that
    :func:`tuning_sweep` drew on ``fig``, in the same colours (the ``hue`` groups, sorted as
    the lines are): the scatter a difference must clear to be a finding."""
    ax = fig.axes[0]
    groups = runs.groupby(hue, sort=True) if hue else [(None, runs)]
    for i, (_, part) in enumerate(groups):
        ax.scatter(part[x], part[y], color=f"C{i}", s=14, alpha=0.35)
    return fig


_UNIT_SUFFIXES = {
    "_ms": "ms",
    "_s": "s",
    "_per_s": "per s",
    "_bytes": "bytes",
    "_kb": "KB",
    "_mb": "MB",
}


def _axis_label(column: str) -> str:
    """``linger_ms`` -> ``linger (ms)``, ``msgs_per_s`` -> ``msgs (per s)``, else as is."""
    for suffix in sorted(_UNIT_SUFFIXES, key=len, reverse=True):
        if column.endswith(suffix) and len(column) > len(suffix):
            return f"{column[: -len(suffix)].replace('_', ' ')} ({_UNIT_SUFFIXES[suffix]})"
    return column.replace("_", " ")



def event_timeline(events: pd.DataFrame, *, title: str = "One post, step by step") -> Figure:
    """Events (``event``, ``ms``, ``thread``) as points on a time axis, one row per thread."""
    fig, (ax,) = _figure(figsize=(8, 2.8))
    threads = list(dict.fromkeys(events["thread"]))
    for i, thread in enumerate(threads):
        part = events[events["thread"] == thread]
        ax.scatter(part["ms"], [i] * len(part), s=60, zorder=3, label=thread)
        for k, (_, row) in enumerate(part.iterrows()):
            below = k % 2 == 1  # alternate above/below so close events stay readable
            ax.annotate(row["event"], (row["ms"], i), textcoords="offset points",
                        xytext=(4, -14 if below else 8), fontsize="small")
    ax.set_yticks(range(len(threads)), threads, fontsize="small")
    ax.set_ylim(-0.6, len(threads) - 0.2)
    ax.set_xlabel("time since submit() was called (ms)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def bars(values: Mapping[str, float], *, ylabel: str, title: str, logy: bool = False,
         color: str | None = None) -> Figure:
    """A labelled bar chart of a few named values (e.g. ack p50 per callback variant)."""
    fig, (ax,) = _figure()
    names = list(values)
    heights = [_value(values[n]) for n in names]
    rects = ax.bar(range(len(names)), heights, color=color)
    ax.set_xticks(range(len(names)), names, rotation=10, fontsize="small")
    for rect, h in zip(rects, heights, strict=True):
        if np.isfinite(h):
            ax.annotate(_fmt(h), (rect.get_x() + rect.get_width() / 2, h), ha="center",
                        va="bottom", fontsize="small")
    if logy:
        ax.set_yscale("log")
    else:
        _headroom(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------------------
# moderation at scale (notebook 08)
# ---------------------------------------------------------------------------

__all__ += ["moderation_modes", "scale_out", "overload_timeline"]


def _bar_labels(ax: Axes, rects: Any, values: Sequence[float], fmt: str) -> None:
    ax.bar_label(rects, labels=[fmt.format(v) if math.isfinite(v) else "" for v in values],
                 fontsize="small", padding=2)


def moderation_modes(df: pd.DataFrame, *,
                     title: str = "The same backlog, moderated three ways") -> Figure:
    """Posts moderated per second per mode (log y, values on the bars); with a
    ``backend_calls`` column a second panel shows the backend calls each mode needed.

    ``df``: one row per mode with ``mode``, ``posts_per_s`` and optionally ``batch_size``,
    ``concurrency``, ``backend_calls`` (:func:`lab_kit.experiments.moderation_modes`).
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    has_calls = "backend_calls" in df.columns
    fig, axes = _figure(2 if has_calls else 1, figsize=(10.0, 4.0) if has_calls else FIGSIZE)
    names = [str(m) for m in df["mode"]]
    if {"batch_size", "concurrency"} <= set(df.columns):
        names = [f"{m}\nbatch {b} × {c} in flight" for m, b, c in
                 zip(names, df["batch_size"], df["concurrency"], strict=True)]
    x = np.arange(len(names))
    colors = [f"C{i}" for i in range(len(names))]
    panels = [(axes[0], "posts_per_s", "posts moderated per second (log scale)",
               "Throughput", "{:,.0f}/s")]
    if has_calls:
        panels.append((axes[1], "backend_calls", "backend calls (log scale)",
                       "Backend calls for the same posts", "{:,.0f}"))
    for ax, column, ylabel, subtitle, fmt in panels:
        values = [_value(v) for v in df[column]]
        positive = [v for v in values if math.isfinite(v) and v > 0]
        if positive:
            rects = ax.bar(x, values, color=colors, width=0.6)
            _bar_labels(ax, rects, values, fmt)
            ax.set_yscale("log")
            # bars from a power of ten below the smallest, room above the largest's label
            ax.set_ylim(10 ** math.floor(math.log10(min(positive) / 2)), max(positive) * 3)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            _no_data(ax)
        ax.set_xticks(x, names, fontsize="small")
        ax.set_ylabel(ylabel)
        ax.set_title(subtitle)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.suptitle(title)
    return fig


def scale_out(df: pd.DataFrame, *,
              title: str = "Scale-out: member processes of one consumer group") -> Figure:
    """Posts moderated per second per number of member processes (bars, values on them)
    and a dashed line for perfect scaling (N × the rate of the smallest N).

    ``df``: ``processes`` and ``posts_per_s`` per row (:func:`lab_kit.experiments.scale_out`).
    """
    fig, (ax,) = _figure()
    data = df.sort_values("processes")
    n = data["processes"].to_numpy(dtype=float)
    rates = np.array([_value(v) for v in data["posts_per_s"]])
    x = np.arange(len(n))
    if len(n) and np.isfinite(rates).any():
        rects = ax.bar(x, rates, color="C0", width=0.6, label="measured")
        ax.bar_label(rects, labels=[f"{v:,.0f}/s" if math.isfinite(v) else "" for v in rates],
                     label_type="center", color="white", fontweight="bold")
        if len(n) > 1 and math.isfinite(rates[0]):
            ax.plot(x, rates[0] * n / n[0], color="0.4", ls="--", marker="o",
                    label=f"perfect scaling ({n[0]:g} → N processes)")
        ax.legend(fontsize="small", loc="upper left")
    else:
        _no_data(ax)
    ax.set_xticks(x, [f"{v:g} process" + ("es" if v != 1 else "") for v in n])
    _headroom(ax, 0.2)
    ax.set_xlabel("member processes of the consumer group")
    ax.set_ylabel("posts moderated per second")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def overload_timeline(result: Mapping[str, Any], *,
                      title: str = "Overload: twice the backend's capacity") -> Figure:
    """Three panels over time for ``drill moderation-overload``'s result: posts offered vs
    moderated per second (and the backend's capacity, and rechecks per second), the lag
    (posts waiting for the stage and for the recheck worker), degraded results per second;
    the overload window is shaded on each.

    ``result``: ``timeline`` rows ``{t_s, offered, moderated, lag, degraded, ...}`` (optional
    ``recheck_lag``, ``rechecked``), ``overload_window`` ``[start_s, end_s]``, optional
    ``capacity_per_s``.
    """
    register_notebook_display()
    fig = Figure(figsize=(8.0, 7.0), layout="constrained")
    ax_rate, ax_lag, ax_deg = fig.subplots(3, 1, sharex=True)
    ts = pd.DataFrame(list(result.get("timeline") or []))
    window = result.get("overload_window")
    capacity = _value(result.get("capacity_per_s"))

    def col(name: str) -> np.ndarray | None:
        if name not in ts.columns:
            return None
        return np.array([_value(v) for v in ts[name]])

    t = ts["t_s"].to_numpy(dtype=float) if "t_s" in ts.columns else np.array([])
    drawn = 0
    for ax, columns in ((ax_rate, (("offered", "offered", "C0", "-"),
                                   ("moderated", "moderated", "C2", "-"),
                                   ("rechecked", "re-checked", "C4", ":"))),
                        (ax_lag, (("lag", "posts waiting (stage)", "C1", "-"),
                                  ("recheck_lag", "waiting for a recheck", "C4", ":"))),
                        (ax_deg, (("degraded", "degraded results", "C3", "-"),))):
        for name, label, color, ls in columns:
            y = col(name)
            if y is None:
                continue
            ax.plot(t, y, label=label, color=color, ls=ls, drawstyle="steps-post")
            drawn += 1
    if math.isfinite(capacity):
        ax_rate.axhline(capacity, color="0.3", ls="--", lw=1,
                        label=f"backend capacity {capacity:,.0f}/s")
    windows = [(float(window[0]), float(window[1]), "overload")] if window else []
    _shade(ax_rate, windows)
    for ax in (ax_lag, ax_deg):
        for start, end, _ in windows:
            ax.axvspan(start, end, color=WINDOW_COLOR, alpha=WINDOW_ALPHA, lw=0)
    for ax, ylabel in ((ax_rate, "posts per second"), (ax_lag, "posts (lag)"),
                       (ax_deg, "per second")):
        _headroom(ax)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _legend(ax)
    if not drawn:
        _no_data(ax_rate)
    ax_deg.set_xlabel("time since the load started (s)")
    fig.suptitle(title)
    return fig


__all__ += ["cpu_profile"]


def cpu_profile(profile: Mapping[str, Any], *,
                title: str = "Where the CPU goes: µs of CPU per post") -> Figure:
    """Horizontal bars, one per part of each stage, in the order a post meets them, coloured
    by stage, with the value on each bar and the total in the title; a part that was not
    measured is labelled so, not drawn as zero.

    ``profile``: ``bench pipeline``'s ``profile`` section (``rows`` of ``stage``, ``part``,
    ``cpu_us_per_post``; ``total_cpu_us_per_post``).
    """
    rows = list(profile.get("rows") or [])
    fig, (ax,) = _figure(figsize=(9.0, 0.32 * max(len(rows), 4) + 1.2))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    colors = {s: f"C{i}" for i, s in enumerate(stages)}
    y = np.arange(len(rows))[::-1]
    values = [_value(r.get("cpu_us_per_post")) for r in rows]
    finite = [v if math.isfinite(v) else 0.0 for v in values]
    ax.barh(y, finite, color=[colors[r["stage"]] for r in rows], height=0.7)
    for yi, v in zip(y, values, strict=True):
        ax.text(v if math.isfinite(v) else 0.0, yi, f" {v:.1f}" if math.isfinite(v)
                else " not measured", va="center", fontsize="small")
    ax.set_yticks(y, [r["part"] for r in rows], fontsize="small")
    if rows:
        ax.legend(handles=[Patch(color=c, label=s) for s, c in colors.items()],
                  fontsize="small", loc="lower right")
    else:
        _no_data(ax)
    total = _value(profile.get("total_cpu_us_per_post"))
    ax.set_xlim(0, max([*finite, 1.0]) * 1.25)
    ax.set_xlabel("CPU µs per post")
    ax.set_title(f"{title} (total {total:.0f})" if math.isfinite(total) else title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_cdfs(runs: dict[str, dict], slo_ms: float = 100.0):
    """Response-time CDFs (left) and latency over the run (right) of ``{label: result}``,
    where each result holds its ``load`` (a :class:`~lab_kit.harness.http_load.LoadRun`).
    Returns the Figure."""
    # pyplot here, not at the top: the other figures are built without it, and importing
    # it picks a backend; this one is shown by the notebook's inline backend
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, r in runs.items():
        lat = np.sort(np.asarray(r["load"].latencies) * 1000)
        if len(lat) == 0:
            continue
        ax1.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=label)
        ax2.plot(r["load"].offsets, np.asarray(r["load"].latencies) * 1000, ".", ms=1.5,
                 label=label)
        if r.get("outage"):
            lead, out = r["outage"]["lead_s"], r["outage"]["outage_s"]
            ax2.axvspan(lead, lead + out, color="0.5", alpha=0.15)
    ax1.axvline(slo_ms, color="grey", ls="--", lw=1)
    ax1.set(xscale="log", xlabel="HTTP response time, ms (from the intended send time)",
            ylabel="fraction of requests", title="response-time CDF")
    ax2.axhline(slo_ms, color="grey", ls="--", lw=1)
    ax2.set(yscale="log", xlabel="intended send time, s", ylabel="response time, ms",
            title="every request over the run (grey band: broker killed)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8, markerscale=6)
    fig.tight_layout()
    return fig
