"""The compact message table of a Dovecot index state behaves as a dict of messages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dsync_core.dovecot_index.state import Message, MessageTable

uids = st.integers(min_value=1, max_value=200)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), uids, st.integers(0, 255), st.integers(0, 2**40)),
        st.tuples(st.just("remove"), uids),
        st.tuples(st.just("flags"), uids, st.integers(0, 255), st.integers(0, 255)),
        st.tuples(st.just("modseq"), uids, st.integers(0, 2**63)),
        st.tuples(st.just("kw"), uids, st.frozensets(st.sampled_from(["a", "b", "$Label1"]))),
        st.tuples(st.just("raise"), st.integers(0, 2**41)),
        st.tuples(st.just("many"), st.lists(st.tuples(st.integers(0, 260), st.integers(0, 255)), max_size=20),
                  st.integers(0, 2**40)),
        st.tuples(st.just("many"), st.integers(1, 300).map(lambda n: [(u, 8) for u in range(n, n + 30)]),
                  st.integers(0, 2**40)),
    ),
    max_size=300,
)


@settings(max_examples=300)
@given(ops)
def test_table_matches_a_dict(script: list[tuple]) -> None:  # type: ignore[type-arg]
    table = MessageTable()
    model: dict[int, Message] = {}
    for op in script:
        kind, *args = op
        if kind == "add":
            uid, flags, modseq = args
            assert table.add(uid, flags, modseq) == (uid not in model)
            model.setdefault(uid, Message(uid, flags, frozenset(), modseq))
        elif kind == "many":
            records, modseq = args
            assert table.add_many(records, modseq) == max((u for u, _ in records), default=0)
            for uid, flags in records:
                if uid >= 1:
                    model.setdefault(uid, Message(uid, flags, frozenset(), modseq))
        elif kind == "remove":
            assert table.remove(args[0]) == (model.pop(args[0], None) is not None)
        elif args[0] not in model and kind != "raise":
            continue
        elif kind == "flags":
            uid, add, remove = args
            table.update_flags(uid, add, remove)
            model[uid].flags = (model[uid].flags & ~remove & 0xFF) | add
        elif kind == "modseq":
            table.set_modseq(*args)
            model[args[0]].modseq = args[1]
        elif kind == "kw":
            table.set_keywords(*args)
            model[args[0]].keywords = args[1]
        elif kind == "raise":
            table.raise_modseqs(args[0])
            for m in model.values():
                m.modseq = max(m.modseq, args[0])
        assert len(table) == len(model)
    assert list(table) == sorted(model)
    assert list(table.values()) == [model[u] for u in sorted(model)]
    for uid in range(0, 332):
        assert (uid in table) == (uid in model)
        assert table.get(uid) == model.get(uid)
    assert table.uids_between(20, 120) == [u for u in sorted(model) if 20 <= u <= 120]
    for bit in (1, 8, 0x40):
        assert table.count_without_flag(bit) == sum(1 for m in model.values() if not m.flags & bit)
    for uid in (0, 1, 50, 199, 400):
        assert table.count_from_uid(uid) == sum(1 for u in model if u >= uid)
    for since in (-1, 0, 2**39):
        assert list(table.values_since(since)) == [model[u] for u in sorted(model) if model[u].modseq > since]
    assert bool(table) == bool(model)


def test_many_messages_are_small() -> None:
    """100 000 messages: the arrays, not an object per message."""
    import sys

    table = MessageTable()
    for uid in range(1, 100_001):
        table.add(uid, 8, uid)
    size = sum(sys.getsizeof(getattr(table, a)) for a in ("_uids", "_flags", "_modseqs", "_alive", "_keywords"))
    assert size < 2_000_000, size
    assert table.uids_between(50_000, 50_003) == [50_000, 50_001, 50_002, 50_003]
    for uid in range(1, 80_001):
        table.remove(uid)
    assert len(table) == 20_000 and list(table)[:2] == [80_001, 80_002]
