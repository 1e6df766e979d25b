"""Snapshots are written and read with Python's cyclic collector held off (a million-key map
installs about three times faster), and it is back on afterwards, exactly as it was."""

from __future__ import annotations

import gc
from typing import Any

from copycat_trio.core.sessions import SessionTable
from copycat_trio.server.executor import BufferedSink, BufferedSource
from copycat_trio.server.snapshots import (
    SnapshotHeader,
    collector_paused,
    read_snapshot,
    write_snapshot,
)


class Recorder:
    """A state machine's snapshot side that notes whether the collector runs meanwhile."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def snapshot(self, sink: Any) -> None:
        self.seen.append(gc.isenabled())
        sink.write_object(["state"])

    def install(self, source: Any) -> None:
        self.seen.append(gc.isenabled())
        assert source.read_object() == ["state"]


def test_snapshot_code_runs_with_the_collector_off_and_it_comes_back_on() -> None:
    assert gc.isenabled()
    header = SnapshotHeader(index=5, term=2, log_time=0, members=(), configuration_index=0)
    user = Recorder()
    sink = BufferedSink(None)  # type: ignore[arg-type]  # drain is never called
    write_snapshot(sink, header, SessionTable(), user)
    assert gc.isenabled()
    source = BufferedSource(None)  # type: ignore[arg-type]  # everything is buffered already
    source._buffer += sink._buffer
    source._eof = True
    assert read_snapshot(source, user, lambda *adopted: None) == header
    assert user.seen == [False, False]
    assert gc.isenabled()


def test_overlapping_pauses_end_together_and_keep_a_collector_left_off_off() -> None:
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer snapshot still runs
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # the application had it off: it stays off
    finally:
        gc.enable()
