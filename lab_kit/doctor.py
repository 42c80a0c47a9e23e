"""``python -m lab_kit doctor``: is this machine ready for the lab? One line per check, a fix
for each problem."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

from lab_kit import lab_env
from lab_kit.broker import current
from lab_kit.broker.docker import LOCAL_IMAGE, docker_available
from lab_kit.broker.local import BrokerError, check_java, jars_dir
from lab_kit.machine import port_free


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks() -> list[Check]:

    checks = []
    py_ok = sys.version_info >= (3, 11)
    checks.append(Check("python", py_ok, sys.version.split()[0],
                        "" if py_ok else "use Python 3.11+ (the conda env in environment.yml)"))
    try:
        java, major = check_java()
        checks.append(Check("java", True, f"Java {major} at {java}"))
    except BrokerError as exc:
        checks.append(Check("java", False, "missing or too old", str(exc)))
    mvn = shutil.which("mvn")
    checks.append(Check("mvn", bool(mvn), mvn or "not found",
                        "" if mvn else "apt-get install maven / brew install maven / conda env"))
    libs = jars_dir()
    cached = (libs / ".complete").exists()
    checks.append(Check("kafka jars", cached or bool(mvn),
                        f"Kafka {lab_env.KAFKA_VERSION} cached in {libs}" if cached
                        else "not cached yet: `broker up` downloads them with mvn (~45 MB)",
                        "" if cached or mvn else "install Maven, or use Docker"))
    checks.extend(docker_checks())

    b = current()
    try:
        st = b.status() if b is not None else None
    except BrokerError as exc:
        st = None
        checks.append(Check("broker", False, "set up but unreachable", str(exc)))
    if st is not None:
        checks.append(Check("broker", True, f"{st['backend']} at {st['bootstrap_servers']}: "
                            + ", ".join(f"node {n['id']} {n['state']}" for n in st["nodes"])))
    elif b is None:
        default_free = port_free(9092)
        checks.append(Check("broker", True, "none set up yet (`python -m lab_kit broker up`); "
                            f"port 9092 {'free' if default_free else 'in use'} (the local "
                            "backend picks free ports anyway)"))
    return checks


def docker_checks() -> list[Check]:
    """Docker is optional: these checks say what the docker backend would use, never FAIL."""

    dok, why = docker_available()
    if not dok:
        return [Check("docker", True, f"not used: {why}",
                      "optional: the local backend needs no Docker")]
    import docker

    client = docker.from_env()
    named = os.environ.get("LAB_KAFKA_IMAGE")
    present = []
    for name in ([named] if named else []) + [lab_env.KAFKA_IMAGE, LOCAL_IMAGE]:
        try:
            client.images.get(name)
            present.append(name)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError:
            pass
    if present:
        image = f"image {present[0]} present"
    else:
        image = (f"no image yet: `broker up --backend docker` pulls {lab_env.KAFKA_IMAGE}; "
                 "offline, `make kafka-image` builds one")
    return [Check("docker", True, f"daemon answers; {image}")]


def main() -> int:
    checks = run_checks()
    for c in checks:
        mark = "ok " if c.ok else "FAIL"
        print(f"[{mark}] {c.name:<11} {c.detail}")
        if c.fix and not c.ok:
            print(f"       fix: {c.fix}")
    return 0 if all(c.ok for c in checks) else 1
