"""Destination strings and command templates."""

from __future__ import annotations

import pytest
from dsync_transports.open import Target, expand_command, parse_destination, variables_for

from dsync_core.errors import UsageError


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("remote:vmail@mx.example.org", Target("remote", "mx.example.org", None, "vmail")),
        ("remote:mx:2222", Target("remote", "mx", 2222, "")),
        ("remoteprefix:root@[::1]:22", Target("remoteprefix", "::1", 22, "root")),
        ("tcp:127.0.0.1:12345", Target("tcp", "127.0.0.1", 12345, "")),
        ("tcps:mail.example.org", Target("tcps", "mail.example.org", None, "")),
        ("user@host", Target("remote", "host", None, "user")),
        ("ssh -i key host dsync server -u jane",
         Target("command", argv=("ssh", "-i", "key", "host", "dsync", "server", "-u", "jane"))),
        ("ssh host doveadm", Target("command", argv=("ssh", "host", "doveadm", "dsync-server"))),
        ("/usr/local/bin/mywrapper", Target("command", argv=("/usr/local/bin/mywrapper", "dsync-server"))),
        ("maildir:~/Maildir", None),
    ],
)
def test_parse_destination(text: str, target: Target | None) -> None:
    assert parse_destination(text) == target


@pytest.mark.parametrize("text", ["tcp:user@host", "remote:a b@", "tcp:host:99999", "remote:"])
def test_bad_destinations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_destination(text)


def test_remote_cmd_expansion_drops_empty_arguments() -> None:
    v = variables_for("jane@example.org", "", "mx")
    assert expand_command("ssh -l%{login} %{host} doveadm dsync-server -u%u -U", v, quote=False) == [
        "ssh", "mx", "doveadm", "dsync-server", "-ujane@example.org", "-U"]
    v = variables_for("o'brien", "vmail", "mx")
    assert expand_command("dsync server -u%u", v, quote=True) == "dsync server -u'o'\"'\"'brien'"
