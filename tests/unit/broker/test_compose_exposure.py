"""docker-compose.yml publishes nothing beyond this machine (issue 22, item 4): every port on
127.0.0.1, and the web UI (no login; a browser tab can reach loopback) read-only."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[3] / "docker-compose.yml")
                         .read_text())


def test_every_published_port_is_on_loopback():
    ports = [(name, p) for name, svc in COMPOSE["services"].items()
             for p in svc.get("ports", [])]
    assert {name for name, _p in ports} >= {"kafka", "kafka-1", "kafka-2", "kafka-3",
                                            "kafka-ui"}
    assert [p for _n, p in ports if not str(p).startswith("127.0.0.1:")] == []


def test_the_ui_is_read_only_and_its_image_can_be_pinned_by_digest():
    ui = COMPOSE["services"]["kafka-ui"]
    assert ui["ports"] == ["127.0.0.1:8080:8080"]
    assert ui["environment"]["KAFKA_CLUSTERS_0_READONLY"] == "true"
    assert ui["image"].startswith("${LAB_KAFKA_UI_IMAGE:-")
