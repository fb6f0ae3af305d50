"""remote:, remoteprefix: and the plain-command form against a real OpenSSH server on 127.0.0.1.

The test makes its own host key, client keys, authorized_keys, known_hosts and
~/.ssh/config (in a HOME of its own), starts ``sshd -f CONF -D -e`` and stops it by pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from transport_helpers import USER, Env, content, free_port, put, shell_join, subjects, wait_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
    if os.environ.get("CI"):  # the interop tests must run in CI, never skip
        raise RuntimeError("OpenSSH server (sshd) is not installed, but CI is set: .ci/run installs openssh-server")
    pytest.skip("OpenSSH server (sshd) is not installed", allow_module_level=True)
import paramiko  # noqa: E402,F401  (a dependency of dsync-transports: missing = broken install)


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@attrs.define
class Sshd:
    port: int
    home: Path  # the client's HOME (with .ssh/config, known_hosts, keys)
    host_pub: str
    ssh_dir: Path

    def client_env(self) -> dict[str, str]:
        return dict(os.environ, HOME=str(self.home))


@pytest.fixture
def sshd(env: Env) -> Iterator[Sshd]:
    d = env.root / "sshd"
    d.mkdir()
    host_pub = _keygen(d / "host_key")
    chome = env.root / "client-home"
    ssh = chome / ".ssh"
    ssh.mkdir(parents=True)
    user_pub = _keygen(ssh / "id_test")
    wrap_pub = _keygen(ssh / "id_wrapper")
    # The trusted wrapper of remoteprefix: reads the user name, runs the server for it.
    wrapper = d / "wrapper.sh"
    wrapper.write_text("#!/bin/sh\nread -r user\nexec " + shell_join(env.server_argv()) + ' -u "$user"\n')
    wrapper.chmod(0o755)
    (d / "authorized_keys").write_text(f"{user_pub}\ncommand=\"{wrapper}\",no-pty {wrap_pub}\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
    )
    login = os.environ.get("USER") or "root"
    import pwd

    login = pwd.getpwuid(os.getuid()).pw_name
    (ssh / "config").write_text(
        f"Host testhost\n  HostName 127.0.0.1\n  Port {port}\n  User {login}\n  IdentityFile ~/.ssh/id_test\n\n"
        f"Host wraphost\n  HostName 127.0.0.1\n  Port {port}\n  User {login}\n  IdentityFile ~/.ssh/id_wrapper\n"
    )
    key_type, key_b64 = host_pub.split()[:2]
    (ssh / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-f", str(d / "sshd_config"), "-D", "-e"], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "w"))  # noqa: SIM115
    try:
        wait_port(port)
        yield Sshd(port, chome, host_pub, ssh)
    finally:
        proc.terminate()  # by its pid
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_cmd(env: Env) -> str:
    # %% keeps the remote side's own %h for its mail_location; %u is ours to expand.
    return shell_join(env.server_argv()).replace("%", "%%") + " -u%u"


def _setup(env: Env) -> None:
    put(env.local, "INBOX", "l1", "l2")
    put(env.local, "Sent", "s1")
    put(env.remote, "INBOX", "r1")
    put(env.remote, "Archive", "a1")


CASES = [
    # (command words, local must end as, remote must end as): "union", "local", "remote"
    pytest.param(["sync"], "union", "union", id="sync"),
    pytest.param(["backup"], "local", "local", id="backup"),
    pytest.param(["backup", "-R"], "remote", "remote", id="backup-R"),
    pytest.param(["sync", "-1"], "local", "union", id="sync-1"),
    pytest.param(["sync", "-1", "-R"], "union", "remote", id="sync-1-R"),
]


def _check(env: Env, before_local: set[str], before_remote: set[str], want_local: str, want_remote: str) -> None:
    union = before_local | before_remote
    want = {"union": union, "local": before_local, "remote": before_remote}
    assert subjects(env.local) == want[want_local]
    assert subjects(env.remote) == want[want_remote]


@pytest.mark.parametrize(("words", "want_local", "want_remote"), CASES)
def test_remote_paramiko(env: Env, sshd: Sshd, words: list[str], want_local: str, want_remote: str) -> None:
    _setup(env)
    bl, br = subjects(env.local), subjects(env.remote)
    rc, out, err = env.dsync("-o", f"dsync_server_cmd={server_cmd(env)}", *words, "-u", USER, "remote:testhost",
                             env=sshd.client_env())
    assert rc == 0, err
    _check(env, bl, br, want_local, want_remote)
    # A second run changes nothing.
    rc, out, err = env.dsync("-o", f"dsync_server_cmd={server_cmd(env)}", *words, "-u", USER, "remote:testhost",
                             env=sshd.client_env())
    assert rc == 0, err
    _check(env, bl, br, want_local, want_remote)


def test_user_at_host_form_and_stateful(env: Env, sshd: Sshd) -> None:
    _setup(env)
    import pwd

    login = pwd.getpwuid(os.getuid()).pw_name
    rc, out, err = env.dsync("-o", f"dsync_server_cmd={server_cmd(env)}", "-o",
                             f"dsync_ssh_config={sshd.ssh_dir / 'config'}", "mirror", "-s", "", "-u", USER,
                             f"{login}@testhost", env=sshd.client_env())
    assert rc == 0, err
    assert out.strip()  # the state
    assert content(env.local) == content(env.remote)


@pytest.mark.parametrize(("words", "want_local", "want_remote"), [CASES[0], CASES[2]])
def test_remoteprefix_with_a_wrapper(env: Env, sshd: Sshd, words: list[str], want_local: str,
                                     want_remote: str) -> None:
    _setup(env)
    bl, br = subjects(env.local), subjects(env.remote)
    # The forced command ignores whatever command we ask for; the user name comes first.
    rc, out, err = env.dsync("-o", "dsync_server_cmd=false", *words, "-u", USER, "remoteprefix:wraphost",
                             env=sshd.client_env())
    assert rc == 0, err
    _check(env, bl, br, want_local, want_remote)


@pytest.mark.parametrize(("words", "want_local", "want_remote"), [CASES[0], CASES[1], CASES[4]])
def test_plain_command_destination(env: Env, sshd: Sshd, words: list[str], want_local: str,
                                   want_remote: str) -> None:
    """doveadm-sync(1)'s `sync -u user ssh -i key host dsync server -u user`, with OpenSSH's client."""
    _setup(env)
    bl, br = subjects(env.local), subjects(env.remote)
    ssh = [
        "ssh", "-F", str(sshd.ssh_dir / "config"), "-i", str(sshd.ssh_dir / "id_test"),
        "-o", f"UserKnownHostsFile={sshd.ssh_dir / 'known_hosts'}", "-o", "BatchMode=yes", "testhost",
    ]
    rc, out, err = env.dsync(*words, "-u", USER, *ssh, *env.server_argv(), "-u", USER, env=sshd.client_env())
    assert rc == 0, err
    _check(env, bl, br, want_local, want_remote)


def test_dsync_remote_cmd_runs_a_local_command(env: Env, sshd: Sshd) -> None:
    _setup(env)
    remote_cmd = ("ssh -F {cfg} -i {key} -o UserKnownHostsFile={kh} -o BatchMode=yes -l%{{login}} %{{host}} {srv} -u%u"
                  .format(cfg=sshd.ssh_dir / "config", key=sshd.ssh_dir / "id_test", kh=sshd.ssh_dir / "known_hosts",
                          srv=shell_join(env.server_argv()).replace("%", "%%")))
    import pwd

    login = pwd.getpwuid(os.getuid()).pw_name
    rc, out, err = env.dsync("-o", f"dsync_remote_cmd={remote_cmd}", "sync", "-u", USER, f"remote:{login}@testhost",
                             env=sshd.client_env())
    assert rc == 0, err
    assert content(env.local) == content(env.remote)


def test_unknown_host_key_is_refused(env: Env, sshd: Sshd) -> None:
    _setup(env)
    before = (content(env.local), content(env.remote))
    (sshd.ssh_dir / "known_hosts").write_text("")
    rc, out, err = env.dsync("-o", f"dsync_server_cmd={server_cmd(env)}", "sync", "-u", USER, "remote:testhost",
                             env=sshd.client_env())
    assert rc == 1
    assert "host key is unknown" in err and "Traceback" not in err
    assert (content(env.local), content(env.remote)) == before


def test_changed_host_key_is_refused(env: Env, sshd: Sshd) -> None:
    _setup(env)
    before = (content(env.local), content(env.remote))
    other = _keygen(env.root / "other_key")
    key_type, key_b64 = other.split()[:2]
    (sshd.ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key_b64}\n")
    rc, out, err = env.dsync("-o", f"dsync_server_cmd={server_cmd(env)}", "sync", "-u", USER, "remote:testhost",
                             env=sshd.client_env())
    assert rc == 1
    assert "host key has CHANGED" in err
    assert (content(env.local), content(env.remote)) == before


def test_missing_remote_command_is_a_clear_error(env: Env, sshd: Sshd) -> None:
    _setup(env)
    rc, out, err = env.dsync("-o", "dsync_server_cmd=/nonexistent/dsync server -u%u", "sync", "-u", USER,
                             "remote:testhost", env=sshd.client_env())
    assert rc == 1
    assert "closed the connection before the handshake" in err and "dsync server" in err
    assert sys.executable  # the venv's python is what the server commands above use
