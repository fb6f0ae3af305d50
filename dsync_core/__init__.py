"""dsync-core: two-way mailbox synchronisation in Dovecot's way, as a library.

The public surface: open a storage by location (:func:`open_storage`), the value classes
of :mod:`dsync_core.model`, the storage interface of :mod:`dsync_core.storage`, the
error hierarchy, and :data:`hookimpl` for plugins.
"""

from __future__ import annotations

from .api import known_schemes, open_storage
from .errors import (
    ConfigError,
    CorruptError,
    DsyncError,
    ExistsError,
    InvalidNameError,
    LockTimeoutError,
    NotFoundError,
    ProtocolError,
    StorageError,
    UsageError,
)
from .location import Location, parse_location
from .model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxInfo,
    MailboxLogRecord,
    MailboxLogType,
    MailboxStatus,
    MessageRecord,
    SaveRequest,
    UserInfo,
)
from .plugin import hookimpl
from .settings import Settings, load_settings
from .storage import Mailbox, Storage
from .sync import sync

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "open_storage",
    "sync",
    "known_schemes",
    "hookimpl",
    "Location",
    "parse_location",
    "Settings",
    "load_settings",
    "Storage",
    "Mailbox",
    "MailboxInfo",
    "MailboxStatus",
    "MessageRecord",
    "ExpungeRecord",
    "MailboxLogRecord",
    "MailboxLogType",
    "SaveRequest",
    "FlagUpdate",
    "UserInfo",
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
