"""The Python API: open a storage by location string, as the command line does."""

from __future__ import annotations

from .errors import ConfigError
from .location import Location, parse_location
from .model import UserInfo
from .plugin.manager import get_plugin_manager
from .settings import Settings
from .storage import Storage


def known_schemes() -> list[str]:
    schemes: list[str] = []
    for lst in get_plugin_manager().hook.dsync_storage_schemes():
        schemes.extend(lst)
    return sorted(set(schemes))


def open_storage(
    location: str | Location,
    settings: Settings | None = None,
    user: UserInfo | None = None,
) -> Storage:
    """Open the storage a location names, e.g. ``open_storage("maildir:~/Maildir")``.

    Raises :class:`~dsync_core.errors.ConfigError` when no installed plugin serves the
    location's scheme.
    """
    settings = settings if settings is not None else Settings()
    if isinstance(location, str):
        if user is not None:
            location = parse_location(location, user=user.name, home=user.home or None)
        else:
            location = parse_location(location)
    storage = get_plugin_manager().hook.dsync_storage_open(location=location, settings=settings, user=user)
    if storage is None:
        known = ", ".join(known_schemes()) or "none installed"
        raise ConfigError(f"Unknown mail storage driver {location.scheme!r} (known: {known})")
    return storage


__all__ = ["open_storage", "known_schemes"]
