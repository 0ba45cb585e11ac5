"""Fixtures for the reliability tests (helpers live in `_support.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.settings import Settings

from ._support import LiveServer, live_server


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """One default-settings server per test module."""
    with live_server(Settings(log_level="warning")) as live:
        yield live
