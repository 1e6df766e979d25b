"""Random appends, truncations, compactions and reopens agree with a list kept in memory."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from copycat_trio.core.raft import HardState
from copycat_trio.protocol.messages import Entry
from copycat_trio.storage import DiskStorage

from . import entry, segment_files

Op = tuple[str, int, int]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 9), st.integers(1, 200)),
        st.tuples(st.just("truncate"), st.integers(0, 12), st.integers(0, 9)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        st.tuples(st.just("compact"), st.integers(0, 15), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, per_segment=st.integers(1, 5), segment_size=st.sampled_from([64, 400, 1 << 20]))
def test_storage_matches_a_model(ops: list[Op], per_segment: int, segment_size: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(run_model, Path(directory), ops, per_segment, segment_size)


async def run_model(directory: Path, ops: list[Op], per_segment: int, segment_size: int) -> None:
    options: dict[str, Any] = {"entries_per_segment": per_segment, "segment_size": segment_size}
    model: list[Entry] = []
    next_index, term = 1, 1
    hard_state = HardState()
    storage = DiskStorage(directory, **options)
    await storage.load()
    try:
        for op, a, b in ops:
            if op == "append":
                batch: list[Entry] = [entry(next_index + i, term, size=b) for i in range(a)]
                await storage.save(hard_state=hard_state, truncate_from=None, entries=batch)
                model += batch
                next_index += a
            elif op == "truncate":  # a new leader's entries replace the last `a`
                cut = max(1, next_index - a)
                term += 1
                hard_state = HardState(term, b % 3 or None)
                batch = [entry(cut + i, term) for i in range(b)]
                await storage.save(hard_state=hard_state, truncate_from=cut, entries=batch)
                model = [e for e in model if e.index < cut] + batch
                next_index = cut + b
            elif op == "compact":
                first_before = storage.first_index
                await storage.compact_before(a)
                if storage.last_index:
                    assert first_before <= storage.first_index <= max(a, first_before)
                    model = [e for e in model if e.index >= storage.first_index]
                else:
                    assert all(e.index < a for e in model)
                    model = []
            else:
                await storage.aclose()
                storage = DiskStorage(directory, **options)
                state = await storage.load()
                assert list(state.entries) == model
                assert state.hard_state == hard_state
            assert storage.last_index == (model[-1].index if model else 0)
            # The index agrees with the files (no torn tail is ever needed without a crash).
            on_disk = sum(path.stat().st_size for path in segment_files(directory))
            assert storage.statistics().log_bytes == on_disk
    finally:
        await storage.aclose()
    async with DiskStorage(directory, **options) as storage:
        state = await storage.load()
        assert list(state.entries) == model
        assert state.hard_state == hard_state
