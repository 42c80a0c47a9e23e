"""The local backend's files with a real JVM and Maven (issue 22, items 7 and 8): storage is
formatted with only the jars Maven resolved, the data folder carries the lab's marker, and a
lost broker.json lets setup replace that folder but never someone else's."""

from __future__ import annotations

import os

import pytest

from lab_kit.broker import local as local_mod
from lab_kit.broker.base import BrokerError
from lab_kit.broker.local import CLASSPATH_FILE, MARKER, LocalBroker

pytestmark = pytest.mark.timeout(300)


def test_the_cached_jars_are_the_ones_maven_listed():
    libs = local_mod.resolve_jars()
    listed = (libs / CLASSPATH_FILE).read_text().split()
    assert f"kafka_2.13-{local_mod.lab_env.KAFKA_VERSION}.jar" in listed
    assert all((libs / n).is_file() for n in listed)
    assert local_mod.broker_classpath(libs).split(os.pathsep) == [str(libs / n) for n in listed]


def test_a_stray_jar_in_the_cache_stays_off_the_classpath(tmp_path):
    libs = local_mod.resolve_jars()
    stray = libs / "zz-stray-test-only.jar"
    stray.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    try:
        assert str(stray) not in local_mod.broker_classpath(libs)
        b = LocalBroker(tmp_path)
        b.setup(nodes=1)  # runs Kafka's StorageTool on that classpath
        assert (tmp_path / "local" / MARKER).is_file()
        assert (tmp_path / "local" / "node-1" / "data" / "meta.properties").is_file()
    finally:
        stray.unlink()


def test_a_lost_state_file_replaces_only_the_labs_own_folder(tmp_path):
    b = LocalBroker(tmp_path)
    b.setup(nodes=1)
    first = b.state["cluster_id"]
    (tmp_path / "broker.json").unlink()  # lost: setup runs again on the same state dir
    again = LocalBroker(tmp_path)
    again.setup(nodes=1)
    assert again.state["cluster_id"] != first and (tmp_path / "local" / MARKER).is_file()
    # someone else's folder where the data folder would go: refused, untouched
    other = tmp_path / "other"
    (other / "local").mkdir(parents=True)
    (other / "local" / "keep.txt").write_text("keep")
    with pytest.raises(BrokerError, match="not deleted"):
        LocalBroker(other).setup(nodes=1)
    assert (other / "local" / "keep.txt").read_text() == "keep"
    again.down(purge=True)
    assert not (tmp_path / "local").exists()
