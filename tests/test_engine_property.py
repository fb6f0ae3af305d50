"""Property test: random mail activity on two replicas with random syncs in between.

After a final full two-way sync both sides are identical, and every message no user
expunged (and whose mailbox no user deleted) still exists exactly once. After a backup the
destination equals the source (a fast backup may skip a mailbox whose counters are equal on
both sides, Dovecot's blind spot too). Profiles: the default ("ci") runs in seconds; set
``HYPOTHESIS_PROFILE=nightly`` for far more examples.
"""

from __future__ import annotations

import io
import os
import tempfile
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from test_engine_helpers import snapshot

from dsync_core import sync
from dsync_core.api import open_storage
from dsync_core.errors import DsyncError
from dsync_core.model import FlagUpdate, SaveRequest, SyncAlgorithm, SyncMode
from dsync_core.settings import Settings
from dsync_core.storage import Storage

# "ci" (the default) runs in seconds; HYPOTHESIS_PROFILE=nightly runs for minutes.
settings.register_profile("ci", max_examples=200, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=2000, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or "ci"

NAMES = ["INBOX", "A", "B", "A/Sub"]
FLAGS = ["\\Seen", "\\Flagged", "\\Answered"]
KEYWORDS = ["work", "todo"]


class SyncMachine(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        if self.backend == "memory":
            import memstore

            from dsync_core.plugin.manager import get_plugin_manager

            pm = get_plugin_manager()
            if not pm.is_registered(memstore):
                pm.register(memstore)
            self.names = [f"prop-{uuid.uuid4().hex}" for _ in range(2)]
            self.sides = [open_storage(f"memory:{n}", Settings()) for n in self.names]
        else:
            self.tmp = tempfile.TemporaryDirectory()
            self.sides = [open_storage(f"maildir:{self.tmp.name}/{n}:LAYOUT=fs", Settings()) for n in "ab"]
        # GUIDs of messages delivered and never expunged by a "user" (nor lost with a deleted mailbox).
        self.alive: set[str] = set()
        self.gone: set[str] = set()  # expunged or deleted by a user at some point
        self.state = ""
        self.doomed: set[str] = set()  # mailbox GUIDs a user deleted on one side, not yet synced

    def teardown(self) -> None:
        if self.backend == "memory":
            import memstore

            for n in self.names:
                memstore.drop(n)
        else:
            for s in self.sides:
                s.close()
            self.tmp.cleanup()

    def _boxes(self, side: int) -> list[str]:
        return [i.name for i in self.sides[side].list_mailboxes() if i.selectable]

    @rule(side=st.integers(0, 1), box=st.sampled_from(NAMES), flags=st.sets(st.sampled_from(FLAGS)))
    def deliver(self, side: int, box: str, flags: set[str]) -> None:
        s = self.sides[side]
        if box not in self._boxes(side):
            return
        body = f"Message-ID: <{uuid.uuid4().hex}@x>\n\nbody\n".encode()
        with s.open_mailbox(box) as mb:
            rec = mb.save([SaveRequest(io.BytesIO(body), flags=frozenset(flags))])[0]
            doomed = mb.guid in self.doomed
        # Mail delivered into a mailbox the other side deleted goes with it (deletion wins).
        (self.gone if doomed else self.alive).add(rec.guid)

    @rule(side=st.integers(0, 1), box=st.sampled_from(NAMES), pick=st.integers(0, 50),
          add=st.sets(st.sampled_from(FLAGS)), kw=st.sets(st.sampled_from(KEYWORDS)), rm=st.booleans())
    def change_flags(self, side: int, box: str, pick: int, add: set[str], kw: set[str], rm: bool) -> None:
        if box not in self._boxes(side):
            return
        with self.sides[side].open_mailbox(box) as mb:
            recs = list(mb.records())
            if not recs:
                return
            r = recs[pick % len(recs)]
            if rm:
                mb.update_flags([FlagUpdate(r.uid, remove_flags=frozenset(add), remove_keywords=frozenset(kw))])
            else:
                mb.update_flags([FlagUpdate(r.uid, add_flags=frozenset(add), add_keywords=frozenset(kw))])

    @rule(side=st.integers(0, 1), box=st.sampled_from(NAMES), pick=st.integers(0, 50))
    def expunge(self, side: int, box: str, pick: int) -> None:
        if box not in self._boxes(side):
            return
        with self.sides[side].open_mailbox(box) as mb:
            recs = list(mb.records())
            if not recs:
                return
            r = recs[pick % len(recs)]
            mb.expunge([r.uid])
        self.alive.discard(r.guid)
        self.gone.add(r.guid)

    @rule(side=st.integers(0, 1), box=st.sampled_from(NAMES[1:]))
    def create(self, side: int, box: str) -> None:
        if box not in self._boxes(side):
            try:
                self.sides[side].create_mailbox(box)
            except DsyncError:
                pass

    @rule(side=st.integers(0, 1), box=st.sampled_from(NAMES[1:]))
    def delete(self, side: int, box: str) -> None:
        s = self.sides[side]
        if box not in self._boxes(side):
            return
        with s.open_mailbox(box) as mb:
            guids = {r.guid for r in mb.records()}
            box_guid = mb.guid
        s.delete_mailbox(box)
        other = self.sides[1 - side]
        for i in other.list_mailboxes():
            if i.selectable and i.guid == box_guid:
                with other.open_mailbox(i.name) as mb:
                    guids |= {r.guid for r in mb.records()}
        self.doomed.add(box_guid)
        # Deletion wins over the other side's copy, which may hold other messages too: a
        # message in the deleted mailbox counts as user-deleted.
        self.alive -= guids
        self.gone |= guids

    @rule(side=st.integers(0, 1), src=st.sampled_from(NAMES[1:]), dst=st.sampled_from(["C", "D", "B/Moved"]))
    def rename(self, side: int, src: str, dst: str) -> None:
        try:
            self.sides[side].rename_mailbox(src, dst)
        except DsyncError:
            pass

    @rule(side=st.integers(0, 1), box=st.sampled_from(NAMES + ["C"]), on=st.booleans())
    def subscribe(self, side: int, box: str, on: bool) -> None:
        self.sides[side].set_subscribed(box, on)

    @rule(mode=st.sampled_from(list(SyncMode)), algo=st.sampled_from(list(SyncAlgorithm)), reverse=st.booleans())
    def run_sync(self, mode: SyncMode, algo: SyncAlgorithm, reverse: bool) -> None:
        a, b = self.sides
        src, dst = (b, a) if reverse and mode is not SyncMode.TWOWAY else (a, b)
        before = snapshot(src)
        r = sync(a, b, mode=mode, algorithm=algo, reverse=reverse, force=True,
                 state=self.state if algo is SyncAlgorithm.STATEFUL else None)
        if algo is SyncAlgorithm.STATEFUL:
            self.state = r.state
        if mode is SyncMode.TWOWAY:
            self.doomed = set()
        if mode is not SyncMode.TWOWAY:
            assert snapshot(src) == before, "the source of a backup / -1 run was modified"
        if mode is SyncMode.BACKUP:
            assert not r.unapplied, r.unapplied
            identical = snapshot(dst) == snapshot(src)
            # Fast sync skips a mailbox whose counters are equal on both sides, which one
            # change on each side since the last run can produce (Dovecot's blind spot too).
            assert identical or algo is SyncAlgorithm.FAST
            self.doomed = set()
            if identical:
                # The destination's own changes are discarded: user intent starts afresh.
                self.alive = self._all_guids()
                self.gone = set()
            else:
                # A skipped mailbox keeps its pending changes: only mail the source has
                # is still owed to the user.
                src_guids = self._guids(src)
                self.gone |= self._all_guids() - src_guids
                self.alive &= src_guids
        # -1 deletes nothing and leaves the source alone: pending expunges and mailbox
        # deletions still count, the next two-way run applies them.

    def _all_guids(self) -> set[str]:
        return self._guids(self.sides[0]) | self._guids(self.sides[1])

    @staticmethod
    def _guids(s: Storage) -> set[str]:
        out: set[str] = set()
        for i in s.list_mailboxes():
            if i.selectable:
                with s.open_mailbox(i.name) as mb:
                    out |= {r.guid for r in mb.records()}
        return out

    def teardown_check(self) -> None:
        a, b = self.sides
        if b.sync_marks("any") is not None:
            # With fast-sync marks (planned incrementally from them), a default two-way run
            # must converge on its own: anything a mark-based plan missed shows here.
            sync(a, b, force=True)
            r = sync(a, b, force=True)
            if not r.unapplied:
                assert snapshot(a) == snapshot(b), "a fast sync did not converge"
        sync(a, b, algorithm=SyncAlgorithm.FULL, force=True)
        r = sync(a, b, algorithm=SyncAlgorithm.FULL, force=True)
        assert r.messages_copied == r.expunged == r.flags_changed == 0, r
        sa, sb = snapshot(a), snapshot(b)
        assert sa == sb
        counts: dict[str, int] = {}
        for _guid, msgs in sa["boxes"].values():  # type: ignore[union-attr]
            for m in msgs:
                counts[m[1]] = counts.get(m[1], 0) + 1
        for g in self.alive - self.gone:
            assert counts.get(g, 0) == 1, f"message {g} lost or duplicated: {counts.get(g, 0)}"


def _run(machine_cls: type, profile: str, examples: int | None = None) -> None:
    class M(machine_cls):  # type: ignore[misc, valid-type]
        def teardown(self) -> None:
            try:
                self.teardown_check()
            finally:
                super().teardown()

    s = settings.get_profile(profile)
    if examples is not None:
        s = settings(s, max_examples=examples)
    M.TestCase.settings = s
    M.TestCase().runTest()


def test_twoway_property_memory() -> None:
    _run(SyncMachine, PROFILE)


class MaildirMachine(SyncMachine):
    backend = "maildir"


def test_twoway_property_maildir() -> None:
    _run(MaildirMachine, PROFILE, examples=None if PROFILE == "nightly" else 40)
