"""tcp: and tcps: against `dsync server --listen`, with certificates made by trustme."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from transport_helpers import USER, Env, content, put

PW = "s3cret-pw"


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    out = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem",
           "other_ca": tmp_path / "other-ca.pem"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(out["cert"]))
    cert.private_key_pem.write_to_path(str(out["key"]))
    trustme.CA().cert_pem.write_to_path(str(out["other_ca"]))
    return out


def _tls_server(listener, certs: dict[str, Path]):  # type: ignore[no-untyped-def]
    # Dovecot's "<file" form for both.
    return listener("-o", f"doveadm_password={PW}", "-o", f"ssl_cert=<{certs['cert']}",
                    "-o", f"ssl_key=<{certs['key']}")


def test_plain_tcp_sync_and_backup(env: Env, listener) -> None:  # type: ignore[no-untyped-def]
    put(env.local, "INBOX", "l1", "l2")
    put(env.remote, "Archive", "r1")
    srv = listener("-o", f"doveadm_password={PW}")
    rc, out, err = env.dsync("-o", f"doveadm_password={PW}", "sync", "-u", USER, f"tcp:127.0.0.1:{srv.port}")
    assert rc == 0, err
    assert content(env.local) == content(env.remote)
    assert set(content(env.local)) == {"INBOX", "Archive"}
    # doveadm_port is the default port; -R backup pulls.
    put(env.remote, "INBOX", "r2")
    rc, out, err = env.dsync("-o", f"doveadm_password={PW}", "-o", f"doveadm_port={srv.port}",
                             "backup", "-R", "-u", USER, "tcp:127.0.0.1")
    assert rc == 0, err
    assert content(env.local) == content(env.remote)


def test_tcps_with_the_right_ca(env: Env, listener, certs) -> None:  # type: ignore[no-untyped-def]
    put(env.local, "INBOX", "l1")
    srv = _tls_server(listener, certs)
    rc, out, err = env.dsync("-o", f"doveadm_password={PW}", "-o", f"ssl_client_ca_file={certs['ca']}",
                             "sync", "-u", USER, f"tcps:localhost:{srv.port}")
    assert rc == 0, err
    assert content(env.local) == content(env.remote) and content(env.remote)["INBOX"]


def test_tcps_with_a_ca_directory(env: Env, listener, certs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ssl_client_ca_dir: a directory of hashed CA certificates (as `openssl rehash` makes)."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl, "openssl (a dependency of dovecot-core) is needed to hash a CA directory"
    ca_dir = tmp_path / "cas"
    ca_dir.mkdir()
    shutil.copy(certs["ca"], ca_dir / "test-ca.pem")
    subprocess.run([openssl, "rehash", str(ca_dir)], check=True, capture_output=True)
    put(env.local, "INBOX", "l1")
    srv = _tls_server(listener, certs)
    rc, out, err = env.dsync("-o", f"doveadm_password={PW}", "-o", f"ssl_client_ca_dir={ca_dir}",
                             "sync", "-u", USER, f"tcps:localhost:{srv.port}")
    assert rc == 0, err
    assert content(env.local) == content(env.remote) and content(env.remote)["INBOX"]
    # The other CA in the directory instead: refused.
    for f in ca_dir.iterdir():
        f.unlink()
    shutil.copy(certs["other_ca"], ca_dir / "other-ca.pem")
    subprocess.run([openssl, "rehash", str(ca_dir)], check=True, capture_output=True)
    put(env.local, "INBOX", "l2")
    rc, out, err = env.dsync("-o", f"doveadm_password={PW}", "-o", f"ssl_client_ca_dir={ca_dir}",
                             "sync", "-u", USER, f"tcps:localhost:{srv.port}")
    assert rc == 1 and "certificate is not trusted" in err, err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown-ca", "certificate is not trusted"),
        ("wrong-host", "certificate is not trusted"),
        ("wrong-password", "Authentication failed"),
        ("no-password", "doveadm_password is not set"),
        ("plain-to-tls", "tcp:"),
    ],
)
def test_tcps_failures_exit_1_and_write_nothing(env: Env, listener, certs, case: str, message: str) -> None:  # type: ignore[no-untyped-def]
    put(env.local, "INBOX", "l1")
    put(env.remote, "INBOX", "r1")
    before = (content(env.local), content(env.remote))
    srv = _tls_server(listener, certs)
    ca = certs["other_ca"] if case == "unknown-ca" else certs["ca"]
    host = "127.0.0.1" if case == "wrong-host" else "localhost"
    pw = {"wrong-password": "guess", "no-password": ""}.get(case, PW)
    scheme = "tcp" if case == "plain-to-tls" else "tcps"
    rc, out, err = env.dsync("-o", f"doveadm_password={pw}", "-o", f"ssl_client_ca_file={ca}", "sync", "-T", "5",
                             "-u", USER, f"{scheme}:{host}:{srv.port}")
    assert rc == 1, err
    assert message in err
    assert "Traceback" not in err
    assert (content(env.local), content(env.remote)) == before


def test_plain_tcp_server_refuses_a_client_without_the_password(env: Env, listener) -> None:  # type: ignore[no-untyped-def]
    srv = listener("-o", f"doveadm_password={PW}")
    rc, out, err = env.dsync("-o", "doveadm_password=nope", "sync", "-u", USER, f"tcp:127.0.0.1:{srv.port}")
    assert rc == 1 and "Authentication failed" in err
    assert content(env.remote) == {}
    log = srv.stop()
    assert "authentication failed for user tester" in log
    assert "nope" not in log


def test_listener_needs_a_password(env: Env) -> None:
    import subprocess

    p = subprocess.run([*env.server_argv(), "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 78 and "doveadm_password" in p.stderr


def test_one_connection_per_user_at_a_time(env: Env, listener) -> None:  # type: ignore[no-untyped-def]
    import socket

    from dsync_core.errors import LockTimeoutError
    from dsync_core.protocol import SocketChannel
    from dsync_core.remote import RemoteReplica

    srv = listener("-o", f"doveadm_password={PW}", "-o", "dsync_server_user_lock_timeout=0.5")

    def connect() -> RemoteReplica:
        s = socket.create_connection(("127.0.0.1", srv.port))
        return RemoteReplica(SocketChannel(s, 10), user=USER, password=PW, require_auth=True, io_timeout=10)

    first = connect()
    try:
        with pytest.raises(LockTimeoutError, match="being synced by another connection"):
            connect()
        assert [m.name for m in first.tree().mailboxes] == ["INBOX"]
    finally:
        first.close()
    second = connect()  # the lock is free again
    second.close()
