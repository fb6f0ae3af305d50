"""dsync_core.location: Dovecot mail location strings."""

from __future__ import annotations

import pytest

from dsync_core.errors import ConfigError
from dsync_core.location import expand_vars, parse_location, user_variables


def test_driver_path_and_options() -> None:
    loc = parse_location("maildir:~/Maildir:LAYOUT=fs:INDEX=~/idx", home="/home/jane")
    assert (loc.scheme, loc.path) == ("maildir", "/home/jane/Maildir")
    assert loc.options == {"LAYOUT": "fs", "INDEX": "/home/jane/idx"}
    assert str(loc) == "maildir:~/Maildir:LAYOUT=fs:INDEX=~/idx"


def test_option_keys_case_insensitive_and_flags() -> None:
    loc = parse_location("maildir:/m:layout=fs:NOSELECT", home="/h")
    assert loc.option("LAYOUT") == "fs"
    assert loc.option("layout") == "fs"
    assert loc.option("noselect") == ""
    assert loc.option("missing", "dflt") == "dflt"


def test_bare_tilde_is_home() -> None:
    assert parse_location("maildir:~", home="/home/jane").path == "/home/jane"


def test_tilde_uses_process_home_without_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/somewhere/me")
    assert parse_location("maildir:~/Mail").path == "/somewhere/me/Mail"


def test_user_variables_expand() -> None:
    loc = parse_location("maildir:/var/mail/%d/%n:INDEX=/idx/%u:CONTROL=%h/ctl", user="jane@example.org", home="/h/j")
    assert loc.path == "/var/mail/example.org/jane"
    assert loc.options["INDEX"] == "/idx/jane@example.org"
    assert loc.options["CONTROL"] == "/h/j/ctl"


def test_long_variable_names_and_percent() -> None:
    v = user_variables("bob@x.test", "/home/bob")
    assert expand_vars("%{user}|%{username}|%{domain}|%{home}|100%%", v) == "bob@x.test|bob|x.test|/home/bob|100%"


def test_user_without_domain() -> None:
    assert parse_location("maildir:/m/%d/%n", user="bob").path == "/m//bob"


def test_non_path_options_not_expanded() -> None:
    loc = parse_location("maildir:/m:LAYOUT=%u", user="bob")
    assert loc.options["LAYOUT"] == "%u"


def test_double_colon_is_literal_colon() -> None:
    loc = parse_location("maildir:/srv/a::b/Maildir:LAYOUT=fs", home="/h")
    assert loc.path == "/srv/a:b/Maildir"
    assert loc.options == {"LAYOUT": "fs"}


def test_empty_path_allowed() -> None:
    loc = parse_location("imapc:", home="/h")
    assert (loc.scheme, loc.path, loc.options) == ("imapc", "", {})


@pytest.mark.parametrize("text", ["Maildir", "", ":/path", "Maildir:/x", "1mail:/x", "mail dir:/x"])
def test_malformed_location(text: str) -> None:
    with pytest.raises(ConfigError, match="location"):
        parse_location(text, home="/h")


def test_unknown_variable() -> None:
    with pytest.raises(ConfigError, match="%z"):
        parse_location("maildir:/m/%z", user="bob")


def test_variable_without_user() -> None:
    with pytest.raises(ConfigError, match="%u"):
        parse_location("maildir:/m/%u", home="/h")


def test_tilde_other_user_refused() -> None:
    with pytest.raises(ConfigError, match="~bob"):
        parse_location("maildir:~bob/Maildir", home="/h")


def test_tilde_without_home() -> None:
    with pytest.raises(ConfigError, match="no home"):
        parse_location("maildir:~/Maildir", user="bob")


def test_error_exit_code() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_location("nope")
    assert ei.value.exit_code == 78
