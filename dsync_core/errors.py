"""One exception hierarchy for everything dsync reports to a user.

Every error carries the exit status the command line ends with, so the CLI never has to
guess: ``DsyncError`` subclasses map onto the sysexits-style codes doveadm uses for mail
commands, and the sync commands fold any failure into 1 (see ``dsync_core.cli``).
"""

from __future__ import annotations

# doveadm's exit codes (sysexits.h values, as Dovecot uses them).
EX_OK = 0
EX_FAILED = 1
EX_CHANGED = 2  # done, but some changes could not be applied: run again
EX_USAGE = 64
EX_DATAERR = 65  # "not possible": exists, invalid data, in use
EX_NOUSER = 67
EX_NOTFOUND = 68  # doveadm's EX_NOHOST, used for "not found"
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class DsyncError(Exception):
    """Base class: a failure with a one-line message meant for the user."""

    exit_code: int = EX_TEMPFAIL

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class UsageError(DsyncError):
    """The command line or an API call was malformed."""

    exit_code = EX_USAGE


class ConfigError(DsyncError):
    """A setting, location string or config file is wrong."""

    exit_code = EX_CONFIG


class NotFoundError(DsyncError):
    """A mailbox, message or user does not exist."""

    exit_code = EX_NOTFOUND


class ExistsError(DsyncError):
    """The thing to create exists already (or the operation is not possible now)."""

    exit_code = EX_DATAERR


class InvalidNameError(DsyncError):
    """A mailbox name that must not reach the filesystem (``..``, ``/``, control chars)."""

    exit_code = EX_DATAERR


class CorruptError(DsyncError):
    """On-disk data is broken in a way we refuse to guess about."""

    exit_code = EX_DATAERR


class LockTimeoutError(DsyncError):
    """A lock could not be taken in time."""

    exit_code = EX_TEMPFAIL


class StorageError(DsyncError):
    """An I/O or backend failure; usually temporary."""

    exit_code = EX_TEMPFAIL


class ProtocolError(DsyncError):
    """A peer sent something that breaks the protocol."""

    exit_code = EX_TEMPFAIL


class SafetyError(DsyncError):
    """A run refused to do something that looks like mass deletion (use --force)."""

    exit_code = EX_FAILED


class StateError(DsyncError):
    """A ``-s`` state string that cannot be used (malformed, or for other mailboxes)."""

    exit_code = EX_USAGE


__all__ = [
    "SafetyError",
    "StateError",
    "EX_OK",
    "EX_FAILED",
    "EX_CHANGED",
    "EX_USAGE",
    "EX_DATAERR",
    "EX_NOUSER",
    "EX_NOTFOUND",
    "EX_SOFTWARE",
    "EX_CANTCREAT",
    "EX_TEMPFAIL",
    "EX_NOPERM",
    "EX_CONFIG",
    "DsyncError",
    "UsageError",
    "ConfigError",
    "NotFoundError",
    "ExistsError",
    "InvalidNameError",
    "CorruptError",
    "LockTimeoutError",
    "StorageError",
    "ProtocolError",
]
