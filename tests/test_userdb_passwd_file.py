"""The passwd-file userdb (Dovecot's format), its configuration forms, and ``dsync user``."""

from __future__ import annotations

import json
import os
import pwd

import pytest

from dsync_core.cli import main
from dsync_core.errors import ConfigError
from dsync_core.plugin.manager import build_plugin_manager, get_plugin_manager
from dsync_core.settings import Settings, parse_config_text
from dsync_core.userdb import (
    configured_userdbs,
    parse_passwd_file_args,
    parse_passwd_line,
    parse_passwd_text,
    read_passwd_file,
    system_lookup,
    wildcard_match,
)

USERS = """\
# comment line, then a blank one

alice:{PLAIN}secret:1000:1001:Alice A:/home/alice:/bin/sh:userdb_mail=maildir:~/Maildir userdb_mail_replica=remote:backup.example.org
bob@example.org:{PLAIN}x:::Bob:/srv/bob::mail=maildir:~/Mail:LAYOUT=fs mail_replica=maildir:/srv/replica/%u quota_rule=*:storage=1G
carol:x
"""


def _write(tmp_path, text: str = USERS, name: str = "users") -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- parsing ------------------------------------------------------------------------------------


def test_parse_lines_fields_and_prefixes() -> None:
    users = parse_passwd_text(USERS, "users")
    assert list(users) == ["alice", "bob@example.org", "carol"]
    alice = users["alice"]
    assert (alice.uid, alice.gid, alice.home) == (1000, 1001, "/home/alice")
    # userdb_ prefix stripped; a value may contain ':'
    assert alice.fields == {"mail": "maildir:~/Maildir", "mail_replica": "remote:backup.example.org"}
    bob = users["bob@example.org"]
    assert bob.uid is None and bob.gid is None and bob.home == "/srv/bob"
    assert bob.fields["mail"] == "maildir:~/Mail:LAYOUT=fs"
    assert bob.fields["mail_replica"] == "maildir:/srv/replica/%u"
    assert bob.fields["quota_rule"] == "*:storage=1G"
    carol = users["carol"]
    assert carol.home == "" and carol.fields == {} and carol.uid is None


def test_prefixed_field_wins_over_plain_and_home_uid_fields_override() -> None:
    info = parse_passwd_line("u:x:1:2::/h::mail=maildir:/a userdb_mail=maildir:/b userdb_home=/other uid=7", "f:1")
    assert info is not None
    assert info.fields == {"mail": "maildir:/b"}
    assert info.home == "/other" and info.uid == 7 and info.gid == 2


def test_uid_may_be_a_system_user_name() -> None:
    root = pwd.getpwuid(0).pw_name
    info = parse_passwd_line(f"u:x:{root}:0::/h", "f:1")
    assert info is not None and info.uid == 0


def test_valueless_extra_field_kept() -> None:
    info = parse_passwd_line("u:x:::::: noreplicate userdb_nopassword", "f:1")
    assert info is not None and info.fields == {"noreplicate": "", "nopassword": ""}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (":x:1:1::/h", "users:3: empty user name"),
        ("nocolon", "users:3: missing ':' after user name 'nocolon'"),
        ("u:x:12a:1::/h", "users:3: User u has invalid UID '12a'"),
        ("u:x:1:no-such-group-xyz::/h", "users:3: User u has invalid GID 'no-such-group-xyz'"),
        ("u:x:1:1::/h:/bin/sh mail=maildir:~/Mail", "users:3: User u has an invalid extra field '~/Mail'"),
        ("u:x:1:1::/h::=value", "users:3: User u has an invalid extra field '=value'"),
        ("u s:x:1:1::/h", "users:3: invalid user name 'u s'"),
    ],
)
def test_malformed_lines_name_file_and_line(line: str, message: str) -> None:
    text = "# header\nok:x:1:1::/h\n" + line + "\n"
    with pytest.raises(ConfigError) as err:
        parse_passwd_text(text, "users")
    assert message in err.value.message


def test_duplicate_user_keeps_first(capfd) -> None:  # type: ignore[no-untyped-def]
    # Through the CLI's log setup: the warning is a doveadm-style line on stderr.
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".passwd", delete=False) as f:
        f.write("a:x:1:1::/first\na:x:2:2::/second\n")
    try:
        assert parse_passwd_text("a:x:1:1::/first\na:x:2:2::/second\n", "users")["a"].home == "/first"
        capfd.readouterr()
        assert main(["-o", f"userdb=passwd-file:{f.name}", "user", "-f", "home", "a"]) == 0
        out, err = capfd.readouterr()
        assert out == "/first\n"
        assert f"Warning: passwd-file {f.name}:2: User a exists more than once" in err
    finally:
        os.unlink(f.name)


def test_read_file_errors_and_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"passwd-file .*missing: cannot read"):
        read_passwd_file(str(tmp_path / "missing"))
    path = _write(tmp_path, "a:x:1:1::/one\n")
    assert read_passwd_file(path)["a"].home == "/one"
    (tmp_path / "users").write_text("a:x:1:1::/changed-home\n", encoding="utf-8")
    os.utime(path, ns=(1, 10**9))  # a different mtime even on coarse clocks
    assert read_passwd_file(path)["a"].home == "/changed-home"


def test_args_parsing() -> None:
    assert parse_passwd_file_args("/etc/users").path == "/etc/users"
    a = parse_passwd_file_args("scheme=PLAIN username_format=%n /etc/%d/passwd")
    assert (a.path, a.username_format) == ("/etc/%d/passwd", "%n")
    with pytest.raises(ConfigError, match="no file name"):
        parse_passwd_file_args("username_format=%n")


# -- configuration --------------------------------------------------------------------------


def test_config_forms() -> None:
    conf = parse_config_text("userdb {\n  driver = passwd-file\n  args = /etc/dovecot/users\n}\n")
    dbs = configured_userdbs(Settings(conf))
    assert [(d.driver, d.args) for d in dbs] == [("passwd-file", "/etc/dovecot/users")]
    named = parse_config_text(
        "userdb files {\n driver = passwd-file\n args = /a\n}\nuserdb sys {\n driver = passwd\n}\n"
    )
    assert [(d.driver, d.args) for d in configured_userdbs(Settings(named))] == [("passwd-file", "/a"), ("passwd", "")]
    assert [(d.driver, d.args) for d in configured_userdbs(Settings({"userdb": "passwd-file:/x/y"}))] == [
        ("passwd-file", "/x/y")
    ]
    assert configured_userdbs(Settings()) == []


def test_lookup_through_hooks_and_system_fallback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pm = build_plugin_manager(load_entrypoints=False)
    path = _write(tmp_path)
    settings = Settings({"userdb": f"passwd-file:{path}"})
    alice = pm.hook.dsync_userdb_lookup(user="alice", settings=settings)
    assert alice is not None and alice.home == "/home/alice"
    root = pwd.getpwuid(0).pw_name
    # A configured passwd-file is the userdb: system users are not consulted...
    assert pm.hook.dsync_userdb_lookup(user=root, settings=settings) is None
    # ...unless the system userdb (driver passwd) is configured too, or nothing is.
    both = Settings({"userdb/a/driver": "passwd-file", "userdb/a/args": path, "userdb/b/driver": "passwd"})
    assert pm.hook.dsync_userdb_lookup(user=root, settings=both).home == pwd.getpwnam(root).pw_dir
    assert pm.hook.dsync_userdb_lookup(user="alice", settings=both).home == "/home/alice"
    assert pm.hook.dsync_userdb_lookup(user=root, settings=Settings()).uid == 0
    assert system_lookup(root, settings) is None
    names = {u.name for lst in pm.hook.dsync_userdb_iter(settings=settings) for u in lst}
    assert names == {"alice", "bob@example.org", "carol"}


def test_unknown_driver_is_config_error() -> None:
    pm = build_plugin_manager(load_entrypoints=False)
    with pytest.raises(ConfigError, match="Unknown userdb driver 'sql'"):
        pm.hook.dsync_userdb_lookup(user="x", settings=Settings({"userdb/driver": "sql"}))


def test_username_format_and_path_variables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "example.org").mkdir()
    _write(tmp_path, "jane:x:1:1::/home/jane\n", "example.org/passwd")
    pm = build_plugin_manager(load_entrypoints=False)
    settings = Settings({"userdb/driver": "passwd-file", "userdb/args": f"username_format=%n {tmp_path}/%d/passwd"})
    jane = pm.hook.dsync_userdb_lookup(user="jane@example.org", settings=settings)
    assert jane is not None and jane.name == "jane"
    assert pm.hook.dsync_userdb_lookup(user="jane@other.example", settings=settings) is None
    with pytest.raises(ConfigError, match="cannot list users"):
        pm.hook.dsync_userdb_iter(settings=settings)


def test_wildcard_match() -> None:
    assert wildcard_match("*", "anything")
    assert wildcard_match("*@example.org", "Bob@EXAMPLE.org")
    assert wildcard_match("?ob", "bob") and not wildcard_match("?ob", "boob")
    assert not wildcard_match("a.c", "abc")  # '.' is literal


# -- dsync user -----------------------------------------------------------------------------


@pytest.fixture
def run(capfd):  # type: ignore[no-untyped-def]
    def go(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capfd.readouterr()
        return code, out, err

    return go


def test_user_command_fields_and_blank_line_between_users(tmp_path, run) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path)
    code, out, err = run("-o", f"userdb=passwd-file:{path}", "user", "alice", "bob@example.org")
    assert code == 0, err
    assert out == (
        "field\tvalue\nuid\t1000\ngid\t1001\nhome\t/home/alice\nmail\tmaildir:~/Maildir\n"
        "mail_replica\tremote:backup.example.org\n"
        "\nhome\t/srv/bob\nmail\tmaildir:~/Mail:LAYOUT=fs\nmail_replica\tmaildir:/srv/replica/%u\n"
        "quota_rule\t*:storage=1G\n"
    )


def test_user_command_mask_field_json_and_missing(tmp_path, run) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "dsync.conf"
    conf.write_text(f"userdb {{\n  driver = passwd-file\n  args = {_write(tmp_path)}\n}}\n", encoding="utf-8")
    code, out, _ = run("-c", str(conf), "user", "*")
    assert (code, out) == (0, "alice\nbob@example.org\ncarol\n")
    code, out, _ = run("-c", str(conf), "user", "?o*")
    assert (code, out) == (0, "bob@example.org\n")
    code, out, _ = run("-c", str(conf), "user", "-f", "mail_replica", "alice")
    assert (code, out) == (0, "remote:backup.example.org\n")
    code, out, _ = run("-c", str(conf), "-f", "json", "user", "alice")
    assert code == 0
    assert json.loads(out)[0] == {"field": "uid", "value": "1000"}
    code, out, _ = run("-c", str(conf), "user", "nobody")
    assert (code, out) == (67, "userdb lookup: user nobody doesn't exist\n")
    # No -u: a user without mail gets the configured mail_location, as doveadm fills defaults.
    code, out, _ = run("-c", str(conf), "-o", "mail_location=maildir:~/M", "user", "carol")
    assert (code, out) == (0, "field\tvalue\nmail\tmaildir:~/M\n")
    code, out, _ = run("-c", str(conf), "-o", "mail_location=maildir:~/M", "user", "-u", "carol")
    assert (code, out) == (0, "")


def test_user_command_malformed_file(tmp_path, run) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, "ok:x:1:1::/h\nbad:x:one:1::/h\n")
    code, out, err = run("-o", f"userdb=passwd-file:{path}", "user", "ok")
    assert code == 78
    assert f"{path}:2: User bad has invalid UID 'one'" in err
    assert "Traceback" not in err


def test_user_command_uses_global_manager_defaults() -> None:
    # The passwd-file userdb is a built-in plugin, registered before the system default.
    names = [name for name, _ in get_plugin_manager().list_name_plugin()]
    assert names.index("dsync_core.userdb") < names.index("dsync_core.defaults")
