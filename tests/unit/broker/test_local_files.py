"""The local broker's files, without a JVM (issue 22, items 7 and 8): it deletes only a data
folder it made (a marker file says so), runs ``mvn --strict-checksums`` and puts only the jars
Maven resolved on the classpath."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lab_kit.broker import local
from lab_kit.broker.base import BrokerError
from lab_kit.broker.local import (
    CLASSPATH_FILE,
    MARKER,
    LocalBroker,
    _made_by_lab,
    _replace_data_dir,
    broker_classpath,
    broker_jars,
    mvn_command,
    resolved_names,
)


def test_a_new_data_folder_carries_the_marker(tmp_path):
    data = tmp_path / "local"
    _replace_data_dir(data)
    assert (data / MARKER).is_file() and list(data.iterdir()) == [data / MARKER]
    assert _made_by_lab(data)


def test_a_data_folder_the_lab_made_is_replaced(tmp_path):
    data = tmp_path / "local"
    _replace_data_dir(data)
    (data / "node-1").mkdir()
    (data / "node-1" / "old.log").write_text("old")
    _replace_data_dir(data)
    assert not (data / "node-1").exists() and (data / MARKER).is_file()


def test_an_empty_folder_is_reused(tmp_path):
    data = tmp_path / "local"
    data.mkdir()
    _replace_data_dir(data)
    assert (data / MARKER).is_file()


def test_a_folder_the_lab_did_not_make_is_left_alone(tmp_path):
    data = tmp_path / "local"
    data.mkdir()
    (data / "thesis.tex").write_text("years of work")
    with pytest.raises(BrokerError, match=MARKER) as err:
        _replace_data_dir(data)
    assert str(data) in str(err.value)
    assert (data / "thesis.tex").read_text() == "years of work"
    assert not (data / MARKER).exists()


def test_setup_without_a_state_file_keeps_a_foreign_local_folder(tmp_path, monkeypatch):
    """broker.json missing, <state_dir>/local full of someone's files: setup refuses."""
    monkeypatch.setattr(local, "check_java", lambda: ("java", 17))
    monkeypatch.setattr(local, "resolve_jars", lambda: tmp_path / "libs")
    (tmp_path / "state" / "local").mkdir(parents=True)
    (tmp_path / "state" / "local" / "notes.txt").write_text("mine")
    b = LocalBroker(tmp_path / "state")
    assert not b.exists
    with pytest.raises(BrokerError, match="not deleted"):
        b.setup(nodes=1)
    assert (tmp_path / "state" / "local" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "state" / "broker.json").exists()


def _state(state_dir: Path, data_dir: Path) -> LocalBroker:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "broker.json").write_text(json.dumps({"data_dir": str(data_dir), "nodes": []}))
    return LocalBroker(state_dir)


def test_purge_deletes_a_marked_data_folder(tmp_path):
    data = tmp_path / "elsewhere"
    _replace_data_dir(data)
    b = _state(tmp_path / "state", data)
    b.down(purge=True)
    assert not data.exists() and not (tmp_path / "state" / "broker.json").exists()


def test_purge_refuses_a_foreign_folder_a_state_file_names(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"\xff\xd8")
    b = _state(tmp_path / "state", foreign)
    with pytest.raises(BrokerError, match="not made by this lab"):
        b.down(purge=True)
    assert (foreign / "photo.jpg").exists()


def test_purge_still_deletes_a_data_folder_from_before_the_marker(tmp_path):
    """<state_dir>/local named by its own state file: made by an older lab_kit."""
    data = tmp_path / "state" / "local"
    (data / "node-1").mkdir(parents=True)
    b = _state(tmp_path / "state", data)
    assert _made_by_lab(data, tmp_path / "state")
    b.down(purge=True)
    assert not data.exists()


def test_mvn_runs_with_strict_checksums_and_lists_what_it_resolved(tmp_path):
    cmd = mvn_command("mvn", tmp_path / "pom.xml", tmp_path / "libs", tmp_path / "cp.mvn")
    assert "-C" in cmd  # --strict-checksums
    assert "dependency:copy-dependencies" in cmd and "dependency:build-classpath" in cmd
    assert f"-Dmdep.outputFile={tmp_path / 'cp.mvn'}" in cmd
    assert f"-DoutputDirectory={tmp_path / 'libs'}" in cmd


def test_resolved_names_are_checked_against_the_folder(tmp_path):
    (tmp_path / "a-1.jar").write_bytes(b"")
    (tmp_path / "b-2.jar").write_bytes(b"")
    repo = str(tmp_path / "m2" / "repository")  # a local maven repository
    listing = os.pathsep.join([f"{repo}/x/a/1/a-1.jar", f"{repo}/y/b/2/b-2.jar"])
    assert resolved_names(listing + "\n", tmp_path) == ["a-1.jar", "b-2.jar"]
    with pytest.raises(BrokerError, match="c-3.jar"):
        resolved_names(listing + os.pathsep + f"{repo}/c-3.jar", tmp_path)
    with pytest.raises(BrokerError):
        resolved_names("", tmp_path)


def test_only_the_listed_jars_make_the_classpath(tmp_path):
    libs = tmp_path / "kafka-9.9.9" / "libs"
    libs.mkdir(parents=True)
    for name in ("kafka_2.13-9.9.9.jar", "slf4j-api-2.0.jar", "stray-evil-1.0.jar"):
        (libs / name).write_bytes(b"")
    (libs / CLASSPATH_FILE).write_text("kafka_2.13-9.9.9.jar\nslf4j-api-2.0.jar\n")
    jars = broker_jars(libs)
    assert [p.name for p in jars] == ["kafka_2.13-9.9.9.jar", "slf4j-api-2.0.jar"]
    cp = broker_classpath(libs)
    assert "stray-evil" not in cp and "*" not in cp
    assert cp.split(os.pathsep) == [str(p) for p in jars]



def test_a_child_not_yet_exec_d_into_the_jvm_counts_as_launched_until_it_exits():
    """Right after Popen the child may still carry its parent's command line: start-up asks
    _launched_child (alive until it exits), not the command line, whether it died."""
    import subprocess
    import sys

    props = "/nowhere/server.properties"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    local._CHILDREN[proc.pid] = proc
    try:
        assert local._our_process(proc.pid, props) is None  # no kafka.Kafka in its cmdline
        assert local._launched_child(proc.pid) is proc  # but it is ours and alive
        proc.kill()
        proc.wait(10)
        assert local._launched_child(proc.pid) is None
        assert proc.pid not in local._CHILDREN  # reaped and forgotten
    finally:
        if proc.poll() is None:
            proc.kill()
        local._CHILDREN.pop(proc.pid, None)
    assert local._launched_child(os.getpid()) is None  # a pid we did not launch
