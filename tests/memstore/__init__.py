"""memstore: the smallest complete dsync storage plugin, kept as an example for backend authors.

A plugin is a module with ``@hookimpl`` functions. This one serves locations ``memory:NAME``;
storages opened with the same NAME in one process share their mail, so "reopen" works.
It is registered by the tests with ``get_plugin_manager().register(memstore)``; a real
plugin would declare an entry point in the group ``dsync`` instead.
"""

from __future__ import annotations

from dsync_core import hookimpl
from dsync_core.location import Location
from dsync_core.model import UserInfo
from dsync_core.settings import Settings

from .storage import MemoryStorage, drop

SCHEME = "memory"


@hookimpl
def dsync_storage_open(location: Location, settings: Settings, user: UserInfo | None) -> MemoryStorage | None:
    # firstresult hook: return None for schemes that are not ours, so the next plugin is asked.
    if location.scheme != SCHEME:
        return None
    return MemoryStorage.open(location.path or "default", settings)


@hookimpl
def dsync_storage_schemes() -> list[str]:
    return [SCHEME]


__all__ = ["MemoryStorage", "drop", "SCHEME"]
