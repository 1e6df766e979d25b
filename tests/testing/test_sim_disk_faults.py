"""The simulation on the real DiskStorage (segmented log, meta file, snapshot store) over a
simulated file system per member: it replays, its disk faults really strike, the storage
survives those within its model, and a storage that breaks a durability rule is caught.

Each run is 8 virtual seconds of one seed (a few real seconds)."""

from __future__ import annotations

import functools

import pytest

from copycat_trio.core.raft import CommittedEntryConflictError, RaftCore
from copycat_trio.protocol.messages import AppendRequest, AppendResponse
from copycat_trio.storage.segments import SegmentedLog
from copycat_trio.testing.simdisk import FsDisk
from copycat_trio.testing.simulation import SimulationResult, run_simulation

DURATION = 8.0


def disk_run(seed: int, profile: str = "disk", **overrides: object) -> SimulationResult:
    return run_simulation(seed, profile=profile, duration=DURATION, **overrides)


@functools.cache
def shared_run(seed: int, profile: str) -> SimulationResult:
    """An unpatched run, made once per test process for the tests that only read it (a seed
    replays exactly: the first test checks it). Tests that patch the storage run their own."""
    return disk_run(seed, profile)


def test_the_disk_profile_replays_exactly() -> None:
    first = shared_run(3, "disk")
    second = disk_run(3)
    assert first.ok, first.report()
    assert first.stats["fs_fsyncs"] > 0  # the real disk ran
    assert first.digest == second.digest
    assert first.trace.lines() == second.trace.lines()


STRIKING_SEEDS = (9, 27, 30, 39, 44)
"""Seeds of `disk` among which every fault of the model strikes, most of them in two seeds or
more. Which seed strikes which fault moves with the timing of the code under test (a torn file
struck in 4 of seeds 0 to 47 at commit 976d1fd: 9, 27, 34, 44), so the check is over the set,
not per seed; when a change of timing leaves a fault unstruck, choose the set again."""


@pytest.mark.parametrize(
    "counter",
    [
        "fs_torn_files",
        "fs_sectors_lost",
        "torn_saves",
        "fs_names_lost",
        "fs_eio",
        "storage_failures",
    ],
)
def test_faults_within_the_model_strike_and_break_nothing(counter: str) -> None:
    """Power losses that tear unsynced writes out of order or undo unsynced directory changes,
    and fsyncs that fail with EIO (the server stops; the run restarts it): every check holds."""
    results = [shared_run(seed, "disk") for seed in STRIKING_SEEDS]
    for result in results:
        assert result.ok, result.report()
        assert result.stats["refused_corrupt"] == 0
    struck = [result.stats[counter] for result in results]
    assert any(struck), (counter, dict(zip(STRIKING_SEEDS, struck, strict=True)))
    assert any("stopped: storage failed" in r.trace.format(["disk"]) for r in results)


FLIP_SEEDS = (3, 5, 14)
"""Seeds of `disk-beyond` in which a restart flips a bit at rest and no lying fsync loses data
(chosen like STRIKING_SEEDS, as a set for the same reason: at commit 062fc46, seeds 3, 5, 6, 7,
14 and 20 of 0 to 23; at 976d1fd it was 9, 14 and 20, and the client's changed timing moved
seed 9's lie onto a power loss)."""


def test_a_bit_flipped_at_rest_is_refused_and_the_rest_goes_on() -> None:
    """disk-beyond: one member's restart flips a bit in a valid record; it refuses to start
    (and stays down), and with no lying fsync exposed every other check still applies."""
    results = {seed: shared_run(seed, "disk-beyond") for seed in FLIP_SEEDS}
    for seed, result in results.items():
        assert result.ok, (seed, result.report())
    struck = [
        seed
        for seed, result in results.items()
        if result.stats["bit_flips"] >= 1
        and result.stats["refused_corrupt"] >= 1
        and result.stats["fs_lies_lost"] == 0
        and not result.beyond_model
        and "refuses to start" in result.trace.format(["disk"])
    ]
    assert struck, {seed: r.stats for seed, r in results.items()}


def test_lying_fsyncs_lose_data_in_disk_beyond() -> None:
    result = disk_run(0, "disk-beyond")
    assert result.ok, result.report()
    assert result.stats["fs_lies"] > 0 and result.stats["fs_lies_lost"] > 0


def test_a_flip_a_start_does_not_refuse_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that starts on data damaged at rest is a failure, never excused: here the
    "flip" changes nothing, so the start succeeds as it would past a missed checksum."""
    monkeypatch.setattr(FsDisk, "flip_at_rest", lambda self: f"{self.name}: pretend flip")
    result = disk_run(FLIP_SEEDS[0], "disk-beyond")
    assert not result.ok
    assert any("went undetected" in v for v in result.violations), result.report()


@pytest.mark.parametrize("rule", ["directory fsync", "data fsync"])
def test_a_storage_that_skips_an_fsync_is_caught(
    monkeypatch: pytest.MonkeyPatch, rule: str
) -> None:
    """Break one durability rule of the segmented log; a seed of the disk profile fails."""
    if rule == "directory fsync":
        # New segment files (and unlinks) are never made durable in their directory.
        monkeypatch.setattr(SegmentedLog, "_fsync_directory", lambda self: None)
    else:

        def no_fsync(self: SegmentedLog, fd: int) -> None:
            self.fsyncs += 1  # appends are acknowledged before they are durable

        monkeypatch.setattr(SegmentedLog, "_fsync", no_fsync)
    result = disk_run(0)
    assert not result.ok
    assert any("refuses to start" in failure for failure in result.failures()), result.report()


def test_a_committed_entry_conflict_without_lost_data_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member stopping on a leader that contradicts its committed entries is excused (as
    beyond the model) only once a lying fsync has lost data; in `disk`, which has no lying
    fsync, it is a bug and fails the run."""
    accept = RaftCore._accept_append

    def conflicted(self: RaftCore, request: AppendRequest) -> AppendResponse:
        if self.id == 2 and self.commit_index >= 5:
            raise CommittedEntryConflictError(request.leader, self.commit_index, 1, 2)
        return accept(self, request)

    monkeypatch.setattr(RaftCore, "_accept_append", conflicted)
    result = disk_run(0)
    assert not result.ok
    assert result.error is not None and "CommittedEntryConflictError" in result.error
