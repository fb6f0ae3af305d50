"""The one plugin manager: hook specs, built-in defaults, then entry-point plugins."""

from __future__ import annotations

import importlib

import pluggy

from . import NAME, spec

#: Built-in behaviour, registered as ordinary plugins: the passwd-file userdb, then the
#: ``trylast`` defaults (the system userdb among them).
DEFAULT_PLUGINS: tuple[str, ...] = ("dsync_core.userdb", "dsync_core.defaults", "dsync_core.policy")

_pm: pluggy.PluginManager | None = None


def build_plugin_manager(*, load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the specs, the defaults and (optionally) installed plugins."""
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(spec)
    for dotted in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(dotted), name=dotted)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(NAME)
    pm.check_pending()
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, built on first use."""
    global _pm
    if _pm is None:
        _pm = build_plugin_manager()
    return _pm


def set_plugin_manager(pm: pluggy.PluginManager | None) -> None:
    """Swap the process-wide manager (tests, embedding applications)."""
    global _pm
    _pm = pm


__all__ = ["DEFAULT_PLUGINS", "build_plugin_manager", "get_plugin_manager", "set_plugin_manager"]
