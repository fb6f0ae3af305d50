"""A conformance suite for storage backends: subclass it, give it one fixture, run pytest.

The suite checks a :class:`dsync_core.storage.Storage` against the contract the sync engine
relies on (see ``dsync_core/storage.py``). Write a test module in your plugin::

    import pytest
    from dsync_core.testing import StorageConformance

    class TestMyStore(StorageConformance):
        @pytest.fixture
        def storage_factory(self, tmp_path):
            return lambda: MyStorage(str(tmp_path / "mail"))

``storage_factory`` returns a callable taking no arguments. Each call opens a **new
Storage object on the same location**; the location is empty when the test starts
(use a per-test ``tmp_path``, or a unique name). The suite calls it again to check that
data survives a reopen and that two open storages see each other's changes. The suite
closes every storage it opened.

Tests that need a capability the storage declares it lacks (``have_save_guids``,
``have_save_uids``, ``have_modseqs``, ``read_only``) are skipped with a reason; nothing else is skipped.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import re
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from ..errors import ExistsError, InvalidNameError, LockTimeoutError, NotFoundError
from ..mailboxlog import name_hash
from ..model import FlagUpdate, MailboxLogType, MessageRecord, SaveRequest
from ..storage import Mailbox, Storage

__all__ = ["StorageConformance", "ChunkOnlyReader", "message"]

_GUID_RE = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 64 * 1024


def message(subject: str = "test", body: bytes = b"Hello.\r\n") -> bytes:
    """A small RFC 5322 message with a unique Message-ID."""
    return (
        b"From: a@example.org\r\nTo: b@example.org\r\n"
        + f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n".encode()
        + body
    )


class ChunkOnlyReader(io.RawIOBase):
    """A body stream that fails the test if a storage reads it whole (``read()``/``read(-1)``)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        assert size is not None and size >= 0, "storage read a message body whole instead of in chunks"
        self.calls += 1
        return self._buf.read(size)

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        self.calls += 1
        return self._buf.readinto(b)

    def readall(self) -> bytes:
        raise AssertionError("storage read a message body whole instead of in chunks")


def read_body(mbox: Mailbox, uid: int) -> bytes:
    """Read a body the way the engine does: in 64 KiB chunks."""
    parts = []
    with mbox.open_body(uid) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            parts.append(chunk)
    return b"".join(parts)


def _child_try_lock(factory: Callable[[], Storage], timeout: float, conn) -> None:  # type: ignore[no-untyped-def]
    """Runs in a forked process: try to take the storage lock, report what happened."""
    try:
        storage = factory()
        try:
            with storage.lock(timeout=timeout):
                conn.send("locked")
        finally:
            storage.close()
    except LockTimeoutError:
        conn.send("timeout")
    except BaseException as e:  # report, the parent asserts
        conn.send(f"error: {e!r}")
    finally:
        conn.close()


class StorageConformance:
    """The contract of :class:`dsync_core.storage.Storage`, as pytest tests.

    Subclass it and define a ``storage_factory`` fixture (see the module docstring).
    """

    # -- fixtures and helpers ------------------------------------------------------------

    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        raise NotImplementedError("define a storage_factory fixture in your StorageConformance subclass")

    @pytest.fixture
    def make_storage(self, storage_factory: Callable[[], Storage]) -> Iterator[Callable[[], Storage]]:
        """Like ``storage_factory``, but every storage it opens is closed after the test."""
        opened: list[Storage] = []

        def make() -> Storage:
            s = storage_factory()
            assert isinstance(s, Storage), f"storage_factory returned {type(s).__name__}, not a Storage"
            opened.append(s)
            return s

        yield make
        for s in reversed(opened):
            s.close()

    @pytest.fixture
    def storage(self, make_storage: Callable[[], Storage]) -> Storage:
        return make_storage()

    @pytest.fixture
    def writable(self, storage: Storage) -> Storage:
        if storage.read_only:
            pytest.skip("storage is read_only")
        return storage

    @pytest.fixture
    def mbox(self, writable: Storage) -> Iterator[Mailbox]:
        writable.create_mailbox("Test")
        with writable.open_mailbox("Test") as m:
            yield m

    @staticmethod
    def save_one(mbox: Mailbox, data: bytes | None = None, **kw: object) -> MessageRecord:
        recs = mbox.save([SaveRequest(body=io.BytesIO(data if data is not None else message()), **kw)])
        assert len(recs) == 1, f"save() of one request returned {len(recs)} records"
        return recs[0]

    @staticmethod
    def names(storage: Storage) -> list[str]:
        return [i.name for i in storage.list_mailboxes()]

    # -- mailbox tree --------------------------------------------------------------------

    def test_inbox_always_listed(self, storage: Storage) -> None:
        assert "INBOX" in self.names(storage), "a fresh storage must list INBOX"
        with storage.open_mailbox("INBOX") as m:
            assert m.status().messages == 0

    def test_inbox_name_is_case_insensitive(self, storage: Storage) -> None:
        with storage.open_mailbox("inbox") as m:
            assert _GUID_RE.match(m.guid)

    def test_create_mailbox_has_guid_and_uidvalidity(self, writable: Storage) -> None:
        info = writable.create_mailbox("Work")
        assert info.name == "Work"
        assert _GUID_RE.match(info.guid), f"mailbox GUID {info.guid!r} is not 32 lowercase hex digits"
        assert info.uidvalidity > 0
        assert "Work" in self.names(writable)
        with writable.open_mailbox("Work") as m:
            st = m.status()
            assert m.guid == info.guid
            assert (st.guid, st.uidvalidity, st.messages) == (info.guid, info.uidvalidity, 0)
            assert st.uidnext >= 1

    def test_mailbox_guids_unique(self, writable: Storage) -> None:
        guids = {writable.create_mailbox(n).guid for n in ("A", "B", "C")}
        assert len(guids) == 3

    def test_create_with_wanted_guid_and_uidvalidity(self, writable: Storage) -> None:
        guid = uuid.uuid4().hex
        info = writable.create_mailbox("Wanted", guid=guid, uidvalidity=12345)
        assert (info.guid, info.uidvalidity) == (guid, 12345)
        with writable.open_mailbox("Wanted") as m:
            assert (m.status().guid, m.status().uidvalidity) == (guid, 12345)

    def test_create_existing_raises(self, writable: Storage) -> None:
        writable.create_mailbox("Dup")
        with pytest.raises(ExistsError):
            writable.create_mailbox("Dup")
        with pytest.raises(ExistsError):
            writable.create_mailbox("INBOX")

    def test_create_makes_parents_listed_first(self, writable: Storage) -> None:
        writable.create_mailbox("a/b/c")
        names = self.names(writable)
        for n in ("a", "a/b", "a/b/c"):
            assert n in names, f"{n!r} missing from {names}"
        assert names.index("a") < names.index("a/b") < names.index("a/b/c"), "parents must come before children"

    @pytest.mark.parametrize("bad", ["../x", "/abs", "a\x01b", "", "a//b", "a/", "a/../b", ".", "x\ny"])
    def test_invalid_names_refused(self, writable: Storage, bad: str) -> None:
        with pytest.raises(InvalidNameError):
            writable.create_mailbox(bad)
        writable.create_mailbox("Good")
        with pytest.raises(InvalidNameError):
            writable.rename_mailbox("Good", bad)
        assert "Good" in self.names(writable)

    @pytest.mark.parametrize("name", ["Entwürfe", "Archive/2024", "日本語/台北", "a&b", "Sent Items"])
    def test_names_round_trip(self, writable: Storage, make_storage: Callable[[], Storage], name: str) -> None:
        guid = writable.create_mailbox(name).guid
        assert name in self.names(writable)
        again = make_storage()
        assert name in self.names(again), f"{name!r} not listed after reopen: {self.names(again)}"
        with again.open_mailbox(name) as m:
            assert m.guid == guid

    def test_open_missing_raises(self, storage: Storage) -> None:
        with pytest.raises(NotFoundError):
            storage.open_mailbox("Nope")

    def test_delete_mailbox_logs_guid(self, writable: Storage) -> None:
        guid = writable.create_mailbox("Gone").guid
        before = int(time.time()) - 1
        writable.delete_mailbox("Gone")
        assert "Gone" not in self.names(writable)
        with pytest.raises(NotFoundError):
            writable.open_mailbox("Gone")
        recs = [r for r in writable.mailbox_log() if r.type == MailboxLogType.DELETE_MAILBOX]
        assert any(r.guid == guid for r in recs), f"no DELETE_MAILBOX record with GUID {guid} in {recs}"
        rec = next(r for r in recs if r.guid == guid)
        assert before <= rec.timestamp <= time.time() + 1

    def test_delete_missing_raises(self, writable: Storage) -> None:
        with pytest.raises(NotFoundError):
            writable.delete_mailbox("Nope")

    def test_delete_removes_messages(self, writable: Storage) -> None:
        writable.create_mailbox("Box")
        with writable.open_mailbox("Box") as m:
            self.save_one(m)
        writable.delete_mailbox("Box")
        writable.create_mailbox("Box")
        with writable.open_mailbox("Box") as m:
            assert list(m.records()) == [], "a re-created mailbox must not show the deleted one's messages"

    def test_delete_parent_keeps_children(self, writable: Storage) -> None:
        guid = writable.create_mailbox("P").guid
        child = writable.create_mailbox("P/C").guid
        writable.delete_mailbox("P")
        with writable.open_mailbox("P/C") as m:
            assert m.guid == child
        assert any(r.guid == guid for r in writable.mailbox_log() if r.type == MailboxLogType.DELETE_MAILBOX)

    def test_rename_keeps_guid_and_messages(self, writable: Storage) -> None:
        guid = writable.create_mailbox("Old").guid
        with writable.open_mailbox("Old") as m:
            data = message("renamed")
            uid = self.save_one(m, data).uid
        writable.rename_mailbox("Old", "New")
        names = self.names(writable)
        assert "New" in names and "Old" not in names, names
        with writable.open_mailbox("New") as m:
            assert m.guid == guid
            assert [r.uid for r in m.records()] == [uid]
            assert read_body(m, uid) == data

    def test_rename_logs_record(self, writable: Storage) -> None:
        writable.create_mailbox("Old")
        writable.rename_mailbox("Old", "New")
        recs = [r for r in writable.mailbox_log() if r.type == MailboxLogType.RENAME]
        assert recs, "rename_mailbox() logged no RENAME record"
        assert any(r.guid == name_hash("New") for r in recs), "RENAME record must carry the hash of the new name"

    def test_rename_moves_children(self, writable: Storage) -> None:
        top = writable.create_mailbox("a").guid
        child = writable.create_mailbox("a/b").guid
        deep = writable.create_mailbox("a/b/c").guid
        writable.rename_mailbox("a", "z")
        names = self.names(writable)
        assert not any(n == "a" or n.startswith("a/") for n in names), names
        for name, guid in (("z", top), ("z/b", child), ("z/b/c", deep)):
            with writable.open_mailbox(name) as m:
                assert m.guid == guid, f"{name} lost its GUID in the rename"

    def test_rename_into_new_parent(self, writable: Storage) -> None:
        guid = writable.create_mailbox("Flat").guid
        writable.rename_mailbox("Flat", "Deep/Er")
        with writable.open_mailbox("Deep/Er") as m:
            assert m.guid == guid
        assert "Deep" in self.names(writable)

    def test_rename_errors(self, writable: Storage) -> None:
        writable.create_mailbox("One")
        writable.create_mailbox("Two")
        with pytest.raises(ExistsError):
            writable.rename_mailbox("One", "Two")
        with pytest.raises(NotFoundError):
            writable.rename_mailbox("Missing", "Three")
        assert {"One", "Two"} <= set(self.names(writable))

    # -- subscriptions -------------------------------------------------------------------

    def test_subscribe_unsubscribe(self, writable: Storage, make_storage: Callable[[], Storage]) -> None:
        writable.set_subscribed("INBOX", True)
        writable.set_subscribed("Entwürfe", True)  # need not exist
        writable.set_subscribed("Archive/2024", True)
        assert {"INBOX", "Entwürfe", "Archive/2024"} <= set(writable.subscriptions())
        writable.set_subscribed("Entwürfe", False)
        assert "Entwürfe" not in writable.subscriptions()
        assert set(make_storage().subscriptions()) == {"INBOX", "Archive/2024"}

    def test_subscription_log_records(self, writable: Storage) -> None:
        writable.set_subscribed("Lists", True)
        writable.set_subscribed("Lists", False)
        recs = [(r.type, r.guid) for r in writable.mailbox_log()]
        h = name_hash("Lists")
        assert (MailboxLogType.SUBSCRIBE, h) in recs, recs
        assert (MailboxLogType.UNSUBSCRIBE, h) in recs, recs
        assert recs.index((MailboxLogType.SUBSCRIBE, h)) < recs.index((MailboxLogType.UNSUBSCRIBE, h))

    # -- messages ------------------------------------------------------------------------

    def test_save_fetch_round_trip(self, mbox: Mailbox) -> None:
        bodies = [
            message("crlf"),
            b"Subject: lf only\n\nbare\nlines\n",
            b"Subject: 8bit\r\n\r\n" + bytes(range(256)) + b"\r\n",
            b"Subject: no final newline\r\n\r\nend",
        ]
        recs = mbox.save([SaveRequest(body=io.BytesIO(b)) for b in bodies])
        assert len(recs) == len(bodies)
        for rec, body in zip(recs, bodies):
            assert read_body(mbox, rec.uid) == body, f"body of UID {rec.uid} changed on the way"

    def test_stage_then_save_or_close(self, mbox: Mailbox) -> None:
        """``stage()`` (a speed hint) changes nothing visible: staged requests saved give
        the bodies and flags asked for, staged ones closed unsaved leave no message."""
        from ..streams import CountedBody

        dropped = mbox.stage([SaveRequest(body=CountedBody(message(f"dropped {i}"))) for i in range(3)])
        for r in dropped:
            r.body.close()
        bodies = [message(f"staged {i}") for i in range(4)]
        staged = mbox.stage([
            SaveRequest(body=CountedBody(b) if i % 2 else io.BytesIO(b), flags={"\\Seen"} if i == 1 else set())
            for i, b in enumerate(bodies)
        ])
        recs = mbox.save(staged)
        for r in staged:
            r.body.close()
        assert [read_body(mbox, r.uid) for r in recs] == bodies
        listed = list(mbox.records())
        assert [r.uid for r in listed] == [r.uid for r in recs], "a staged batch closed unsaved left messages"
        assert [r.flags for r in listed] == [frozenset(), frozenset({"\\Seen"}), frozenset(), frozenset()]

    def test_large_message_streamed(self, mbox: Mailbox) -> None:
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-._~!$&'()*+,;=:@/?\r\n"
        data = message("large", line * (5 * 1024 * 1024 // len(line) + 1))
        assert len(data) > 5 * 1024 * 1024
        src = ChunkOnlyReader(data)
        rec = mbox.save([SaveRequest(body=src)])[0]  # type: ignore[arg-type]
        assert src.calls > 1, "the body was not read in chunks"
        digest = hashlib.sha256()
        size = 0
        with mbox.open_body(rec.uid) as f:
            while chunk := f.read(_CHUNK):
                assert len(chunk) <= _CHUNK
                digest.update(chunk)
                size += len(chunk)
        assert size == len(data)
        assert digest.digest() == hashlib.sha256(data).digest()

    def test_records_ascending_with_metadata(self, mbox: Mailbox) -> None:
        reqs = [
            SaveRequest(body=io.BytesIO(message("1")), flags={"\\Seen"}, internaldate=1_000_000_000),
            SaveRequest(
                body=io.BytesIO(message("2")),
                flags={"\\Flagged", "\\Answered"},
                keywords={"$Label1"},
                internaldate=1_200_000_000,
            ),
            SaveRequest(body=io.BytesIO(message("3")), keywords={"work", "$Forwarded"}, internaldate=1_700_000_000),
        ]
        saved = mbox.save(reqs)
        recs = list(mbox.records())
        assert [r.uid for r in recs] == sorted(r.uid for r in saved)
        assert len({r.uid for r in recs}) == 3
        by_uid = {r.uid: r for r in recs}
        for req, s in zip(reqs, saved):
            r = by_uid[s.uid]
            assert r.guid, f"UID {r.uid} has no GUID"
            if mbox.storage.have_only_guid128:
                assert _GUID_RE.match(r.guid), f"GUID {r.guid!r} is not 128-bit hex"
            assert r.guid == s.guid
            assert r.flags == req.flags, f"UID {r.uid}: flags {set(r.flags)} != {set(req.flags)}"
            assert r.keywords == req.keywords, f"UID {r.uid}: keywords {set(r.keywords)} != {set(req.keywords)}"
            assert r.internaldate == req.internaldate
        assert len({r.guid for r in recs}) == 3, "GUIDs must be unique"

    def test_records_by_uid(self, mbox: Mailbox) -> None:
        uids = [r.uid for r in mbox.save([SaveRequest(body=io.BytesIO(message())) for _ in range(4)])]
        got = [r.uid for r in mbox.records_by_uid([uids[3], uids[1], 999_999])]
        assert got == [uids[1], uids[3]]

    def test_uids_from_uidnext(self, mbox: Mailbox) -> None:
        first = mbox.status().uidnext
        uids = [r.uid for r in mbox.save([SaveRequest(body=io.BytesIO(message())) for _ in range(3)])]
        assert uids == [first, first + 1, first + 2]
        assert mbox.status().uidnext == first + 3

    def test_wanted_uid_kept(self, mbox: Mailbox) -> None:
        if not mbox.storage.have_save_uids:
            pytest.skip("storage declares have_save_uids=False")
        rec = self.save_one(mbox, uid=42)
        assert rec.uid == 42
        assert [r.uid for r in mbox.records()] == [42]
        assert mbox.status().uidnext == 43
        assert self.save_one(mbox).uid == 43

    def test_wanted_guid_kept(self, writable: Storage, mbox: Mailbox) -> None:
        if not writable.have_save_guids:
            pytest.skip("storage declares have_save_guids=False")
        guid = uuid.uuid4().hex
        assert self.save_one(mbox, guid=guid).guid == guid
        assert [r.guid for r in mbox.records()] == [guid]

    def test_uid_below_uidnext_refused(self, mbox: Mailbox) -> None:
        if not mbox.storage.have_save_uids:
            pytest.skip("storage declares have_save_uids=False")
        self.save_one(mbox, uid=10)
        for bad in (10, 5):
            with pytest.raises(ExistsError):
                self.save_one(mbox, uid=bad)
        assert [r.uid for r in mbox.records()] == [10], "a refused save must not leave a message behind"

    def test_stable_after_reopen(self, writable: Storage, make_storage: Callable[[], Storage]) -> None:
        writable.create_mailbox("Keep")
        data = message("keep")
        with writable.open_mailbox("Keep") as m:
            saved = self.save_one(m, data, flags={"\\Seen"}, keywords={"kw"}, internaldate=1_500_000_000)
            st = m.status()
        again = make_storage()
        with again.open_mailbox("Keep") as m:
            (rec,) = list(m.records())
            assert (rec.uid, rec.guid) == (saved.uid, saved.guid)
            assert (rec.flags, rec.keywords, rec.internaldate) == (saved.flags, saved.keywords, 1_500_000_000)
            assert read_body(m, rec.uid) == data
            st2 = m.status()
            assert (st2.guid, st2.uidvalidity, st2.uidnext) == (st.guid, st.uidvalidity, st.uidnext)
            assert st2.highestmodseq >= st.highestmodseq

    def test_update_flags(self, mbox: Mailbox) -> None:
        rec = self.save_one(mbox, flags={"\\Draft"}, keywords={"old"})
        m0 = mbox.status().highestmodseq
        (changed,) = mbox.update_flags(
            [
                FlagUpdate(
                    rec.uid,
                    add_flags={"\\Seen", "\\Flagged"},
                    remove_flags={"\\Draft"},
                    add_keywords={"new"},
                    remove_keywords={"old"},
                )
            ]
        )
        assert changed.uid == rec.uid
        assert changed.flags == {"\\Seen", "\\Flagged"}
        assert changed.keywords == {"new"}
        (now,) = list(mbox.records())
        assert (now.flags, now.keywords) == (changed.flags, changed.keywords)
        assert now.guid == rec.guid
        if mbox.storage.have_modseqs:
            assert now.modseq > rec.modseq, "a flag change must raise the message's modseq"
            assert mbox.status().highestmodseq > m0

    def test_update_flags_missing_uid_skipped(self, mbox: Mailbox) -> None:
        rec = self.save_one(mbox)
        out = mbox.update_flags([FlagUpdate(999_999, add_flags={"\\Seen"}), FlagUpdate(rec.uid, add_flags={"\\Seen"})])
        assert [r.uid for r in out] == [rec.uid]

    def test_records_since_modseq(self, mbox: Mailbox) -> None:
        if not mbox.storage.have_modseqs:
            pytest.skip("storage declares have_modseqs=False")
        uids = [r.uid for r in mbox.save([SaveRequest(body=io.BytesIO(message())) for _ in range(3)])]
        hm = mbox.status().highestmodseq
        assert list(mbox.records(hm)) == []
        mbox.update_flags([FlagUpdate(uids[1], add_keywords={"changed"})])
        got = list(mbox.records(hm))
        assert [r.uid for r in got] == [uids[1]]
        assert got[0].modseq > hm
        assert got[0].modseq <= mbox.status().highestmodseq
        assert [r.uid for r in mbox.records(0)] == uids

    def test_expunge_and_expunges_since(self, mbox: Mailbox) -> None:
        recs = mbox.save([SaveRequest(body=io.BytesIO(message())) for _ in range(3)])
        hm = mbox.status().highestmodseq
        gone = mbox.expunge([recs[1].uid, 999_999])
        assert [(e.uid, e.guid) for e in gone] == [(recs[1].uid, recs[1].guid)]
        assert [r.uid for r in mbox.records()] == [recs[0].uid, recs[2].uid]
        st = mbox.status()
        assert st.messages == 2
        if mbox.storage.have_modseqs:
            assert st.highestmodseq > hm
            ex = mbox.expunges(hm)
            assert [(e.uid, e.guid) for e in ex] == [(recs[1].uid, recs[1].guid)]
            assert ex[0].modseq > hm
            assert mbox.expunges(st.highestmodseq) == []
        assert self.save_one(mbox).uid > recs[2].uid, "UIDs of expunged messages must not be reused"

    def test_highestmodseq_never_decreases(self, writable: Storage, make_storage: Callable[[], Storage]) -> None:
        writable.create_mailbox("Mod")
        seen: list[int] = []
        with writable.open_mailbox("Mod") as m:
            seen.append(m.status().highestmodseq)
            r = self.save_one(m)
            seen.append(m.status().highestmodseq)
            m.update_flags([FlagUpdate(r.uid, add_flags={"\\Seen"})])
            seen.append(m.status().highestmodseq)
            m.update_flags([FlagUpdate(r.uid, add_flags={"\\Seen"})])  # no change
            seen.append(m.status().highestmodseq)
            m.expunge([r.uid])
            seen.append(m.status().highestmodseq)
        with make_storage().open_mailbox("Mod") as m:
            seen.append(m.status().highestmodseq)
        assert seen == sorted(seen), f"HIGHESTMODSEQ went down: {seen}"
        if writable.have_modseqs:
            assert seen[1] > seen[0] and seen[2] > seen[1] and seen[4] > seen[3], seen

    def test_status_counts(self, mbox: Mailbox) -> None:
        mbox.save(
            [
                SaveRequest(body=io.BytesIO(message()), flags={"\\Seen"}),
                SaveRequest(body=io.BytesIO(message())),
                SaveRequest(body=io.BytesIO(message()), flags={"\\Flagged"}),
            ]
        )
        st = mbox.status()
        assert (st.messages, st.unseen) == (3, 2)
        assert st.uidnext == max(r.uid for r in mbox.records()) + 1
        flagged = next(r for r in mbox.records() if "\\Flagged" in r.flags)
        mbox.update_flags([FlagUpdate(flagged.uid, add_flags={"\\Seen"})])
        assert mbox.status().unseen == 1

    def test_update_status_uidvalidity(self, writable: Storage, make_storage: Callable[[], Storage]) -> None:
        writable.create_mailbox("UV")
        with writable.open_mailbox("UV") as m:
            st = m.update_status(uidvalidity=777)
            assert st.uidvalidity == 777
            assert m.status().uidvalidity == 777
        with make_storage().open_mailbox("UV") as m:
            assert m.status().uidvalidity == 777

    def test_update_status_min_uidnext(self, mbox: Mailbox) -> None:
        if not mbox.storage.have_save_uids:
            pytest.skip("storage declares have_save_uids=False")
        assert mbox.update_status(min_uidnext=100).uidnext == 100
        assert mbox.update_status(min_uidnext=50).uidnext == 100, "min_uidnext must never lower UIDNEXT"
        assert self.save_one(mbox).uid == 100
        with pytest.raises(ExistsError):
            self.save_one(mbox, uid=99)

    def test_update_status_min_highestmodseq(self, mbox: Mailbox) -> None:
        if not mbox.storage.have_save_uids:
            pytest.skip("storage declares have_save_uids=False")
        if not mbox.storage.have_modseqs:
            pytest.skip("storage declares have_modseqs=False")
        assert mbox.update_status(min_highestmodseq=5000).highestmodseq >= 5000
        assert mbox.status().highestmodseq >= 5000
        assert self.save_one(mbox).modseq > 5000, "modseqs must continue above the raised HIGHESTMODSEQ"

    def test_update_status_guid(self, writable: Storage) -> None:
        writable.create_mailbox("G")
        new = uuid.uuid4().hex
        with writable.open_mailbox("G") as m:
            self.save_one(m)
            assert m.update_status(guid=new).guid == new
        with writable.open_mailbox("G") as m:
            assert m.guid == new
            assert m.status().messages == 1

    # -- several handles and processes ---------------------------------------------------

    def test_two_storages_see_each_other(self, writable: Storage, make_storage: Callable[[], Storage]) -> None:
        other = make_storage()
        writable.create_mailbox("Shared")
        assert "Shared" in self.names(other), "a second storage on the same location must see a new mailbox"
        with writable.open_mailbox("Shared") as mine, other.open_mailbox("Shared") as theirs:
            assert mine.guid == theirs.guid
            data = message("shared")
            rec = self.save_one(mine, data)
            got = list(theirs.records())
            assert [(r.uid, r.guid) for r in got] == [(rec.uid, rec.guid)], "an open mailbox must see new mail"
            assert read_body(theirs, rec.uid) == data
            theirs.update_flags([FlagUpdate(rec.uid, add_flags={"\\Seen"})])
            assert "\\Seen" in next(iter(mine.records())).flags
            assert theirs.status().uidnext == mine.status().uidnext

    def test_lock_excludes_other_process(self, storage: Storage, storage_factory: Callable[[], Storage]) -> None:
        if "fork" not in multiprocessing.get_all_start_methods():
            pytest.skip("needs the fork start method")  # the child must inherit the factory
        ctx = multiprocessing.get_context("fork")

        def attempt(timeout: float) -> str:
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child_try_lock, args=(storage_factory, timeout, child))
            p.start()
            child.close()
            try:
                return parent.recv() if parent.poll(timeout + 30) else "no answer"
            finally:
                p.join(30)
                if p.is_alive():
                    p.kill()

        with storage.lock(timeout=5):
            t0 = time.monotonic()
            assert attempt(0.3) == "timeout", "a second process took the storage lock while it was held"
            assert time.monotonic() - t0 >= 0.3
        assert attempt(5) == "locked", "the lock was not free again after release"
