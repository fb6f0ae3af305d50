"""The core conformance suite, run against the Maildir storage."""

from __future__ import annotations

import pytest
from dsync_maildir.storage import MaildirStorage

from dsync_core.location import parse_location
from dsync_core.settings import Settings
from dsync_core.testing import StorageConformance


class TestMaildirConformance(StorageConformance):
    @pytest.fixture
    def storage_factory(self, tmp_path):  # type: ignore[no-untyped-def]
        return lambda: MaildirStorage(parse_location(f"maildir:{tmp_path / 'Maildir'}"), Settings())
