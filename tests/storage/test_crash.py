"""A process appending in a loop is SIGKILLed at random moments; every acknowledged save survives.

SIGKILL loses the process, not the page cache, so this checks recovery from any point of a save
(between writes, truncations and fsyncs); torn records from power loss are covered by the
torn-tail tests, which cut the file at every byte.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from copycat_trio.protocol.messages import CommandEntry

from . import reopen

CHILD = """
import random, sys, trio
from copycat_trio.core.raft import HardState
from copycat_trio.protocol.messages import CommandEntry
from copycat_trio.storage import DiskStorage

def make(index, term):
    return CommandEntry(term=term, index=index, operation=f"{index}:{term}".encode() * 5)

async def main(directory, seed):
    rng = random.Random(seed)
    async with DiskStorage(directory, segment_size=2048, entries_per_segment=40) as storage:
        state = await storage.load()
        last = state.entries[-1].index if state.entries else 0
        term = max([state.hard_state.term, 1] + [e.term for e in state.entries[-1:]])
        print("ready", flush=True)
        while True:
            cut = None
            if last > 5 and rng.random() < 0.15:  # a new leader overwrites a short suffix
                term += 1
                cut = rng.randint(last - 5, last)
                first = cut
            else:
                first = last + 1
            batch = [make(i, term) for i in range(first, first + rng.randint(1, 12))]
            print("begin", cut or 0, flush=True)
            await storage.save(hard_state=HardState(term, 1), truncate_from=cut, entries=batch)
            last = batch[-1].index
            print("done", last, term, flush=True)

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def expected_entry(index: int, term: int) -> CommandEntry:
    return CommandEntry(term=term, index=index, operation=f"{index}:{term}".encode() * 5)


def test_sigkill_at_random_moments_loses_no_acknowledged_save(tmp_path: Path) -> None:
    rng = random.Random(2024)
    acknowledged: tuple[int, int] | None = None
    acknowledged_term = 0
    """The term of the last acknowledged save's hard state."""
    for round_ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stderr is not None
        try:
            first = child.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        # Read through the same buffered stream as readline (communicate() would skip its buffer).
        out, err = child.stdout.read(), child.stderr.read()
        child.stdout.close()
        child.stderr.close()
        assert first == "ready\n", err
        assert child.returncode == -signal.SIGKILL, err
        pending_cut = 0  # a truncating save in flight may remove acknowledged entries
        for line in out.split("\n")[:-1]:  # the last line may be cut off
            word, *numbers = line.split()
            if word == "done":
                acknowledged = (int(numbers[0]), int(numbers[1]))
                acknowledged_term = int(numbers[1])
                pending_cut = 0
            else:
                pending_cut = int(numbers[0])

        hard_state, loaded = trio.run(reopen, tmp_path)
        indexes = [e.index for e in loaded]
        assert indexes == list(range(1, len(loaded) + 1)), "the log is not contiguous from 1"
        terms = [e.term for e in loaded]
        assert terms == sorted(terms), "terms decrease"
        assert all(e == expected_entry(e.index, e.term) for e in loaded), "an entry is garbled"
        if acknowledged is not None:
            index, term = acknowledged
            if pending_cut:  # the truncation may or may not have happened
                assert len(loaded) >= min(index, pending_cut - 1), "acknowledged entries lost"
                if index < pending_cut:
                    assert loaded[index - 1].term == term, f"entry {index} was replaced"
            else:
                assert len(loaded) >= index, f"acknowledged entry {index} is missing"
                assert loaded[index - 1].term == term, f"acknowledged entry {index} was replaced"
            assert hard_state.term >= acknowledged_term
        if pending_cut and loaded:
            # What recovery loaded is the next round's durable starting point: the torn
            # truncation may have replaced acknowledged entries, legitimately.
            acknowledged = (loaded[-1].index, loaded[-1].term)
