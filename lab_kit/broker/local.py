"""Real Apache Kafka (KRaft) as detached JVM(s) on 127.0.0.1, without Docker.

Jars come from Maven Central through ``mvn`` (see ``pom.xml`` beside this file) and are
cached outside the repo. Each node is broker+controller ("combined" mode); 1 or 3 nodes.
Ports, pids and data dirs are kept in ``<state_dir>/broker.json`` so the CLI, notebooks and
tests share one cluster. Data dirs persist across stop/start, so an acked record survives
``kill -9`` and a restart.

Supply chain: ``mvn`` runs with ``--strict-checksums`` (a jar whose checksum does not match
Maven Central's fails the build), and the JVM's classpath is the list of jars Maven resolved
(``classpath.txt`` beside them), never whatever else sits in the cache folder.
Deleting: the data folder (``<state_dir>/local``) carries a marker file (:data:`MARKER`) from
its creation; :meth:`LocalBroker.setup` replaces an old data folder only if it carries the
marker (e.g. ``broker.json`` was lost), and ``down --purge`` deletes only such a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import psutil

from lab_kit import lab_env
from lab_kit.broker.base import Broker, BrokerError, NodeInfo
from lab_kit.machine import free_port, port_free, write_json_atomic

STATE_FILE = "broker.json"
#: written into every data folder this module creates: only such a folder is ever deleted
MARKER = ".lab-kit-broker-data"
#: the jars Maven resolved, one file name a line, in the jars folder
CLASSPATH_FILE = "classpath.txt"
_CHILDREN: dict[int, subprocess.Popen] = {}  # keep Popen objects so we can reap our JVMs


# --- prerequisites ------------------------------------------------------------------------
def find_java() -> str:
    """Path of the java binary (JAVA_HOME first), or a BrokerError that says how to get it."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerError(
            "java was not found: the local broker needs Java 17 or newer. Install it "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless; macOS: brew install "
            "openjdk@17; or `conda env create -f environment.yml`), or use Docker "
            "(--backend docker)."
        )
    return found


def java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        raise BrokerError(f"could not read the Java version from `{java} -version`: {text[:200]}")
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392" style
        major = int(m.group(2))
    return major


def check_java() -> tuple[str, int]:
    java = find_java()
    major = java_major(java)
    if major < lab_env.MIN_JAVA_MAJOR:
        raise BrokerError(
            f"Java {major} found at {java}, but Kafka {lab_env.KAFKA_VERSION} needs Java "
            f"{lab_env.MIN_JAVA_MAJOR} or newer. Install a newer JDK and set JAVA_HOME to it."
        )
    return java, major


def jars_dir(version: str = lab_env.KAFKA_VERSION) -> Path:
    return lab_env.cache_dir() / f"kafka-{version}" / "libs"


def resolve_jars(version: str = lab_env.KAFKA_VERSION, timeout_s: float = 900) -> Path:
    """Download (once) the broker jars with Maven; returns the folder holding them. Which of
    them make the classpath is in its ``classpath.txt`` (see :func:`broker_jars`)."""
    libs = jars_dir(version)
    marker = libs / ".complete"
    if marker.exists() and (libs / CLASSPATH_FILE).exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(
            "mvn (Apache Maven) was not found: the local broker resolves its jars with it. "
            "Install it (apt-get install maven / brew install maven / the conda env in "
            "environment.yml), or use Docker (--backend docker)."
        )
    libs.mkdir(parents=True, exist_ok=True)
    listing = libs / "classpath.mvn"
    pom = resources.files("lab_kit.broker").joinpath("pom.xml")
    with resources.as_file(pom) as pom_path:
        cmd = mvn_command(mvn, pom_path, libs, listing, version)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"mvn did not finish within {timeout_s:.0f}s") from exc
    if out.returncode != 0 or not list(libs.glob(f"kafka_2.13-{version}.jar")):
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise BrokerError(
            f"mvn could not resolve org.apache.kafka:kafka_2.13:{version} (exit "
            f"{out.returncode}). Check that Maven Central is reachable (proxy settings in "
            f"~/.m2/settings.xml).\n{tail}"
        )
    names = resolved_names(listing.read_text(), libs)
    tmp = libs / (CLASSPATH_FILE + ".tmp")
    tmp.write_text("".join(n + "\n" for n in names))
    tmp.replace(libs / CLASSPATH_FILE)
    listing.unlink(missing_ok=True)
    marker.write_text(version)
    return libs


def mvn_command(mvn: str, pom: Path, libs: Path, listing: Path,
                version: str = lab_env.KAFKA_VERSION) -> list[str]:
    """One ``mvn`` run: copy the resolved jars into ``libs`` and list them in ``listing``
    (their paths in the local repository); ``-C`` = ``--strict-checksums``."""
    return [
        mvn, "-q", "-B", "-C", "-f", str(pom),
        "dependency:copy-dependencies", "dependency:build-classpath",
        f"-DoutputDirectory={libs}", f"-Dmdep.outputFile={listing}",
        f"-Dkafka.version={version}", f"-Dslf4j.version={lab_env.SLF4J_VERSION}",
    ]


def resolved_names(listing: str, libs: Path) -> list[str]:
    """The jar file names of ``mvn dependency:build-classpath``'s output (paths joined by the
    path separator), each checked to be in ``libs``; BrokerError if one is missing."""
    names = [Path(p).name for p in listing.strip().split(os.pathsep) if p.strip()]
    missing = [n for n in names if not (libs / n).is_file()]
    if not names or missing:
        raise BrokerError(f"mvn listed jars that are not in {libs}: {missing or 'none listed'}")
    return names


def broker_jars(libs: Path | None = None) -> list[Path]:
    """The jars of the broker's classpath: those Maven resolved (``classpath.txt``), resolving
    them first if that list is missing; never any other jar in the folder."""
    libs = Path(libs) if libs else resolve_jars()
    listed = libs / CLASSPATH_FILE
    if not listed.exists():  # jars cached by an older lab_kit: list them (mvn, offline-fast)
        version = libs.parent.name.removeprefix("kafka-")
        libs = resolve_jars(version if libs == jars_dir(version) else lab_env.KAFKA_VERSION)
        listed = libs / CLASSPATH_FILE
    names = [n.strip() for n in listed.read_text().splitlines() if n.strip()]
    return [libs / n for n in names]


def broker_classpath(libs: Path | None = None) -> str:
    return os.pathsep.join(str(p) for p in broker_jars(libs))


# --- ports and processes -------------------------------------------------------------------
def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def _launched_child(pid: int | None) -> subprocess.Popen | None:
    """The ``Popen`` of a node this process launched and has not reaped, else None.

    Start-up asks this, not :func:`_our_process`: just after ``Popen`` the child can still be
    the forked Python, not yet ``exec``'d into the JVM (slow when the parent is big and the
    machine busy), and judged by its command line it would look gone."""
    if not pid:
        return None
    _reap(pid)
    return _CHILDREN.get(pid)


def _wait_exited(procs: list[psutil.Process | None], timeout_s: float) -> bool:
    """Wait until every signalled process has exited (gone, or a zombie: dead, not reaped).

    Needed because a process that got SIGKILL is not gone at once: while the kernel tears it
    down its command line already reads empty (so :func:`_our_process` no longer knows it) but
    it still holds its ports and files. ``is_running()`` also guards against pid reuse.
    """
    pending = [p for p in procs if p is not None]
    deadline = time.monotonic() + timeout_s
    while pending:
        still = []
        for p in pending:
            _reap(p.pid)
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except psutil.NoSuchProcess:
                pass
        pending = still
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _exiting_process(pid: int | None) -> psutil.Process | None:
    """The process ``pid`` if it is being torn down (alive, not a zombie, command line
    already empty: e.g. a JVM killed by someone else a moment ago), else None."""
    if not pid:
        return None
    _reap(pid)
    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE or p.cmdline() else p
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _our_process(pid: int | None, props: str) -> psutil.Process | None:
    """The live JVM we started for this node, or None (never another process reusing the pid)."""
    if not pid:
        return None
    _reap(pid)
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "kafka.Kafka" in cmd and props in cmd:
        return p
    return None


def _server_properties(node: dict, voters: str, n_nodes: int) -> str:
    rf = 1 if n_nodes == 1 else 3
    isr = 1 if n_nodes == 1 else 2
    lines = {
        "process.roles": "broker,controller",
        "node.id": node["id"],
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node['port']},"
        f"CONTROLLER://127.0.0.1:{node['controller_port']}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node['port']}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": node["log_dir"],
        "num.partitions": 3,
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        # a member killed mid-transaction blocks read_committed readers until the broker
        # aborts it: check for timed-out transactions every 2 s (default 10 s)
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": 2000,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "group.initial.rebalance.delay.ms": 0,
        # a node killed with -9 may re-register only after its old session expired: keep
        # that short so restarts in a demo take seconds, not ~10 s (default 9000/2000 ms)
        "broker.session.timeout.ms": 3000,
        "broker.heartbeat.interval.ms": 500,
        "log.cleaner.dedupe.buffer.size": 4 * 1024 * 1024,
        "log.segment.bytes": 64 * 1024 * 1024,
        # the lab creates its topics (topics.ensure_topics): a client that asks for a missing
        # one must not create it with the broker's defaults (3 partitions, no min ISR)
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


class LocalBroker(Broker):
    """A Kafka cluster of JVMs this lab started, described by its state file."""

    backend = "local"

    def __init__(self, state_dir: Path | None = None):
        self.state_dir = Path(state_dir) if state_dir else lab_env.state_dir()
        self.state_path = self.state_dir / STATE_FILE
        self.state: dict[str, Any] = {}
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())

    # --- state -------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return bool(self.state.get("nodes"))

    def _save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n['port']}" for n in self.state.get("nodes", []))

    @property
    def kafka_version(self) -> str | None:
        return self.state.get("kafka_version")

    @property
    def data_dir(self) -> str | None:
        return self.state.get("data_dir")

    def _node(self, node_id: int) -> dict:
        for n in self.state.get("nodes", []):
            if n["id"] == node_id:
                return n
        ids = [n["id"] for n in self.state.get("nodes", [])]
        raise BrokerError(f"no node {node_id}: this cluster has nodes {ids}")

    def _targets(self, node: int | None) -> list[dict]:
        if not self.exists:
            raise BrokerError("no local broker is set up: run `python -m lab_kit broker up`")
        return list(self.state["nodes"]) if node is None else [self._node(node)]

    def node_state(self, node: dict) -> tuple[str, int | None]:
        proc = _our_process(node.get("pid"), node["props"])
        if proc is None:
            return "stopped", None
        try:
            if proc.status() == psutil.STATUS_STOPPED:
                return "paused", proc.pid
        except psutil.NoSuchProcess:
            return "stopped", None
        return "running", proc.pid

    def nodes(self) -> list[NodeInfo]:
        out = []
        for n in self.state.get("nodes", []):
            state, pid = self.node_state(n)
            out.append(NodeInfo(id=n["id"], state=state, pid=pid, port=n["port"]))
        return out

    def log_hint(self) -> str:
        parts = []
        for n in self.state.get("nodes", []):
            log = Path(n["log"])
            if log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
                parts.append(f"--- last lines of {log} ---\n{tail}")
        return "\n".join(parts)

    # --- lifecycle -----------------------------------------------------------------------------
    def setup(self, nodes: int = 1, port: int | None = None) -> None:
        """Write the state, configs and formatted storage for a new cluster (no JVM yet)."""
        if nodes not in (1, 3):
            raise BrokerError(f"--nodes must be 1 or 3 (got {nodes}): KRaft needs a majority")
        if port is not None and not 1024 <= port <= 65535 - nodes:
            raise BrokerError(f"--port must be between 1024 and {65535 - nodes}, got {port}")
        java, _ = check_java()
        libs = resolve_jars()
        data_dir = self.state_dir / "local"
        node_list = []
        for i in range(1, nodes + 1):
            bport = port + i - 1 if port is not None else free_port()
            if not port_free(bport):
                raise BrokerError(
                    f"port {bport} (node {i}) is already in use on 127.0.0.1: stop what uses "
                    f"it or choose another base port with --port"
                )
            ndir = data_dir / f"node-{i}"
            node_list.append({
                "id": i, "port": bport, "controller_port": free_port(),
                "dir": str(ndir), "log_dir": str(ndir / "data"),
                "props": str(ndir / "server.properties"),
                "log": str(ndir / "kafka.log"), "pid": None,
            })
        _replace_data_dir(data_dir)
        voters = ",".join(f"{n['id']}@127.0.0.1:{n['controller_port']}" for n in node_list)
        cluster_id = _random_cluster_id()
        for n in node_list:
            Path(n["dir"]).mkdir(parents=True, exist_ok=True)
            Path(n["props"]).write_text(_server_properties(n, voters, nodes))
            out = subprocess.run(
                [java, "-cp", broker_classpath(libs), "kafka.tools.StorageTool", "format",
                 "-t", cluster_id, "-c", n["props"]],
                capture_output=True, text=True, timeout=120,
            )
            if out.returncode != 0:
                raise BrokerError(
                    f"formatting storage for node {n['id']} failed:\n{out.stdout}{out.stderr}"
                )
        self.state = {
            "backend": "local", "kafka_version": lab_env.KAFKA_VERSION, "cluster_id": cluster_id,
            "data_dir": str(data_dir), "libs": str(libs), "nodes": node_list,
            "heap": "512m" if nodes == 1 else "384m",
        }
        self._save()

    def _launch(self, n: dict) -> None:
        java, _ = check_java()
        for p in (n["port"], n["controller_port"]):
            if not port_free(p):
                raise BrokerError(
                    f"port {p} of node {n['id']} is taken by another process; free it, or run "
                    f"`python -m lab_kit broker down --purge` and `broker up` to pick new ports"
                )
        heap = self.state.get("heap", "512m")
        cmd = [
            java, f"-Xmx{heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
            "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn",
            "-cp", broker_classpath(Path(self.state["libs"])), "kafka.Kafka", n["props"],
        ]
        with open(n["log"], "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=n["dir"], start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        n["pid"] = proc.pid
        self._save()

    def start(self, node: int | None = None, wait: bool = True, timeout_s: float = 240) -> None:
        """Start stopped (or resume paused) nodes. After a kill -9 a node recovers every
        partition's log before it answers: with many topics on a loaded machine that takes
        minutes, so the wait is generous (and bounded)."""
        started = []
        for n in self._targets(node):
            state, _ = self.node_state(n)
            if state == "paused":
                self.resume(n["id"])
            elif state == "stopped":
                # killed from outside a moment ago? it may still hold the port and data dir
                _wait_exited([_exiting_process(n.get("pid"))], 10)
                try:
                    self._launch(n)
                except BrokerError:
                    self._kill_all(started)
                    raise
                started.append(n)
        if wait and started:
            live = sum(1 for s in self.nodes() if s.state == "running")
            try:
                self._wait_started(started, timeout_s, expect=live)
            except BrokerError:
                self._kill_all(started)
                raise

    def _wait_started(self, started: list[dict], timeout_s: float, expect: int) -> None:
        t0 = time.monotonic()
        for n in started:  # each started JVM must open its port (or we say why it died)
            while True:
                # a child of ours not yet reaped is alive, JVM or not yet exec'd
                if _launched_child(n.get("pid")) is None and \
                        self.node_state(n)[0] == "stopped":
                    raise BrokerError(f"node {n['id']} exited during start-up.\n{self.log_hint()}")
                with socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex(("127.0.0.1", n["port"])) == 0:
                        break
                if time.monotonic() - t0 > timeout_s:
                    raise BrokerError(
                        f"node {n['id']} did not open port {n['port']} within {timeout_s:.0f}s.\n"
                        f"{self.log_hint()}"
                    )
                time.sleep(0.2)
        remaining = max(5.0, timeout_s - (time.monotonic() - t0))
        self.wait_ready(timeout_s=remaining, expect_brokers=expect)

    def _kill_all(self, nodes: list[dict]) -> None:
        """SIGKILL the nodes of a failed start, including a child not yet exec'd."""
        others = []
        for n in nodes:
            child = _launched_child(n.get("pid"))
            if child is None:
                others.append(self._signal(n, signal.SIGKILL))
                continue
            child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
        _wait_exited(others, 10)

    def _signal(self, n: dict, sig: int) -> psutil.Process | None:
        """Send ``sig`` to the node's JVM; returns the process signalled (None if not running)."""
        proc = _our_process(n.get("pid"), n["props"])
        if proc is None:
            return None
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            return None
        return proc

    def stop(self, node: int | None = None, timeout_s: float = 30) -> None:
        """Graceful shutdown (SIGTERM); SIGKILL if a node has not exited after ``timeout_s``."""
        targets = self._targets(node)
        for n in targets:
            if self.node_state(n)[0] == "paused":
                self._signal(n, signal.SIGCONT)
        procs = [self._signal(n, signal.SIGTERM) for n in targets]
        if not _wait_exited(procs, timeout_s):
            for proc in procs:
                if proc is not None:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
            _wait_exited(procs, 10)

    def kill(self, node: int | None = None) -> None:
        """SIGKILL: the JVM dies at once, as in a power cut (data on disk stays). Returns once
        the process has exited (a JVM takes a moment to unmap its heap after the signal)."""
        _wait_exited([self._signal(n, signal.SIGKILL) for n in self._targets(node)], 10)

    def pause(self, node: int | None = None) -> None:
        """SIGSTOP: the JVM freezes; its sockets stay open but nothing answers."""
        for n in self._targets(node):
            if not self._signal(n, signal.SIGSTOP):
                raise BrokerError(f"node {n['id']} is not running, so it cannot be paused")
            self._wait_state(n, "paused")

    def resume(self, node: int | None = None) -> None:
        for n in self._targets(node):
            if self._signal(n, signal.SIGCONT):
                self._wait_state(n, "running")

    def _wait_state(self, n: dict, want: str, timeout_s: float = 5) -> None:
        """Signals are delivered asynchronously: wait until the kernel shows the new state."""
        t0 = time.monotonic()
        while self.node_state(n)[0] != want and time.monotonic() - t0 < timeout_s:
            time.sleep(0.02)

    def down(self, purge: bool = False) -> None:
        if self.exists:
            self.stop()
        if purge:
            data = self.state.get("data_dir")
            if data and Path(data).exists():
                if not _made_by_lab(Path(data), self.state_dir):
                    raise BrokerError(
                        f"{data} (the data folder {self.state_path} names) was not made by "
                        f"this lab (no {MARKER} in it): not deleted; remove it yourself")
                shutil.rmtree(data)
            self.state_path.unlink(missing_ok=True)
            self.state = {}

    def rss_bytes(self) -> dict[int, int]:
        out = {}
        for n in self.state.get("nodes", []):
            proc = _our_process(n.get("pid"), n["props"])
            if proc is not None:
                out[n["id"]] = proc.memory_info().rss
        return out


def _made_by_lab(data_dir: Path, state_dir: Path | None = None) -> bool:
    """True if this module created ``data_dir``: it holds :data:`MARKER`, or (a folder from
    before the marker) it is ``<state_dir>/local`` of a state file that names it."""
    if (data_dir / MARKER).is_file():
        return True
    return state_dir is not None and data_dir == Path(state_dir) / "local"


def _replace_data_dir(data_dir: Path) -> None:
    """Make ``data_dir`` a new, empty data folder carrying :data:`MARKER`. An old one is
    deleted only if it carries the marker (the lab made it); an empty one is reused; anything
    else is left alone: BrokerError."""
    if data_dir.exists():
        if (data_dir / MARKER).is_file():
            shutil.rmtree(data_dir)
        elif any(data_dir.iterdir()):
            raise BrokerError(
                f"{data_dir} exists, but no state file describes it and it has no {MARKER}: "
                f"this lab did not make it (or an older lab_kit did), so it is not deleted. "
                f"Move it away (or delete it yourself), or choose another LAB_STATE_DIR.")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text(
        "Made by lab_kit's local Kafka broker; `python -m lab_kit broker down --purge` "
        "deletes this folder.\n")


def _random_cluster_id() -> str:
    """22 url-safe base64 characters, like Kafka's own; never starting with "-" (the storage
    tool would read that as an option)."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def up(nodes: int = 1, port: int | None = None, state_dir: Path | None = None,
       timeout_s: float = 90) -> LocalBroker:
    """Start (or reuse) a local cluster of ``nodes`` nodes; idempotent."""
    b = LocalBroker(state_dir)
    if b.exists and len(b.state["nodes"]) != nodes:
        raise BrokerError(
            f"a {len(b.state['nodes'])}-node local broker is already set up in {b.state_dir}; "
            f"run `python -m lab_kit broker down --purge` before asking for {nodes} node(s)"
        )
    if b.exists and b.state.get("kafka_version") != lab_env.KAFKA_VERSION:
        raise BrokerError(
            f"the local broker in {b.state_dir} was made with Kafka "
            f"{b.state.get('kafka_version')}, "
            f"this lab pins {lab_env.KAFKA_VERSION}: run `python -m lab_kit broker down --purge`"
        )
    if not b.exists:
        b.setup(nodes=nodes, port=port)
    elif b.data_dir and Path(b.data_dir).is_dir() and _made_by_lab(Path(b.data_dir),
                                                                   b.state_dir):
        Path(b.data_dir, MARKER).touch()  # made before the marker existed: mark it now
    b.start(timeout_s=timeout_s)
    return b
