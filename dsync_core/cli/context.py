"""What every command gets: settings, output choices, and how to open the user's mail."""

from __future__ import annotations

import getpass
import os

import attrs

from ..api import open_storage
from ..errors import ConfigError, NotFoundError
from ..location import parse_location
from ..model import UserInfo
from ..plugin.manager import get_plugin_manager
from ..settings import Settings
from ..storage import Storage


@attrs.define
class CliContext:
    settings: Settings
    formatter: str | None = None
    debug: bool = False
    verbose: bool = False
    quiet: bool = False

    def output_format(self, default: str) -> str:
        return self.formatter or default

    def lookup_user(self, name: str | None) -> UserInfo | None:
        """The user a mail command runs for: ``-u NAME``, else the invoking user."""
        if not name:
            name = os.environ.get("USER") or getpass.getuser()
            info = get_plugin_manager().hook.dsync_userdb_lookup(user=name, settings=self.settings)
            if info is None:
                return UserInfo(name=name, home=os.environ.get("HOME", ""))
            home = os.environ.get("HOME") or info.home
            return attrs.evolve(info, home=home)
        info = get_plugin_manager().hook.dsync_userdb_lookup(user=name, settings=self.settings)
        if info is None:
            raise NotFoundError(f"User doesn't exist: {name}", exit_code=67)
        return info

    def open_user_storage(self, user_name: str | None = None) -> Storage:
        """Open the mail of a user: ``mail_location`` (``-o`` wins), else the userdb's ``mail``."""
        user = self.lookup_user(user_name)
        location = self.settings.get("mail_location") or (user.fields.get("mail", "") if user else "")
        if not location:
            raise ConfigError(
                "No mail location: give one with -o mail_location=maildir:~/Maildir (or set mail_location with -c)"
            )
        loc = parse_location(location, user=user.name if user else None, home=(user.home or None) if user else None)
        return open_storage(loc, self.settings, user)
