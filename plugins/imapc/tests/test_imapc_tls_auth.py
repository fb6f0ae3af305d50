"""TLS (imaps, STARTTLS, certificate verification) and XOAUTH2 / OAUTHBEARER logins."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from imapc_helpers import client, copy_view, server_view
from imapc_proxy import Listener
from imapc_server import DOVECOT, DovecotServer

trustme = pytest.importorskip("trustme")


@pytest.fixture
def tls_imap(tmp_path):  # type: ignore[no-untyped-def]
    if DOVECOT is None:
        pytest.skip("dovecot (dovecot-imapd) is not installed")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_pem, cert_pem = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_pem))
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    for p in (key_pem, cert_pem):
        os.chmod(p, 0o644)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = DovecotServer(cert=(str(cert_pem), str(key_pem)))
    server.ca_file = str(ca_file)  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def run(server, dest: str, *opts: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "dsync_core", "-o", "mail_location=imapc:", "-o", "imapc_host=127.0.0.1",
           "-o", f"imapc_user={server.user}", "-o", f"imapc_password={server.password}", *opts,
           "backup", "--json", f"maildir:{dest}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["imaps", "starttls"])
def test_tls_with_verified_certificate(tls_imap, tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    c = client(tls_imap)
    c.append("INBOX", b"Subject: over tls\r\nMessage-ID: <tls@x>\r\n\r\nsecret\r\n", flags=[b"\\Seen"])
    c.logout()
    port = tls_imap.imaps_port if mode == "imaps" else tls_imap.port
    dest = str(tmp_path / "Maildir")
    p = run(tls_imap, dest, "-o", f"imapc_port={port}", "-o", f"imapc_ssl={mode}",
            "-o", f"ssl_client_ca_file={tls_imap.ca_file}")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["messages_copied"] == 1
    assert server_view(tls_imap) == copy_view(f"maildir:{dest}")


@pytest.mark.parametrize("mode", ["imaps", "starttls"])
def test_tls_untrusted_certificate_refused(tls_imap, tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    port = tls_imap.imaps_port if mode == "imaps" else tls_imap.port
    p = run(tls_imap, str(tmp_path / "Maildir"), "-o", f"imapc_port={port}", "-o", f"imapc_ssl={mode}",
            "-o", f"ssl_client_ca_file={other}")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "certificate verification failed" in lines[0], p.stderr


class OAuthFront(Listener):
    """A loopback IMAP front that offers AUTH=XOAUTH2 and AUTH=OAUTHBEARER, checks the
    bearer token, then logs in to the real Dovecot behind it and relays the session."""

    def __init__(self, server: DovecotServer, token: str) -> None:
        self.server = server
        self.token = token
        self.seen: list[str] = []
        super().__init__(4)

    def handle(self, cl: socket.socket) -> None:
        self._session(cl)

    def _session(self, cl: socket.socket) -> None:
        f = cl.makefile("rwb", buffering=0)
        caps = b"IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER"
        f.write(b"* OK [CAPABILITY " + caps + b"] front ready\r\n")
        while True:
            line = f.readline()
            if not line:
                return
            tag, _, rest = line.decode().strip().partition(" ")
            cmd = rest.split()
            if cmd and cmd[0].upper() == "CAPABILITY":
                f.write(b"* CAPABILITY " + caps + b"\r\n" + tag.encode() + b" OK done\r\n")
                continue
            if len(cmd) >= 2 and cmd[0].upper() == "AUTHENTICATE":
                mech = cmd[1].upper()
                if len(cmd) > 2:
                    data = cmd[2]
                else:
                    f.write(b"+ \r\n")
                    data = f.readline().decode().strip()
                sasl = base64.b64decode(data).decode()
                self.seen.append(mech)
                ok = f"auth=Bearer {self.token}\x01" in sasl and self.server.user in sasl
                if not ok:
                    f.write(tag.encode() + b" NO [AUTHENTICATIONFAILED] invalid token\r\n")
                    continue
                up = socket.create_connection(("127.0.0.1", self.server.port))
                uf = up.makefile("rwb", buffering=0)
                uf.readline()
                uf.write(b'x LOGIN "%s" "%s"\r\n' % (self.server.user.encode(), self.server.password.encode()))
                while not uf.readline().startswith(b"x "):
                    pass
                f.write(tag.encode() + b" OK logged in\r\n")
                self._relay(cl, up)
                return
            f.write(tag.encode() + b" BAD unexpected\r\n")

    @staticmethod
    def _relay(a: socket.socket, b: socket.socket) -> None:
        def pump(s: socket.socket, d: socket.socket) -> None:
            try:
                while data := s.recv(65536):
                    d.sendall(data)
            except OSError:
                pass
            for x in (s, d):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(b, a), daemon=True)
        t.start()
        pump(a, b)
        t.join(5)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def imap_plain():  # type: ignore[no-untyped-def]
    if DOVECOT is None:
        pytest.skip("dovecot (dovecot-imapd) is not installed")
    server = DovecotServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mech", ["xoauth2", "oauthbearer"])
def test_oauth_token_from_setting_and_command(imap_plain, tmp_path, mech) -> None:  # type: ignore[no-untyped-def]
    c = client(imap_plain)
    c.append("INBOX", b"Subject: oauth\r\nMessage-ID: <oauth@x>\r\n\r\nhi\r\n")
    c.logout()
    front = OAuthFront(imap_plain, "tok-123")
    try:
        base = [sys.executable, "-m", "dsync_core", "-o", "mail_location=imapc:", "-o", "imapc_host=127.0.0.1",
                "-o", f"imapc_port={front.port}", "-o", f"imapc_user={imap_plain.user}",
                "-o", f"imapc_sasl_mechanisms={mech}"]
        dest = str(tmp_path / "Maildir")
        p = subprocess.run([*base, "-o", "imapc_password=tok-123", "backup", f"maildir:{dest}"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert server_view(imap_plain) == copy_view(f"maildir:{dest}")
        helper = tmp_path / "token.sh"
        helper.write_text("#!/bin/sh\necho tok-123\n")
        os.chmod(helper, 0o755)
        p = subprocess.run([*base, "-o", f"imapc_password_command={helper}", "backup", f"maildir:{dest}2"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert set(front.seen) == {mech.upper()} and len(front.seen) >= 2
        p = subprocess.run([*base, "-o", "imapc_password=expired", "backup", f"maildir:{dest}3"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "login as" in lines[0] and "invalid token" in lines[0], p.stderr
    finally:
        front.close()


def test_master_user_login(imap_plain, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """imapc_master_user: AUTHENTICATE PLAIN as the master user, authorised as imapc_user."""
    from imapc_server import MASTER, MASTER_PASSWORD

    c = client(imap_plain)
    c.append("INBOX", b"Subject: master\r\nMessage-ID: <m@x>\r\n\r\nhi\r\n")
    c.logout()
    base = [sys.executable, "-m", "dsync_core", "-o", "mail_location=imapc:", "-o", "imapc_host=127.0.0.1",
            "-o", f"imapc_port={imap_plain.port}", "-o", f"imapc_user={imap_plain.user}",
            "-o", f"imapc_master_user={MASTER}"]
    dest = str(tmp_path / "Maildir")
    p = subprocess.run([*base, "-o", f"imapc_password={MASTER_PASSWORD}", "backup", f"maildir:{dest}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert server_view(imap_plain) == copy_view(f"maildir:{dest}")
    p = subprocess.run([*base, "-o", f"imapc_password={imap_plain.password}", "backup", f"maildir:{dest}2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "login as" in p.stderr  # the user's own password is not the master's
