"""A test helper: no network from here on, and a record of every connect the code under test tried."""

from __future__ import annotations

import socket

import pytest


def refuse_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make every TCP connect raise ``OSError`` for the rest of the test; the list fills with the attempts."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts
