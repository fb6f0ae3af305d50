"""The example in-memory storage passes the conformance kit (and shows how to run it)."""

from __future__ import annotations

import pytest

from dsync_core.api import open_storage
from dsync_core.testing import StorageConformance


class TestMemoryStorage(StorageConformance):
    @pytest.fixture
    def storage_factory(self, memory_location):  # type: ignore[no-untyped-def]
        return lambda: open_storage(memory_location)


def test_other_schemes_left_to_other_plugins(memstore_plugin) -> None:  # type: ignore[no-untyped-def]
    assert memstore_plugin.dsync_storage_open(location=_loc("maildir:/nonexistent"), settings=None, user=None) is None


def test_scheme_listed(memstore_plugin) -> None:  # type: ignore[no-untyped-def]
    from dsync_core.api import known_schemes

    assert "memory" in known_schemes()


def _loc(text: str):  # type: ignore[no-untyped-def]
    from dsync_core.location import parse_location

    return parse_location(text)
