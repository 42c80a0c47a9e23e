"""The drills' nemesis: break a real process on a schedule, then heal it.

A :class:`Nemesis` gets two callables, ``strike`` and ``heal``, and runs them on its own
thread: ``strike`` ``lead_s`` after :meth:`Nemesis.start`, ``heal`` ``outage_s`` later. The
callables are the broker's fault-injection interface (:class:`lab_kit.broker.base.Broker`:
``kill(node)`` = kill -9, ``pause(node)`` = SIGSTOP, ``resume(node)``, ``start(node)``) or the
moderation backend's (``kill``/``restart``, ``set_faults``/``reset_faults``). The fault
window is marked on the drill's :class:`~lab_kit.metrics.MetricsRecorder` (shaded in plots).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab_kit.metrics import MetricsRecorder


class Nemesis:
    """Breaks something ``lead_s`` after start and heals it ``outage_s`` later (one thread).

    ``windows`` holds (start, end, label) as clock readings of the metrics recorder.
    """

    def __init__(self, label: str, strike: Callable[[], object], heal: Callable[[], object],
                 lead_s: float, outage_s: float, metrics: MetricsRecorder):
        self.label, self.strike, self.heal = label, strike, heal
        self.lead_s, self.outage_s, self.metrics = lead_s, outage_s, metrics
        self.started_at: float | None = None
        self.healed_at: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="nemesis")

    @property
    def active(self) -> bool:
        return self.started_at is not None and self.healed_at is None

    def start(self) -> Nemesis:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            time.sleep(self.lead_s)
            self.metrics.mark(f"{self.label}: start")
            self.started_at = self.metrics.clock()
            self.strike()
            time.sleep(self.outage_s)
            self.heal()
        except BaseException as exc:  # noqa: BLE001 - reported in the drill result
            self.error = exc
        finally:
            self.healed_at = self.metrics.clock()
            if self.started_at is not None:
                self.metrics.add_window(self.started_at, self.healed_at, self.label)
                self.metrics.mark(f"{self.label}: healed")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def broker_kill(broker, node: int, lead_s: float, outage_s: float, metrics: MetricsRecorder,
                what: str = "broker") -> Nemesis:
    """kill -9 of ``node``, restarted after ``outage_s`` (``what``: "broker" or "leader")."""
    return Nemesis(f"{what} node {node} killed (-9)", lambda: broker.kill(node),
                   lambda: broker.start(node), lead_s, outage_s, metrics)


def broker_pause(broker, node: int, lead_s: float, outage_s: float,
                 metrics: MetricsRecorder) -> Nemesis:
    """SIGSTOP of ``node`` (its sockets stay open), SIGCONT after ``outage_s``."""
    return Nemesis(f"broker node {node} paused (SIGSTOP)", lambda: broker.pause(node),
                   lambda: broker.resume(node), lead_s, outage_s, metrics)
