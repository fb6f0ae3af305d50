"""Fixtures for the Maildir plugin tests; the doveadm harness is shared from the core."""

from __future__ import annotations

import pytest

from dsync_core.api import open_storage
from dsync_core.settings import Settings
from dsync_core.testing.dovecot import Doveadm, doveadm  # noqa: F401

__all__ = ["Doveadm"]


@pytest.fixture
def open_maildir(tmp_path):  # type: ignore[no-untyped-def]
    """``open_maildir(options="", root=None)`` -> an opened MaildirStorage."""
    opened = []

    def opener(options: str = "", root: str | None = None):  # type: ignore[no-untyped-def]
        root = root or str(tmp_path / "Maildir")
        st = open_storage(f"maildir:{root}{options}", Settings())
        opened.append(st)
        return st

    yield opener
    for st in opened:
        st.close()
