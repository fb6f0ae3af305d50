"""Fixtures for the dbox plugin tests; the doveadm harness is shared from the core."""

from __future__ import annotations

from dsync_core.testing.dovecot import Doveadm, doveadm  # noqa: F401

__all__ = ["Doveadm"]
