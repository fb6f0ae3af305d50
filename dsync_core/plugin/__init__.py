"""Writing a dsync plugin.

A plugin is a module (or object) with functions named after the hooks in
:mod:`dsync_core.plugin.spec`, each decorated with :data:`hookimpl`::

    from dsync_core import hookimpl

    @hookimpl
    def dsync_storage_open(location, settings, user):
        if location.scheme == "mystore":
            return MyStorage(location.path)

Ship it as a distribution with an entry point in the group ``dsync``::

    [options.entry_points]
    dsync =
        mystore = dsync_mystore

and ``dsync`` finds it with no configuration. Built-in behaviour (the change log, the
system userdb, Dovecot's conflict policy) is registered the same way with
``trylast=True``, so your plugin's implementation runs first and wins.
"""

from __future__ import annotations

import pluggy

#: The project name pluggy uses for markers and the entry-point group.
NAME = "dsync"

hookimpl = pluggy.HookimplMarker(NAME)
hookspec = pluggy.HookspecMarker(NAME)

__all__ = ["NAME", "hookimpl", "hookspec"]
