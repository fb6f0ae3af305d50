"""dsync_core.plugin: hook specs, the plugin manager, entry points and trylast defaults."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest

from dsync_core import hookimpl
from dsync_core.api import open_storage
from dsync_core.changelog import ChangeLog, SqliteChangeLog
from dsync_core.errors import ConfigError
from dsync_core.plugin import NAME, spec
from dsync_core.plugin.manager import build_plugin_manager, get_plugin_manager, set_plugin_manager
from dsync_core.settings import Settings


def _hookspecs() -> list[str]:
    return [n for n, f in inspect.getmembers(spec, inspect.isfunction) if hasattr(f, f"{NAME}_spec")]


def test_every_hookspec_is_documented() -> None:
    names = _hookspecs()
    assert len(names) >= 10, names
    for name in names:
        assert name.startswith("dsync_"), name
        doc = inspect.getdoc(getattr(spec, name)) or ""
        assert doc and len(doc.splitlines()[0]) > 10, f"hook {name} has no docstring"
        assert "versionadded" in doc, f"hook {name}: docstring does not say since when it exists"
        for param in inspect.signature(getattr(spec, name)).parameters:
            assert param in doc, f"hook {name}: parameter {param!r} is not described"


def test_entry_point_group_loads_maildir() -> None:
    try:
        importlib.metadata.distribution("dsync-maildir")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("dsync-maildir is not installed")
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=NAME)}
    assert "maildir" in eps, f"dsync-maildir declares no entry point in group {NAME!r}"
    pm = build_plugin_manager()
    plugin = pm.get_plugin("maildir")
    assert plugin is not None, "the plugin manager did not load the maildir entry point"
    assert any(h.name == "dsync_storage_open" for h in pm.get_hookcallers(plugin) or []), (
        "the maildir plugin implements no dsync_storage_open"
    )


def test_defaults_registered_and_trylast() -> None:
    pm = build_plugin_manager(load_entrypoints=False)
    defaults = pm.get_plugin("dsync_core.defaults")
    assert defaults is not None
    for caller in pm.get_hookcallers(defaults) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is defaults:
                assert impl.trylast, f"default {caller.name} must be trylast so plugins can override it"


def test_default_changelog_is_sqlite() -> None:
    pm = build_plugin_manager(load_entrypoints=False)
    cl = pm.hook.dsync_changelog_open(path=":memory:", settings=Settings())
    assert isinstance(cl, SqliteChangeLog)
    cl.close()


class _MyChangeLog(SqliteChangeLog):
    pass


class _Override:
    @hookimpl
    def dsync_changelog_open(self, path: str, settings: Settings) -> ChangeLog:
        return _MyChangeLog(path)


def test_plugin_overrides_default_changelog() -> None:
    pm = build_plugin_manager(load_entrypoints=False)
    plugin = _Override()
    pm.register(plugin, name="override")
    try:
        assert isinstance(pm.hook.dsync_changelog_open(path=":memory:", settings=Settings()), _MyChangeLog)
    finally:
        pm.unregister(plugin)
    assert type(pm.hook.dsync_changelog_open(path=":memory:", settings=Settings())) is SqliteChangeLog


def test_set_plugin_manager_swaps_global() -> None:
    pm = build_plugin_manager(load_entrypoints=False)
    old = get_plugin_manager()
    set_plugin_manager(pm)
    try:
        assert get_plugin_manager() is pm
    finally:
        set_plugin_manager(old)
    assert get_plugin_manager() is old


def test_unknown_scheme_is_config_error() -> None:
    with pytest.raises(ConfigError, match="Unknown mail storage driver 'nosuch'"):
        open_storage("nosuch:/x")


def test_open_storage_through_registered_plugin(memory_location: str) -> None:
    from memstore import MemoryStorage

    s = open_storage(memory_location)
    assert isinstance(s, MemoryStorage)
    s.create_mailbox("X")
    assert "X" in [i.name for i in open_storage(memory_location).list_mailboxes()]


def test_memstore_uses_the_changelog_hook(memory_location: str) -> None:
    pm = get_plugin_manager()
    plugin = _Override()
    pm.register(plugin, name="override")
    try:
        s = open_storage(memory_location)
    finally:
        pm.unregister(plugin)
    assert isinstance(s.state.changelog, _MyChangeLog)  # type: ignore[attr-defined]
