"""One API condition: the post API served, driven open-loop, broken, and checked.

:func:`run_condition` serves the API (``async`` or ``blocking``, :class:`lab_kit.api.ApiServer`),
drives it with the open-loop driver (:func:`lab_kit.harness.http_load.run_load`), kills the
broker for ``outage_s`` in the ``broker_killed`` condition (:class:`~lab_kit.harness.nemesis.
Nemesis`, healed by :func:`heal`) and reads the topic back (:func:`lab_kit.harness.readback.
audit`). :func:`own_broker` is a one-node broker of the caller's own, so its kill -9 races
nobody. ``bench api`` and ``drill api-broker-outage`` are both built on it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaAdminClient

from lab_kit import broker as lab_broker
from lab_kit import lab_env
from lab_kit.api import ApiServer
from lab_kit.broker import BrokerError, local
from lab_kit.harness.http_load import _r, make_bodies, run_load
from lab_kit.harness.nemesis import Nemesis
from lab_kit.harness.readback import audit
from lab_kit.metrics import MetricsRecorder, percentiles_ms
from lab_kit.producer import api_versions_probe
from lab_kit.topics import ensure_topics

CONDITIONS = ("healthy", "broker_killed")


def run_condition(variant: str, condition: str, rate: float, seconds: float, *,
                  workers: int = 1, lead_s: float | None = None, outage_s: float = 10.0,
                  broker=None, topic_prefix: str = "lab.api", keep_topic: bool = False,
                  audit_topic: bool = True, workdir: Path | None = None,
                  warmup_s: float = 2.0, timeout_s: float = 30.0,
                  wait_ack: bool = False) -> dict[str, Any]:
    """Serve the API (``variant``), drive it open-loop, kill -9 the broker for ``outage_s``
    if ``condition == "broker_killed"``, wait for the spool to drain, stop the server
    (SIGTERM) and read the topic back. Returns the summary plus ``load`` (the LoadRun).

    ``wait_ack``: every request is ``POST /posts?wait=ack`` (201 once Kafka acknowledged or
    the spool fsynced the post) instead of the plain 202.

    ``warmup_s`` of load at the same rate first (connections, the client's first batches,
    the allocator): not measured, but its posts are audited too."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition: {condition!r} is not one of {CONDITIONS}")
    broker = broker or lab_broker.ensure()
    cfg = broker.client_config()
    topic = f"{topic_prefix}.{variant}.{condition}.{time.strftime('%H%M%S')}.{time.time_ns() % 997}"
    ensure_topics(cfg, names=(topic,), partitions={topic: 6})
    bodies = make_bodies(int(rate * (seconds + warmup_s)))
    warm, bodies = bodies[:int(rate * warmup_s)], bodies[int(rate * warmup_s):]
    tmp = tempfile.TemporaryDirectory(prefix="lab-api-") if workdir is None else None
    wd = Path(tmp.name) if tmp else workdir
    nemesis = None
    metrics = MetricsRecorder()
    try:
        server = ApiServer(variant=variant, topic=topic, workers=workers, spool_dir=wd,
                           bootstrap=broker.bootstrap_servers,
                           verdicts="off", log_path=wd / "api.log").start()
        try:
            warm_ids = run_load(server.url, warm, rate, warmup_s).accepted_ids if warm else []
            if condition == "broker_killed":
                node = broker.node_ids()[0]
                lead = lead_s if lead_s is not None else min(5.0, seconds / 4)
                nemesis = Nemesis(f"broker node {node} killed (-9)", lambda: broker.kill(node),
                                  lambda: heal(broker, node), lead, outage_s, metrics).start()
            path = "/posts?wait=ack" if wait_ack else "/posts"
            load = run_load(server.url, bodies, rate, seconds, timeout_s=timeout_s, path=path)
            if nemesis is not None:
                nemesis.join(timeout=outage_s + 300)  # a restart waits up to 240 s
            health = server.wait_drained(timeout_s=120)
            counters = server.counters()
        finally:
            code = server.stop()
        out = {"variant": variant + ("+wait=ack" if wait_ack else ""), "condition": condition,
               "workers": workers, "topic": topic,
               **load.summary(), "server_exit_code": code,
               "spool_left": health.get("spool_depth"), "in_flight_left": health.get("in_flight"),
               "server": {k.removeprefix("lab_api_"): int(v) for k, v in counters.items()
                          if k.startswith(("lab_api_posts", "lab_api_spool_replayed"))}}
        if nemesis is not None:
            out["outage"] = {"lead_s": nemesis.lead_s, "outage_s": outage_s,
                             "error": None if nemesis.error is None else repr(nemesis.error)}
            t0 = nemesis.lead_s
            during = [lat for off, lat in zip(load.offsets, load.latencies, strict=True)
                      if t0 <= off <= t0 + outage_s]
            p = percentiles_ms(during)
            out.update(p99_during_outage_ms=_r(p["p99_ms"]),
                       p999_during_outage_ms=_r(p["p999_ms"]), sent_during_outage=len(during))
        if audit_topic:
            rep = audit(cfg, topic, warm_ids + load.accepted_ids, timeout_s=120)
            out.update(lost=rep.lost, duplicates=rep.duplicates,
                       delivered_unique=rep.delivered_unique)
        out["load"] = load
        return out
    finally:
        if nemesis is not None and any(n.state != "running" for n in broker.nodes()):
            heal(broker, None)  # never leave the lab's broker down
        if not keep_topic:
            delete_topic(cfg, topic)
        if tmp is not None:
            tmp.cleanup()


#: The columns of :func:`plan_table`: what each run of a plan sent, how fast it was
#: answered, what the checker read back, and what the spool still held. (Not
#: ``delivered_unique``: it counts the warm-up's posts too, which ``accepted`` does not.)
PLAN_COLUMNS = ("sent", "achieved_rate", "p50_ms", "p99_ms", "errors", "accepted", "lost",
                "duplicates", "spool_left")


def run_plan(plan: list[tuple[str, str]], rate: float, seconds: float, *,
             blocking_seconds: float | None = None, **condition: Any) -> dict[str, dict]:
    """:func:`run_condition` for each ``(variant, condition)`` of ``plan`` in turn, on a broker
    of its own (:func:`own_broker`: a kill -9 hits no broker anybody else uses; purged
    after). ``blocking_seconds``: the load of the blocking variant, whose queue grows all run
    long. Returns ``{"variant, condition": result}``."""
    runs: dict[str, dict] = {}
    broker = own_broker()
    try:
        for variant, cond in plan:
            secs = blocking_seconds if variant == "blocking" and blocking_seconds else seconds
            runs[f"{variant}, {cond}"] = run_condition(variant, cond, rate, secs, broker=broker,
                                                       **condition)
    finally:
        broker.down(purge=True)
    return runs


def plan_table(runs: dict[str, dict]):
    """One row per run of :func:`run_plan`, the :data:`PLAN_COLUMNS` (a DataFrame)."""
    import pandas as pd

    return pd.DataFrame.from_dict({k: {c: v.get(c) for c in PLAN_COLUMNS}
                                   for k, v in runs.items()}, orient="index")


def heal(broker, node: int | None, timeout_s: float = 120) -> None:
    """Restart a killed node. On a shared broker someone else may have restarted it first
    (``start`` then finds its port taken): healed is "a broker answers on the port"."""
    try:
        broker.start(node)
        return
    except BrokerError:
        host, _, port = broker.bootstrap_servers.split(",")[0].rpartition(":")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if api_versions_probe(host, int(port)):
                return
            time.sleep(0.5)
        raise


def own_broker(name: str = "api-drill", nodes: int = 1):
    """A local broker of this harness's own, ``nodes`` nodes (state under
    LAB_STATE_DIR/<name>), so its kill -9 does not race other users of the lab's broker.
    ``.down(purge=True)`` after."""
    return local.up(nodes=nodes, state_dir=lab_env.state_dir() / name)


T = TypeVar("T")


def on_own_broker(name: str, broker, workdir: Path | None,
                  run: Callable[[Any, Path], T], nodes: int = 1) -> T:
    """``run(broker, workdir)``. Without a broker: on a broker of its own, ``nodes`` nodes
    (:func:`own_broker`, purged after); without a workdir: in a temporary folder (removed
    after). The HTTP drills' frame, and member-crash's."""
    if broker is None:
        b = own_broker(name, nodes)
        try:
            return on_own_broker(name, b, workdir, run)
        finally:
            b.down(purge=True)
    if workdir is not None:
        return run(broker, Path(workdir))
    with tempfile.TemporaryDirectory(prefix=f"lab-{name}-") as tmp:
        return run(broker, Path(tmp))


def delete_topic(cfg: dict, topic: str) -> None:
    try:
        admin = KafkaAdminClient(**cfg, request_timeout_ms=10000)
        try:
            admin.delete_topics([topic], timeout_ms=10000)
        finally:
            admin.close()
    except Exception:  # noqa: BLE001 - clean-up is best effort
        pass
