"""The core conformance suite, run against the sdbox storage."""

from __future__ import annotations

import pytest
from dsync_dbox.sdbox import SdboxStorage

from dsync_core.location import parse_location
from dsync_core.settings import Settings
from dsync_core.testing import StorageConformance


class TestSdboxConformance(StorageConformance):
    @pytest.fixture
    def storage_factory(self, tmp_path):  # type: ignore[no-untyped-def]
        return lambda: SdboxStorage(parse_location(f"sdbox:{tmp_path / 'sdbox'}"), Settings())


class TestSdboxIndexDirConformance(StorageConformance):
    @pytest.fixture
    def storage_factory(self, tmp_path):  # type: ignore[no-untyped-def]
        loc = f"sdbox:{tmp_path / 'sdbox'}:INDEX={tmp_path / 'index'}"
        return lambda: SdboxStorage(parse_location(loc), Settings())
