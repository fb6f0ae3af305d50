"""Shared fixtures: the example memory storage, and real doveadm (from dsync_core.testing.dovecot)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dsync_core.testing.dovecot import doveadm  # noqa: F401


@pytest.fixture
def memstore_plugin() -> Iterator[object]:
    """The example ``memory:`` storage plugin, registered for one test."""
    import memstore

    from dsync_core.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(memstore)
    try:
        yield memstore
    finally:
        pm.unregister(memstore)


@pytest.fixture
def memory_location(memstore_plugin) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A ``memory:NAME`` location nobody else uses; its state is dropped afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield f"memory:{name}"
    memstore_plugin.drop(name)
