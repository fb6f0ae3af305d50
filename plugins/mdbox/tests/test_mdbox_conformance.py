"""The core conformance suite, run against the mdbox storage (default and tiny rotate size)."""

from __future__ import annotations

import pytest
from dsync_dbox.mdbox import MdboxStorage

from dsync_core.location import parse_location
from dsync_core.settings import Settings
from dsync_core.testing import StorageConformance


class TestMdboxConformance(StorageConformance):
    @pytest.fixture
    def storage_factory(self, tmp_path):  # type: ignore[no-untyped-def]
        return lambda: MdboxStorage(parse_location(f"mdbox:{tmp_path / 'mdbox'}"), Settings())


class TestMdboxSmallFilesConformance(StorageConformance):
    """Every message in a file of its own (rotation on each save), index in its own tree."""

    @pytest.fixture
    def storage_factory(self, tmp_path):  # type: ignore[no-untyped-def]
        loc = f"mdbox:{tmp_path / 'mdbox'}:INDEX={tmp_path / 'index'}"
        return lambda: MdboxStorage(parse_location(loc), Settings({"mdbox_rotate_size": "1"}))


class TestMdboxAppendConformance(StorageConformance):
    """Saves appended to the newest file (``dsync_mdbox_append``), as Dovecot does."""

    @pytest.fixture
    def storage_factory(self, tmp_path):  # type: ignore[no-untyped-def]
        loc = f"mdbox:{tmp_path / 'mdbox'}"
        return lambda: MdboxStorage(parse_location(loc), Settings({"dsync_mdbox_append": "yes"}))
