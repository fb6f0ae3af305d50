"""dsync_core.settings: dovecot.conf syntax, !include, <file values, -o overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsync_core.errors import ConfigError
from dsync_core.settings import Settings, load_settings, parse_config_text, parse_overrides

CONF = """\
# a comment
mail_location = maildir:~/Maildir   # trailing comment
mail_fsync = "never"
quoted = "has # inside"

namespace inbox {
  separator = /
  inbox = yes
  mailbox Drafts {
    special_use = \\Drafts
  }
}
plugin {
  quota = maildir:User quota
}
long = one \\
two
"""


def test_sections_flatten_like_doveconf() -> None:
    v = parse_config_text(CONF)
    assert v["mail_location"] == "maildir:~/Maildir"
    assert v["mail_fsync"] == "never"
    assert v["quoted"] == "has # inside"
    assert v["namespace/inbox/separator"] == "/"
    assert v["namespace/inbox/inbox"] == "yes"
    assert v["namespace/inbox/mailbox/Drafts/special_use"] == "\\Drafts"
    assert v["plugin/quota"] == "maildir:User quota"
    assert v["long"] == "one two"
    assert Settings(v).section("namespace/inbox") == {
        "separator": "/",
        "inbox": "yes",
        "mailbox/Drafts/special_use": "\\Drafts",
    }


def test_include_relative_and_in_section(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-mail.conf").write_text("mail_location = sdbox:~/dbox\n")
    (tmp_path / "conf.d" / "20-x.conf").write_text("x = 2\n")
    (tmp_path / "inner.conf").write_text("quota = on\n")
    main = tmp_path / "dovecot.conf"
    main.write_text("x = 1\n!include conf.d/*.conf\nplugin {\n  !include inner.conf\n}\n!include_try missing.conf\n")
    v = load_settings(str(main))
    assert v["mail_location"] == "sdbox:~/dbox"
    assert v["x"] == "2", "a later include overrides an earlier value"
    assert v["plugin/quota"] == "on"
    assert v.source == str(main)


def test_include_missing_names_file_and_line(tmp_path: Path) -> None:
    main = tmp_path / "dovecot.conf"
    main.write_text("a = 1\n\n!include nothere.conf\n")
    with pytest.raises(ConfigError, match=rf"{main}:3: cannot include .*nothere.conf"):
        load_settings(str(main))


def test_include_loop_stops(tmp_path: Path) -> None:
    main = tmp_path / "loop.conf"
    main.write_text(f"!include {main}\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings(str(main))


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("a = 1\nb = 2\njust words\n", 3, "expected 'key = value'"),
        ("a = 1\n}\n", 2, "without an open section"),
        ("a b c {\n}\n", 1, "section header"),
        ("a = 1\n= 2\n", 2, "expected 'key = value'"),
    ],
)
def test_bad_line_has_file_and_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_settings(str(conf))
    assert str(ei.value).startswith(f"{conf}:{line}: ")
    assert what in str(ei.value)


def test_unclosed_section(tmp_path: Path) -> None:
    conf = tmp_path / "open.conf"
    conf.write_text("plugin {\n  a = b\n")
    with pytest.raises(ConfigError, match=rf"{conf}: missing '}}'"):
        load_settings(str(conf))


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read config file"):
        load_settings(str(tmp_path / "none.conf"))
    bad = tmp_path / "latin1.conf"
    bad.write_bytes(b"a = \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(str(bad))


def test_file_values(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("-----BEGIN-----\n")
    s = Settings({"ssl_cert": f"<{tmp_path / 'cert.pem'}", "missing": f"< {tmp_path / 'nope'}"})
    assert s.get_str("ssl_cert") == "-----BEGIN-----\n"
    assert s["ssl_cert"].startswith("<"), "raw access does not read the file"
    with pytest.raises(ConfigError, match="Setting missing: cannot read"):
        s.get_str("missing")


def test_overrides_win(tmp_path: Path) -> None:
    conf = tmp_path / "d.conf"
    conf.write_text("mail_location = maildir:~/A\nkeep = 1\n")
    s = load_settings(str(conf), ["mail_location=maildir:~/B", "namespace/inbox/separator=/", "empty="])
    assert s["mail_location"] == "maildir:~/B"
    assert s["keep"] == "1"
    assert s["namespace/inbox/separator"] == "/"
    assert s["empty"] == ""
    assert load_settings(None, ["a=b=c"])["a"] == "b=c"
    assert s.with_overrides({"keep": "2"})["keep"] == "2"
    assert s["keep"] == "1"


@pytest.mark.parametrize("pair", ["novalue", "=x", " =x"])
def test_bad_override(pair: str) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides([pair])


def test_typed_getters() -> None:
    s = Settings({"b": "Yes", "n": "no", "i": " 42 ", "t": "5 mins", "z": "10M", "x": "maybe", "bad": "1x"})
    assert s.get_bool("b") is True and s.get_bool("n") is False and s.get_bool("absent", True) is True
    assert s.get_int("i") == 42 and s.get_int("absent", 7) == 7
    assert s.get_seconds("t") == 300 and s.get_seconds("absent", 1.5) == 1.5
    assert s.get_size("z") == 10 * 1024 * 1024
    with pytest.raises(ConfigError, match="Setting x: expected yes or no"):
        s.get_bool("x")
    with pytest.raises(ConfigError, match="Setting bad: expected a number"):
        s.get_int("bad")
    with pytest.raises(ConfigError, match="Setting bad: expected a time"):
        s.get_seconds("bad")
    with pytest.raises(ConfigError, match="Setting x: expected a size"):
        s.get_size("x")
