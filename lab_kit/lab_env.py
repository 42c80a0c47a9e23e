"""Settings shared by every part of the lab, in one place.

The Kafka version is pinned here and only here: the Maven pom (``-Dkafka.version``), the
Docker backend's image tag and the test that checks ``docker-compose.yml`` all read it.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

KAFKA_VERSION = "4.4.0"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
SLF4J_VERSION = "2.0.17"
MIN_JAVA_MAJOR = 17

APP_NAME = "streamsocial-lab"


def state_dir() -> Path:
    """Where the running broker's state file, data dirs and logs live (outside the repo).

    Override with ``LAB_STATE_DIR`` (the tests do, to keep their brokers apart).
    """
    return Path(os.environ.get("LAB_STATE_DIR") or platformdirs.user_state_dir(APP_NAME))


def shown(path: Path | str) -> str:
    """``path`` as a reader should see it: under the home folder as ``~/...`` (a notebook's
    stored output then names no machine's home).

    >>> shown(Path.home() / "x" / "y.log")
    '~/x/y.log'
    """
    p = Path(path)
    try:
        return str(Path("~") / p.relative_to(Path.home()))
    except ValueError:
        return str(p)


def cache_dir() -> Path:
    """Where resolved broker jars are cached (``LAB_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("LAB_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))


def lab_scale() -> float:
    """One knob for experiment size: 1.0 for a class demo, small (e.g. 0.1) in CI."""
    raw = os.environ.get("LAB_SCALE", "1")
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"LAB_SCALE must be a number, got {raw!r}") from exc
    if not 0 < value <= 10:
        raise ValueError(f"LAB_SCALE must be in (0, 10], got {value}")
    return value
