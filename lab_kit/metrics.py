"""Thread-safe delivery metrics for the StreamSocial async-producer lab.

An asynchronous producer touches its metrics from two threads:

* the caller's thread, inside ``submit()`` (how long did handing the post to
  Kafka take? how many posts were submitted?), and
* kafka-python's sender thread, inside the delivery callbacks (was the post
  acknowledged? how long after we intended to send it?).

:class:`MetricsRecorder` keeps counters, error counts, latency histograms and a
per-interval time series. Its hot path, :meth:`MetricsRecorder.observe`, is one
list append with no lock; observations are folded into the counters, histograms
and time series in numpy batches (every ``FOLD_EVERY`` observations, or when a
reader asks). The other writers (:meth:`~MetricsRecorder.incr`,
:meth:`~MetricsRecorder.record_error`, :meth:`~MetricsRecorder.record_latency`)
take one ``threading.Lock`` for a few dict updates. Everything that builds
DataFrames (``*_frame()``) or summaries is meant to be called off the hot path
(after a run, or from a UI refresh timer).

Latencies live in :class:`LatencyHistogram`, this module's own log-linear
histogram (one numpy array of counts; layout described above the class): 1 us ..
60 s with 3 significant digits (buckets at most 0.1 % wide). Values outside that
range are clamped into it and counted; mean and max are exact.
:func:`percentiles_ms` gives the same summary keys exactly, from a list of values,
and :class:`CpuMeter` measures the CPU time of a timed region (benchmarks).

Times passed as ``now=`` (and to :meth:`MetricsRecorder.add_window`) are
readings of the recorder's clock (``time.perf_counter`` by default); frames and
plots report seconds since the recorder's start (``t_s``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "HIST_LOWEST_US",
    "HIST_HIGHEST_US",
    "HIST_SIGNIFICANT_DIGITS",
    "STANDARD_COUNTERS",
    "SUMMARY_KEYS",
    "CpuMeter",
    "LatencyHistogram",
    "MetricsRecorder",
    "percentiles_ms",
]

#: Histogram range in microseconds: 1 us .. 60 s, 3 significant digits.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 60_000_000
HIST_SIGNIFICANT_DIGITS = 3

#: Counter names the producer uses (any other name is allowed too).
STANDARD_COUNTERS: tuple[str, ...] = (
    "submitted",
    "acked",
    "failed",
    "retried",
    "dead_lettered",
    "spooled",
    "replayed",
    "callback_errors",
    "rejected",
)

#: Keys of every latency summary (:meth:`LatencyHistogram.summary_ms`, :func:`percentiles_ms`).
SUMMARY_KEYS: tuple[str, ...] = (
    "count",
    "mean_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
)

_SUMMARY_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50_ms", 50.0),
    ("p90_ms", 90.0),
    ("p99_ms", 99.0),
    ("p999_ms", 99.9),
)

_US_PER_S = 1_000_000


def _empty_summary() -> dict[str, Any]:
    summary: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    summary["count"] = 0
    return summary


def percentiles_ms(values_seconds: Sequence[float]) -> dict[str, Any]:
    """Exact latency summary (same keys as :meth:`LatencyHistogram.summary_ms`).

    Sorts a copy of the values (seconds) and uses the nearest-rank definition:
    the p-th percentile is the smallest value with at least p % of the values at
    or below it. Results are in milliseconds; an empty input gives ``count=0``
    and ``None`` for everything else.
    """
    values = sorted(float(v) for v in values_seconds)
    n = len(values)
    if n == 0:
        return _empty_summary()
    out: dict[str, Any] = {"count": n, "mean_ms": math.fsum(values) / n * 1000.0}
    for key, p in _SUMMARY_PERCENTILES:
        # exact: in floats 99.9 / 100 * 1000 is 999.0000000000001, and ceil() would say 1000
        rank = max(1, math.ceil(Fraction(str(p)) * n / 100))
        out[key] = values[rank - 1] * 1000.0
    out["max_ms"] = values[-1] * 1000.0
    return {k: out[k] for k in SUMMARY_KEYS}


# ---------------------------------------------------------------------------
# LatencyHistogram
# ---------------------------------------------------------------------------
#
# Bucket layout (log-linear, the idea popularised by HdrHistogram; our own code and arrays):
# latencies are recorded as whole microseconds ``v`` in HIST_LOWEST_US .. HIST_HIGHEST_US.
#
# * ``v < 2048``: one bucket per microsecond (index ``v``), i.e. exact;
# * ``v >= 2048``: with ``k = floor(log2(v))``, the octave ``[2**k, 2**(k+1))`` is cut into
#   1024 equal sub-buckets of width ``2**(k-10)``: index ``2048 + (k-11)*1024 + (v >> (k-10))
#   - 1024``.
#
# Every bucket is therefore at most 1/1024 (< 0.1 %) of its values wide: 3 significant
# digits. 60 s needs octaves up to k = 25, so the counts are one int64 array of
# 2048 + 15 * 1024 = 17,408 slots (136 kB per histogram). A bucket reports its highest
# value (the upper edge), so percentiles err upwards by less than 0.1 %.

_EXACT_SLOTS = 2048                     # v < 2048 us: one slot per microsecond
_SUB_BUCKETS = 1024                     # slots per octave above that
_SUB_BITS = 10                          # log2(_SUB_BUCKETS)
_FIRST_OCTAVE = 11                      # log2(_EXACT_SLOTS)
_N_SLOTS = _EXACT_SLOTS + (HIST_HIGHEST_US.bit_length() - _FIRST_OCTAVE) * _SUB_BUCKETS


def _slot_of_us(us: np.ndarray) -> np.ndarray:
    """Slot index of every value (int64 microseconds, already clamped into range)."""
    octave = np.floor(np.log2(np.maximum(us, 1).astype(np.float64))).astype(np.int64)
    octave = np.maximum(octave, _FIRST_OCTAVE)  # values below 2048 us: the exact slots
    shift = octave - _SUB_BITS
    slot = _EXACT_SLOTS + (octave - _FIRST_OCTAVE) * _SUB_BUCKETS + (us >> shift) - _SUB_BUCKETS
    return np.where(us < _EXACT_SLOTS, us, slot)


def _slot_upper_edges_us() -> np.ndarray:
    """The highest microsecond value of every slot (float64, for percentile lookups)."""
    exact = np.arange(_EXACT_SLOTS, dtype=np.int64)
    j = np.arange(_N_SLOTS - _EXACT_SLOTS, dtype=np.int64)
    octave = _FIRST_OCTAVE + j // _SUB_BUCKETS
    width = np.left_shift(1, octave - _SUB_BITS)
    lowest = (_SUB_BUCKETS + j % _SUB_BUCKETS) * width
    return np.concatenate([exact, lowest + width - 1]).astype(np.float64)


_SLOT_UPPER_US = _slot_upper_edges_us()


def _empty_cdf() -> pd.DataFrame:
    return pd.DataFrame({"latency_ms": pd.Series(dtype=float), "fraction": pd.Series(dtype=float)})


class LatencyHistogram:
    """A histogram of latencies (recorded in seconds, reported in milliseconds).

    * 1 us .. 60 s at 3 significant digits (the bucket layout above); out-of-range values
      are clamped into range and counted in :attr:`clamped`.
    * ``mean_ms``, ``max_ms`` (and the 0th percentile) are exact, tracked beside the
      buckets; other percentiles are bucket upper edges, capped at the exact max.
    * Every public method is thread-safe (one lock per histogram). :meth:`record` costs a
      list append; values are folded into the buckets ``FOLD_EVERY`` at a time by numpy, or
      when a reader needs them. :meth:`record_many` records an array in one vectorised step.
    """

    __slots__ = ("_lock", "_counts", "_count", "_sum_s", "_max_s", "_min_s", "_clamped",
                 "_pending")

    #: values are buffered and folded into the buckets in vectorised batches of this size:
    #: a list append is far cheaper than bucketing one value at a time in Python
    FOLD_EVERY = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset_unlocked()

    # -- recording ---------------------------------------------------------
    def record(self, seconds: float) -> None:
        """Record one latency in seconds (negative values count as 0 and as a clamp)."""
        with self._lock:
            pending = self._pending
            pending.append(seconds)
            if len(pending) >= self.FOLD_EVERY:
                self._fold_unlocked()

    def record_many(self, seconds: np.ndarray | Sequence[float]) -> None:
        """Record many latencies (seconds) at once: one numpy pass, no per-value Python."""
        secs = np.asarray(seconds, dtype=np.float64).ravel()
        with self._lock:
            self._add_unlocked(secs)

    def _fold_unlocked(self) -> None:
        """Move values buffered by :meth:`record` into the buckets."""
        if self._pending:
            secs = np.asarray(self._pending, dtype=np.float64)
            self._pending = []
            self._add_unlocked(secs)

    def _add_unlocked(self, secs: np.ndarray) -> None:
        if secs.size == 0:
            return
        negative = secs < 0.0
        secs = np.where(negative, 0.0, secs)
        us = np.floor(secs * _US_PER_S + 0.5).astype(np.int64)
        out_of_range = negative | (us < HIST_LOWEST_US) | (us > HIST_HIGHEST_US)
        self._clamped += int(np.count_nonzero(out_of_range))
        us = np.clip(us, HIST_LOWEST_US, HIST_HIGHEST_US)
        self._counts += np.bincount(_slot_of_us(us), minlength=_N_SLOTS)
        self._count += len(secs)
        self._sum_s += float(secs.sum())
        self._max_s = max(self._max_s, float(secs.max()))
        self._min_s = min(self._min_s, float(secs.min()))

    # -- readers -----------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of recorded values."""
        with self._lock:
            self._fold_unlocked()
            return self._count

    @property
    def clamped(self) -> int:
        """How many values fell outside 1 us .. 60 s and were clamped into range."""
        with self._lock:
            self._fold_unlocked()
            return self._clamped

    def _percentiles_us_unlocked(self, ps: Iterable[float]) -> list[float]:
        """Percentile values in microseconds (bucket upper edges, capped to the exact min/max)."""
        ps = list(ps)
        self._fold_unlocked()
        if self._count == 0:
            return [math.nan] * len(ps)
        cum = np.cumsum(self._counts)
        total = int(cum[-1])
        max_us = self._max_s * _US_PER_S
        min_us = self._min_s * _US_PER_S
        out: list[float] = []
        for p in ps:
            if p >= 100.0:
                out.append(max_us)
                continue
            if p <= 0.0:
                out.append(min_us)
                continue
            target = max(1, int(p * total / 100.0 + 0.5))
            idx = int(np.searchsorted(cum, target, side="left"))
            out.append(min(max(float(_SLOT_UPPER_US[idx]), min_us), max_us))
        return out

    def percentile_ms(self, p: float) -> float:
        """The ``p``-th percentile (0..100) in ms; NaN when empty."""
        with self._lock:
            return self._percentiles_us_unlocked([p])[0] / 1000.0

    def summary_ms(self) -> dict[str, Any]:
        """``count, mean_ms, p50_ms, p90_ms, p99_ms, p999_ms, max_ms`` (None when empty)."""
        with self._lock:
            self._fold_unlocked()
            if self._count == 0:
                return _empty_summary()
            pct = self._percentiles_us_unlocked(p for _, p in _SUMMARY_PERCENTILES)
            out: dict[str, Any] = {"count": self._count,
                                   "mean_ms": self._sum_s / self._count * 1000.0}
            for (key, _), us in zip(_SUMMARY_PERCENTILES, pct, strict=True):
                out[key] = us / 1000.0
            out["max_ms"] = self._max_s * 1000.0
            return out

    def cdf(self, points: int = 200) -> pd.DataFrame:
        """Empirical CDF sampled at ``points`` log-spaced latencies between min and max.

        Columns ``latency_ms`` and ``fraction`` (share of values <= latency_ms);
        empty frame when nothing was recorded.
        """
        with self._lock:
            self._fold_unlocked()
            if self._count == 0:
                return _empty_cdf()
            nz = np.nonzero(self._counts)[0]
            counts = self._counts[nz].astype(np.float64)
            values_us = np.minimum(_SLOT_UPPER_US[nz], self._max_s * _US_PER_S)
            lo = max(self._min_s * _US_PER_S, float(HIST_LOWEST_US))
            hi = max(self._max_s * _US_PER_S, lo)
        frac = np.cumsum(counts) / counts.sum()
        grid = np.unique(np.geomspace(lo, hi, num=max(2, int(points))))
        # fraction of values <= x, read off the bucket CDF (a step function)
        idx = np.searchsorted(values_us, grid, side="right") - 1
        fraction = np.where(idx >= 0, frac[np.clip(idx, 0, None)], 0.0)
        fraction[-1] = 1.0
        return pd.DataFrame({"latency_ms": grid / 1000.0, "fraction": fraction})

    # -- maintenance -------------------------------------------------------
    def _reset_unlocked(self) -> None:
        self._pending: list[float] = []
        self._counts = np.zeros(_N_SLOTS, dtype=np.int64)
        self._count = 0
        self._sum_s = 0.0
        self._max_s = -math.inf
        self._min_s = math.inf
        self._clamped = 0

    def reset(self) -> None:
        """Forget every recorded value."""
        with self._lock:
            self._reset_unlocked()

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add every value of ``other`` into this histogram; returns ``self``."""
        with other._lock:  # copy first, so the two locks are never held together
            other._fold_unlocked()
            counts = other._counts.copy()
            count, sum_s, max_s, min_s = other._count, other._sum_s, other._max_s, other._min_s
            clamped = other._clamped
        if count == 0:
            return self
        with self._lock:
            self._counts += counts
            self._count += count
            self._sum_s += sum_s
            self._max_s = max(self._max_s, max_s)
            self._min_s = min(self._min_s, min_s)
            self._clamped += clamped
        return self

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        return LatencyHistogram().merge(self)

    def __repr__(self) -> str:
        s = self.summary_ms()
        if not s["count"]:
            return "LatencyHistogram(count=0)"
        return (f"LatencyHistogram(count={s['count']}, p50={s['p50_ms']:.3f} ms, "
                f"p99={s['p99_ms']:.3f} ms, max={s['max_ms']:.3f} ms)")


# ---------------------------------------------------------------------------
# MetricsRecorder
# ---------------------------------------------------------------------------


class _Bucket:
    """Per-interval counters plus count/sum/max of the time-series latencies."""

    __slots__ = ("counts", "lat")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lat: dict[str, list[float]] = {}  # name -> [n, sum_s, max_s]

    def add_latency(self, name: str, n: int, sum_s: float, max_s: float) -> None:
        agg = self.lat.get(name)
        if agg is None:
            self.lat[name] = [n, sum_s, max_s]
        else:
            agg[0] += n
            agg[1] += sum_s
            if max_s > agg[2]:
                agg[2] = max_s


def _num(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


class MetricsRecorder:
    """Counters, latency histograms and a per-interval time series, safe across threads.

    Parameters
    ----------
    interval_s:
        Width of a time-series bucket in seconds.
    clock:
        Monotonic clock returning seconds (``time.perf_counter``); tests inject a fake.
    max_buckets:
        Time-series memory cap; when exceeded the oldest buckets are dropped
        (totals and histograms are unaffected).
    timeseries_latencies:
        Latency names whose per-bucket mean/max are kept (columns
        ``<name>_mean_ms`` / ``<name>_max_ms``); ``("ack",)`` by default.

    Hot path: :meth:`observe` (one list append, no lock). :meth:`record_latency`,
    :meth:`incr` and :meth:`record_error` are cheap too (one short locked section).
    """

    SUBMIT = "submit"
    ACK = "ack"

    def __init__(
        self,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
        *,
        max_buckets: int = 3600,
        timeseries_latencies: Iterable[str] = ("ack",),
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if max_buckets < 1:
            raise ValueError("max_buckets must be >= 1")
        self.interval_s = float(interval_s)
        self.clock = clock
        self.max_buckets = int(max_buckets)
        self._ts_latencies = frozenset(timeseries_latencies)
        self._lock = threading.Lock()
        self._init_state()

    def _init_state(self) -> None:
        self.start: float = self.clock()
        self._hists: dict[str, LatencyHistogram] = {}
        self._obs: dict[tuple[str, str], list[complex]] = {}
        self._counters: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._cur_idx: int | None = None
        self._cur_bucket: _Bucket | None = None
        self._dropped_below = 0  # bucket indexes below this were dropped (cap)
        self._events: list[tuple[float, str]] = []
        self._windows: list[tuple[float, float, str]] = []
        self._open_windows: dict[str, float] = {}

    # -- time-series plumbing (call with the lock held) ---------------------
    def _bucket_unlocked(self, now: float) -> _Bucket | None:
        idx = int((now - self.start) / self.interval_s)
        if idx < 0:
            idx = 0
        if idx == self._cur_idx:
            return self._cur_bucket
        bucket = self._buckets.get(idx)
        if bucket is None:
            if idx < self._dropped_below:
                return None  # older than what the cap retains
            bucket = self._buckets[idx] = _Bucket()
            while len(self._buckets) > self.max_buckets:
                oldest = min(self._buckets)
                del self._buckets[oldest]
                self._dropped_below = oldest + 1
                if oldest == self._cur_idx:
                    self._cur_idx = self._cur_bucket = None
            if idx < self._dropped_below:  # the new bucket itself was the oldest
                return None
        if self._cur_idx is None or idx >= self._cur_idx:
            self._cur_idx, self._cur_bucket = idx, bucket
        return bucket

    # -- hot path ------------------------------------------------------------
    def record_latency(self, name: str, seconds: float, now: float | None = None) -> None:
        """Record a latency (seconds) into histogram ``name`` (``"submit"``, ``"ack"``, ...).

        ``now`` (a clock reading) places it in the time series; only used for
        the names in ``timeseries_latencies``.
        """
        track = name in self._ts_latencies
        if track and now is None:
            now = self.clock()
        with self._lock:
            hist = self._hists.get(name)
            if hist is None:
                hist = self._hists[name] = LatencyHistogram()
            hist.record(seconds)
            if track:
                bucket = self._bucket_unlocked(now)  # type: ignore[arg-type]
                if bucket is not None:
                    bucket.add_latency(name, 1, seconds, seconds)

    #: observations buffered per (counter, latency) before a vectorised fold
    FOLD_EVERY = 4096

    def observe(self, counter: str, latency: str, seconds: float, now: float) -> None:
        """``incr(counter)`` + ``record_latency(latency, seconds)``, for the hot path.

        Costs one list append (atomic under the GIL, no lock): observations are folded into
        the histogram, counters and time series in numpy batches, by whoever reads next or
        every ``FOLD_EVERY`` observations. The pair (seconds, now) is packed as one complex
        number rather than a tuple: a float pair the garbage collector never has to track
        (tuples it does), which matters at tens of thousands of posts per second.
        """
        pending = self._obs.get((counter, latency))
        if pending is None:
            with self._lock:
                pending = self._obs.setdefault((counter, latency), [])
        pending.append(complex(seconds, now))
        if len(pending) >= self.FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Fold buffered observations in (readers call this; safe from any thread)."""
        with self._lock:
            self._fold_unlocked()

    def _fold_unlocked(self) -> None:
        for (counter, latency), pending in list(self._obs.items()):
            n = len(pending)
            if n == 0:
                continue
            chunk = pending[:n]
            del pending[:n]  # one C call: appends racing with it land after index n, kept
            arr = np.asarray(chunk, dtype=np.complex128)
            secs, nows = arr.real.copy(), arr.imag.copy()
            hist = self._hists.get(latency)
            if hist is None:
                hist = self._hists[latency] = LatencyHistogram()
            hist.record_many(secs)
            self._counters[counter] = self._counters.get(counter, 0) + n
            idx = np.maximum(((nows - self.start) / self.interval_s).astype(np.int64), 0)
            track = latency in self._ts_latencies
            for u, first in zip(*np.unique(idx, return_index=True), strict=True):
                bucket = self._bucket_unlocked(float(nows[first]))
                if bucket is None:
                    continue
                sel = secs[idx == u]
                bucket.counts[counter] = bucket.counts.get(counter, 0) + len(sel)
                if track:
                    bucket.add_latency(latency, len(sel), float(sel.sum()), float(sel.max()))

    def counters_fast(self, name: str) -> int:
        """One counter's value without folding buffered observations (for rare paths)."""
        return self._counters.get(name, 0)

    def incr(self, name: str, n: int = 1, now: float | None = None) -> None:
        """Add ``n`` to counter ``name`` (total and the current time-series bucket)."""
        if now is None:
            now = self.clock()
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n
            bucket = self._bucket_unlocked(now)
            if bucket is not None:
                bucket.counts[name] = bucket.counts.get(name, 0) + n

    def record_error(self, error_type: str, now: float | None = None) -> None:
        """Count one failed delivery: ``failed`` += 1 and ``errors_by_type()[error_type]`` += 1."""
        if now is None:
            now = self.clock()
        with self._lock:
            self._counters["failed"] = self._counters.get("failed", 0) + 1
            self._errors[error_type] = self._errors.get(error_type, 0) + 1
            bucket = self._bucket_unlocked(now)
            if bucket is not None:
                bucket.counts["failed"] = bucket.counts.get("failed", 0) + 1

    # -- events and fault windows -------------------------------------------
    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the recorder's start (``now`` is a clock reading)."""
        return (self.clock() if now is None else now) - self.start

    def mark(self, label: str, now: float | None = None) -> float:
        """Record a named event (e.g. ``"broker killed"``); returns its ``t_s``."""
        t = self.elapsed(now)
        with self._lock:
            self._events.append((t, label))
        return t

    def add_window(self, start: float, end: float, label: str, *, relative: bool = False) -> None:
        """Add a fault window to shade in plots.

        ``start``/``end`` are clock readings (like ``now=``), or seconds since the
        recorder's start when ``relative=True``.
        """
        if not relative:
            start, end = start - self.start, end - self.start
        if end < start:
            start, end = end, start
        with self._lock:
            self._windows.append((float(start), float(end), str(label)))

    def open_window(self, label: str, now: float | None = None) -> None:
        """Start a fault window now; close it with :meth:`close_window` (same label)."""
        t = self.elapsed(now)
        with self._lock:
            self._open_windows[label] = t

    def close_window(self, label: str, now: float | None = None) -> None:
        """End the window opened with :meth:`open_window` (KeyError if none is open)."""
        t = self.elapsed(now)
        with self._lock:
            start = self._open_windows.pop(label)
            self._windows.append((start, max(start, t), label))

    @property
    def windows(self) -> list[tuple[float, float, str]]:
        """Fault windows ``(start_s, end_s, label)``; still-open ones end at the current time."""
        now = self.elapsed()
        with self._lock:
            out = list(self._windows)
            out += [(s, max(s, now), label) for label, s in self._open_windows.items()]
        return sorted(out)

    @property
    def events(self) -> list[tuple[float, str]]:
        """Marked events ``(t_s, label)`` in time order."""
        with self._lock:
            return sorted(self._events)

    def events_frame(self) -> pd.DataFrame:
        """Marked events as a DataFrame with columns ``t_s, label``."""
        ev = self.events
        return pd.DataFrame({"t_s": pd.Series([t for t, _ in ev], dtype=float),
                             "label": pd.Series([lbl for _, lbl in ev], dtype=object)})

    # -- readers / exports (off the hot path) --------------------------------
    def counters(self) -> dict[str, int]:
        """Totals: the standard counter names (0 if unused) plus any other name seen."""
        self.fold()
        with self._lock:
            out = dict.fromkeys(STANDARD_COUNTERS, 0)
            out.update(self._counters)
        return out

    def errors_by_type(self) -> dict[str, int]:
        """Failed deliveries per error type (as passed to :meth:`record_error`)."""
        with self._lock:
            return dict(self._errors)

    def histogram(self, name: str) -> LatencyHistogram:
        """A copy of histogram ``name`` (empty if never recorded)."""
        self.fold()
        with self._lock:
            hist = self._hists.get(name)
        return LatencyHistogram() if hist is None else hist.copy()

    def latency_names(self) -> list[str]:
        self.fold()
        with self._lock:
            return list(self._hists)

    def summary_ms(self, name: str) -> dict[str, Any]:
        """Latency summary of histogram ``name`` (``count=0`` if never recorded)."""
        self.fold()
        with self._lock:
            hist = self._hists.get(name)
        return hist.summary_ms() if hist is not None else _empty_summary()

    def latency_frame(self) -> pd.DataFrame:
        """One row per histogram: ``name`` + the summary keys (+ ``clamped``)."""
        self.fold()
        with self._lock:
            hists = list(self._hists.items())
        rows = [{"name": name, **h.summary_ms(), "clamped": h.clamped} for name, h in hists]
        df = pd.DataFrame(rows, columns=["name", *SUMMARY_KEYS, "clamped"])
        float_cols = [k for k in SUMMARY_KEYS if k != "count"]
        df[float_cols] = df[float_cols].astype(float)
        df["count"] = df["count"].astype(int)
        df["clamped"] = df["clamped"].astype(int)
        return df

    def cdf_frame(self, name: str, points: int = 200) -> pd.DataFrame:
        """CDF of histogram ``name`` (``latency_ms``, ``fraction``); empty if unknown."""
        self.fold()
        with self._lock:
            hist = self._hists.get(name)
        return (hist if hist is not None else LatencyHistogram()).cdf(points)

    def timeseries_frame(self) -> pd.DataFrame:
        """Per-interval series indexed by ``t_s`` (bucket start, seconds since start).

        One column per counter name seen (counts in that interval, gaps filled
        with 0), ``<name>_mean_ms``/``<name>_max_ms`` for the tracked latencies
        (NaN where none), plus ``throughput_per_s`` (acked per second) and
        ``error_rate`` (failed / (acked + failed), 0 when neither). The last
        row is usually a partial interval. ``df.attrs["interval_s"]`` holds the
        bucket width.
        """
        self.fold()
        with self._lock:
            names = list(self._counters)
            lat_names = sorted(self._ts_latencies & set(self._hists))
            items = sorted(
                (idx, dict(b.counts), {k: tuple(v) for k, v in b.lat.items()})
                for idx, b in self._buckets.items()
            )
        cols = list(names)
        for lat in lat_names:
            cols += [f"{lat}_mean_ms", f"{lat}_max_ms"]
        if items:
            first, last = items[0][0], items[-1][0]
            idxs = range(first, last + 1)
            by_idx = {i: (c, lat) for i, c, lat in items}
            data: dict[str, list[float]] = {c: [] for c in cols}
            for i in idxs:
                counts, lat = by_idx.get(i, ({}, {}))
                for name in names:
                    data[name].append(counts.get(name, 0))
                for ln in lat_names:
                    agg = lat.get(ln)
                    data[f"{ln}_mean_ms"].append(agg[1] / agg[0] * 1000.0 if agg else math.nan)
                    data[f"{ln}_max_ms"].append(agg[2] * 1000.0 if agg else math.nan)
            index = pd.Index([i * self.interval_s for i in idxs], name="t_s", dtype=float)
            df = pd.DataFrame(data, index=index, columns=cols)
        else:
            df = pd.DataFrame({c: pd.Series(dtype=float) for c in cols},
                              index=pd.Index([], name="t_s", dtype=float))
        for name in names:
            df[name] = df[name].astype("int64")
        acked = df["acked"] if "acked" in df else pd.Series(0, index=df.index, dtype="int64")
        failed = df["failed"] if "failed" in df else pd.Series(0, index=df.index, dtype="int64")
        df["throughput_per_s"] = acked.astype(float) / self.interval_s
        done = (acked + failed).astype(float)
        df["error_rate"] = (failed.astype(float) / done.where(done > 0)).fillna(0.0)
        df.attrs["interval_s"] = self.interval_s
        return df

    @staticmethod
    def client_metrics_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
        """Flatten ``KafkaProducer.metrics()`` (``{group: {name: value}}``) to rows.

        Columns ``group, name, value``; only numeric values are kept (bools and
        strings are dropped; infinities - kafka-python's "no sample yet" - become NaN).
        Deeper nesting is joined into ``name`` with dots.
        """
        rows: list[tuple[str, str, float]] = []

        def walk(group: str, prefix: str, d: Mapping[str, Any]) -> None:
            for key, value in d.items():
                name = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(value, Mapping):
                    walk(group, name, value)
                elif _num(value):
                    v = float(value)
                    rows.append((group, name, v if math.isfinite(v) else math.nan))

        for group, entries in (metrics or {}).items():
            if isinstance(entries, Mapping):
                walk(str(group), "", entries)
            elif _num(entries):
                v = float(entries)
                rows.append((str(group), "", v if math.isfinite(v) else math.nan))
        df = pd.DataFrame(rows, columns=["group", "name", "value"])
        df["value"] = df["value"].astype(float)
        return df.sort_values(["group", "name"], ignore_index=True)

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain, JSON-serialisable Python (for benchmark result files)."""
        self.fold()
        elapsed = self.elapsed()
        windows = self.windows
        with self._lock:
            counters = dict.fromkeys(STANDARD_COUNTERS, 0)
            counters.update(self._counters)
            hists = list(self._hists.items())
            errors = dict(self._errors)
            events = sorted(self._events)
        latency = {name: h.summary_ms() for name, h in hists}
        clamped = {name: h.clamped for name, h in hists}
        return {
            "interval_s": self.interval_s,
            "elapsed_s": elapsed,
            "counters": counters,
            "latency_ms": latency,
            "clamped": clamped,
            "errors_by_type": errors,
            "events": [[t, label] for t, label in events],
            "windows": [[s, e, label] for s, e, label in windows],
        }

    def reset(self) -> None:
        """Clear everything and restart the clock (``t_s`` 0 = now)."""
        with self._lock:
            self._init_state()

    def __repr__(self) -> str:
        c = self.counters()
        return (f"MetricsRecorder(submitted={c['submitted']}, acked={c['acked']}, "
                f"failed={c['failed']}, elapsed={self.elapsed():.1f}s)")


class CpuMeter:
    """CPU time of a timed region: the caller's thread and the whole process.

    ``CpuMeter().start()`` before the region, ``.fields(posts, elapsed_s)`` after it. A Python
    producer is bound by one core (the GIL): the caller thread and the client's sender thread
    take turns. CPU microseconds per post, split by thread, say where the time goes;
    ``background`` is everything but the caller (kafka-python: its sender thread; confluent-
    kafka: librdkafka's C threads). ``cores_busy`` near 1 means CPU-bound.
    """

    def start(self) -> CpuMeter:
        self._process, self._thread = time.process_time(), time.thread_time()
        return self

    def fields(self, posts: int, elapsed_s: float) -> dict[str, float]:
        process = time.process_time() - self._process
        caller = time.thread_time() - self._thread
        return {"cpu_us_per_post": round(process / posts * 1e6, 2),
                "caller_cpu_us_per_post": round(caller / posts * 1e6, 2),
                "background_cpu_us_per_post": round((process - caller) / posts * 1e6, 2),
                "cores_busy": round(process / elapsed_s, 2)}
