"""The core conformance suite, run against imapc on a real Dovecot (one fresh user per test)."""

from __future__ import annotations

import itertools
import os

import pytest
from imapc_server import DOVECOT, PASSWORD, DovecotServer

from dsync_core.location import parse_location
from dsync_core.settings import Settings
from dsync_core.testing import StorageConformance

_n = itertools.count(1)


@pytest.fixture(scope="module")
def shared_imap():  # type: ignore[no-untyped-def]
    if DOVECOT is None:
        if os.environ.get("CI"):
            pytest.fail("dovecot is not installed, but CI is set")
        pytest.skip("dovecot (dovecot-imapd) is not installed")
    server = DovecotServer(extra_users=400)
    try:
        yield server
    finally:
        server.stop()


class TestImapcConformance(StorageConformance):
    @pytest.fixture
    def storage_factory(self, shared_imap, tmp_path):  # type: ignore[no-untyped-def]
        from dsync_imapc.storage import ImapcStorage

        user = f"u{next(_n)}@example.org"
        settings = Settings({"imapc_host": "127.0.0.1", "imapc_port": str(shared_imap.port),
                             "imapc_user": user, "imapc_password": PASSWORD})
        loc = parse_location(f"imapc:{tmp_path / 'cache'}")
        return lambda: ImapcStorage(loc, settings)

    # -- where IMAP itself differs from the contract: the IMAP outcome, asserted -------------

    def test_subscribe_unsubscribe(self, writable, make_storage) -> None:  # type: ignore[no-untyped-def]
        """Dovecot (like many servers) refuses to subscribe a folder that doesn't exist."""
        from dsync_core.errors import StorageError

        writable.create_mailbox("Entwürfe")
        writable.create_mailbox("Archive/2024")
        writable.set_subscribed("INBOX", True)
        writable.set_subscribed("Entwürfe", True)
        writable.set_subscribed("Archive/2024", True)
        assert {"INBOX", "Entwürfe", "Archive/2024"} <= set(writable.subscriptions())
        writable.set_subscribed("Entwürfe", False)
        assert "Entwürfe" not in writable.subscriptions()
        assert set(make_storage().subscriptions()) == {"INBOX", "Archive/2024"}
        with pytest.raises(StorageError, match="SUBSCRIBE"):
            writable.set_subscribed("Missing", True)

    def test_subscription_log_records(self, writable) -> None:  # type: ignore[no-untyped-def]
        from dsync_core.mailboxlog import name_hash
        from dsync_core.model import MailboxLogType

        writable.create_mailbox("Lists")
        writable.set_subscribed("Lists", True)
        writable.set_subscribed("Lists", False)
        recs = [(r.type, r.guid) for r in writable.mailbox_log()]
        h = name_hash("Lists")
        assert recs.index((MailboxLogType.SUBSCRIBE, h)) < recs.index((MailboxLogType.UNSUBSCRIBE, h))

    def test_save_fetch_round_trip(self, mbox) -> None:  # type: ignore[no-untyped-def]
        """IMAP carries messages with CRLF line ends: a bare LF comes back as CRLF."""
        import io
        import re

        from dsync_core.model import SaveRequest
        from dsync_core.testing import message, read_body

        bodies = [
            message("crlf"),
            b"Subject: lf only\n\nbare\nlines\n",
            b"Subject: 8bit\r\n\r\n" + bytes(b for b in range(256) if b not in (0, 10, 13)) + b"\r\n",
            b"Subject: no final newline\r\n\r\nend",
        ]
        recs = mbox.save([SaveRequest(body=io.BytesIO(b)) for b in bodies])
        assert len(recs) == len(bodies)
        for rec, body in zip(recs, bodies):
            assert read_body(mbox, rec.uid) == re.sub(rb"(?<!\r)\n", b"\r\n", body)
