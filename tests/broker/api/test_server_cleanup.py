"""ApiServer leaves nothing behind (issue 22, item 7): a start that fails (the child exits,
or never gets ready) stops the child and closes the log; stop() SIGKILLs the whole process
group, so uvicorn's workers go too, even when the parent is frozen or already dead."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest

from lab_kit import topics as lab_topics
from lab_kit.api import ApiServer
from lab_kit.api.server import group_members

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def api_topic(client_config):
    name = f"test-api-cleanup-{uuid.uuid4().hex[:8]}"
    lab_topics.ensure_topics(client_config, (name,), partitions={name: 1})
    yield name
    from tests.conftest import delete_topics_with_prefix

    delete_topics_with_prefix(name)


def _api_children() -> list[psutil.Process]:
    """This test process's live children (any depth) that run the API."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "lab_kit.api" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _log_open(path: Path) -> bool:
    return any(f.path == str(path) for f in psutil.Process().open_files())


def _workers(api: ApiServer, n: int, timeout_s: float = 30) -> list[psutil.Process]:
    """The API's process group once it holds the parent and ``n`` workers."""
    deadline = time.monotonic() + timeout_s
    while True:
        members = group_members(api.proc.pid)
        if len(members) >= n + 1 or time.monotonic() > deadline:
            return members
        time.sleep(0.1)


def test_a_start_that_never_gets_ready_leaves_no_child(tmp_path, bootstrap, api_topic):
    log = tmp_path / "api.log"
    api = ApiServer(topic=api_topic, bootstrap=bootstrap, verdicts="off", log_path=log,
                    spool_dir=tmp_path / "spool")
    with pytest.raises(TimeoutError):
        api.start(timeout_s=0.2)  # not even imported by then
    assert api.proc is not None and api.proc.poll() is not None
    assert group_members(api.proc.pid) == []
    assert _api_children() == []
    assert not _log_open(log)


def test_a_start_whose_child_exits_leaves_no_child(tmp_path, bootstrap, api_topic):
    log = tmp_path / "api.log"
    api = ApiServer(topic=api_topic, bootstrap=bootstrap, workers=9, log_path=log)
    with pytest.raises(RuntimeError, match="--workers must be between 1 and 8"):
        api.start(timeout_s=60)
    assert api.proc.returncode == 2
    assert group_members(api.proc.pid) == [] and _api_children() == []
    assert not _log_open(log)


def test_stop_leaves_no_worker(tmp_path, bootstrap, api_topic):
    api = ApiServer(topic=api_topic, bootstrap=bootstrap, verdicts="off", workers=2,
                    spool_dir=tmp_path / "spool", log_path=tmp_path / "api.log").start(60)
    members = _workers(api, 2)
    assert len(members) >= 3, members  # uvicorn's parent and its 2 workers
    assert api.stop(timeout_s=30) is not None
    assert group_members(api.proc.pid) == [] and _api_children() == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in members)
    assert api.stop() == api.proc.returncode  # a second stop signals nothing


def test_sigkill_reaches_the_workers_of_a_frozen_parent(tmp_path, bootstrap, api_topic):
    api = ApiServer(topic=api_topic, bootstrap=bootstrap, verdicts="off", workers=2,
                    spool_dir=tmp_path / "spool").start(60)
    members = _workers(api, 2)
    os.kill(api.proc.pid, signal.SIGSTOP)  # SIGTERM will not be handled: the kill must follow
    t0 = time.monotonic()
    assert api.stop(timeout_s=1) == -signal.SIGKILL
    assert time.monotonic() - t0 < 15
    assert group_members(api.proc.pid) == [] and _api_children() == []
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in members)


def test_workers_orphaned_by_a_dead_parent_are_stopped_too(tmp_path, bootstrap, api_topic):
    api = ApiServer(topic=api_topic, bootstrap=bootstrap, verdicts="off", workers=2,
                    spool_dir=tmp_path / "spool").start(60)
    workers = [p for p in _workers(api, 2) if p.pid != api.proc.pid]
    assert len(workers) >= 2
    os.kill(api.proc.pid, signal.SIGKILL)  # only the parent: its workers live on
    api.proc.wait(10)
    time.sleep(0.3)
    assert group_members(api.proc.pid), "the workers should outlive a parent killed alone"
    api.stop(timeout_s=5)
    assert group_members(api.proc.pid) == []
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in workers)
