"""Run a real Dovecot ``doveadm`` in tests, as the judge of on-disk formats.

Use the ``doveadm`` fixture in a conftest: ``from dsync_core.testing.dovecot import doveadm``.

Dovecot refuses to touch mail as root, so when the tests run as root, doveadm runs as an
unprivileged user (``DSYNC_TEST_USER``, else ``dsynctest``, created if missing, else
``nobody``) with HOME and USER set and a private config. The interop tests are skipped
only when doveadm is not installed, and that skip becomes a failure when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

DOVEADM = shutil.which("doveadm")

CONFIG = """\
log_path = /dev/stderr
ssl = no
first_valid_uid = 1
mail_fsync = never
namespace inbox {
  inbox = yes
  separator = /
}
"""


def _mail_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    name = os.environ.get("DSYNC_TEST_USER", "dsynctest")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=False, capture_output=True,
        )
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    return pwd.getpwnam("nobody")


class Doveadm:
    """Runs doveadm on a Maildir as the mail user and checks it printed no warnings."""

    def __init__(self, base: str, user: pwd.struct_passwd) -> None:
        self.base = base
        self.user = user
        self.conf = os.path.join(base, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(CONFIG)
        os.chmod(self.conf, 0o644)

    def chown(self, path: str) -> None:
        if os.geteuid() != 0:
            return
        for dirpath, dirnames, filenames in os.walk(path):
            os.lchown(dirpath, self.user.pw_uid, self.user.pw_gid)
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), self.user.pw_uid, self.user.pw_gid)

    def run(self, location: str, *args: str, input: bytes | None = None, check: bool = True,
            allow_stderr: bool = False) -> subprocess.CompletedProcess[bytes]:
        cmd = [DOVEADM or "doveadm", "-c", self.conf, "-o", f"mail_location={location}", *args]
        if os.geteuid() == 0:
            cmd = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", *cmd]
        env = {"HOME": self.base, "USER": self.user.pw_name, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "TZ": "UTC"}
        proc = subprocess.run(cmd, input=input, capture_output=True, env=env, timeout=60)
        err = proc.stderr.decode("utf-8", "replace")
        if check:
            assert proc.returncode == 0, f"doveadm {' '.join(args)} failed ({proc.returncode}): {err}"
        if not allow_stderr:
            assert "Warning:" not in err and "Error:" not in err and "Panic:" not in err, err
        return proc

    def json(self, location: str, *args: str) -> list[dict[str, str]]:
        return json.loads(self.run(location, "-f", "json", *args).stdout or b"[]")

    def fetch(self, location: str) -> dict[tuple[str, int], tuple[str, frozenset[str]]]:
        out = {}
        for row in self.json(location, "fetch", "mailbox uid guid flags", "all"):
            flags = frozenset(row["flags"].split()) - {"\\Recent"}
            out[(row["mailbox"], int(row["uid"]))] = (row["guid"], flags)
        return out

    def status(self, location: str) -> dict[str, dict[str, str]]:
        rows = self.json(location, "mailbox", "status", "messages uidvalidity uidnext guid", "*")
        return {r["mailbox"]: r for r in rows}


@pytest.fixture
def doveadm() -> Iterator[Doveadm]:
    if DOVEADM is None:
        if os.environ.get("CI"):
            pytest.fail("doveadm is not installed, but CI is set: the Dovecot interop tests must run in CI")
        pytest.skip("doveadm is not installed")
    user = _mail_user()
    # pytest's tmp_path is private to root; the mail user must be able to reach this one.
    base = tempfile.mkdtemp(prefix="dsync-maildir-")
    os.chmod(base, 0o755)
    try:
        yield Doveadm(base, user)
    finally:
        shutil.rmtree(base, ignore_errors=True)
