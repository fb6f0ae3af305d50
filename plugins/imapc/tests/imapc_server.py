"""A private Dovecot IMAP server on 127.0.0.1 for the imapc tests.

Facts from testing-with-dovecot.md: own base_dir/state_dir/log_path and instance_name, a
short base path (unix sockets), ``dovecot -c CONF`` daemonises, so its output goes to a
file; it is stopped by the pid in ``base_dir/master.pid`` and only that pid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)

USER = "migrate@example.org"
PASSWORD = "s3cret pass"
MASTER = "admin"
MASTER_PASSWORD = "master pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mail_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in (os.environ.get("DSYNC_TEST_USER", "dsynctest"), "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user for the mail files")


CONF = """\
base_dir = {base}/run
state_dir = {base}/state
instance_name = dsync-imapc-{tag}
log_path = {base}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = {ssl}
{ssl_lines}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{base}/mail/%u
mail_fsync = never
default_internal_user = {internal}
default_login_user = {login}
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = {base}/master-users
  master = yes
}}
passdb {{
  driver = passwd-file
  args = {base}/passwd
}}
userdb {{
  driver = passwd-file
  args = {base}/passwd
  default_fields = uid={uid} gid={gid} home={base}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = {sep}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk-E-Mail {{
    special_use = \\Junk
  }}
  mailbox Gesendet {{
    special_use = \\Sent
  }}
  mailbox Starred {{
    special_use = \\Flagged
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  inet_listener http {{
    port = 0
  }}
}}
"""


class DovecotServer:
    """A running private Dovecot; ``port`` speaks IMAP, ``imaps_port`` IMAP over TLS (if any)."""

    def __init__(self, cert: tuple[str, str] | None = None, extra_users: int = 0, separator: str = "/") -> None:
        if DOVECOT is None:
            raise RuntimeError("dovecot is not installed")
        # Short: Dovecot's unix sockets live under it (paths are limited to 107 bytes).
        self.base = tempfile.mkdtemp(prefix="dimapc-")
        os.chmod(self.base, 0o755)
        self.user = USER
        self.password = PASSWORD
        self.port = free_port()
        self.imaps_port = free_port() if cert else 0
        mu = _mail_user()
        for d in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(self.base, d))
        for d in ("mail", "home"):
            os.chown(os.path.join(self.base, d), mu.pw_uid, mu.pw_gid) if os.geteuid() == 0 else None
        with open(os.path.join(self.base, "passwd"), "w") as f:
            f.write(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
            # Written up front: Dovecot notices a changed passwd-file by mtime, too coarse
            # for users added between tests.
            for i in range(1, extra_users + 1):
                f.write(f"u{i}@example.org:{{PLAIN}}{PASSWORD}::::::\n")
        with open(os.path.join(self.base, "master-users"), "w") as f:
            f.write(f"{MASTER}:{{PLAIN}}{MASTER_PASSWORD}::::::\n")
        ssl_lines = ""
        if cert:
            ssl_lines = f"ssl_cert = <{cert[0]}\nssl_key = <{cert[1]}\n"
        self.conf = os.path.join(self.base, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(
                CONF.format(
                    base=self.base, tag=uuid.uuid4().hex[:8], sep=separator, uid=mu.pw_uid, gid=mu.pw_gid, port=self.port,
                    imaps_port=self.imaps_port, ssl="yes" if cert else "no", ssl_lines=ssl_lines,
                    internal="dovecot" if os.geteuid() == 0 else mu.pw_name,
                    login="dovenull" if os.geteuid() == 0 else mu.pw_name,
                )
            )
        with open(os.path.join(self.base, "start.log"), "wb") as out:
            subprocess.run([DOVECOT, "-c", self.conf], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                           check=True, timeout=30)
        self.pid = self._wait_pid()
        self._wait_port(self.port)

    def _wait_pid(self) -> int:
        path = os.path.join(self.base, "run", "master.pid")
        for _ in range(200):
            try:
                with open(path) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start: {self.log()}")

    def _wait_port(self, port: int) -> None:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot does not answer on port {port}: {self.log()}")

    def log(self) -> str:
        try:
            with open(os.path.join(self.base, "dovecot.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def maildir(self) -> str:
        return os.path.join(self.base, "mail", USER)

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(100):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)
