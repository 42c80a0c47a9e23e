"""Unit tests need no broker and no network: any socket connection from a test here fails
loudly (a test that needs Kafka belongs in tests/broker)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(self, address, *args, **kwargs):
        if self.family == socket.AF_UNIX:
            return _connect(self, address, *args, **kwargs)
        raise AssertionError(f"a unit test tried to connect to {address}: move it to tests/broker")

    _connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
