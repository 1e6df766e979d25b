"""Snapshot contents: what the server writes into a snapshot file and reads back.

A snapshot is a stream of frames (4-byte length, CBOR) and raw bytes: a header (index, term,
log time, the configuration in force), the session table (so exactly-once survives compaction:
sequence numbers, cached results, unacknowledged events), the pending scheduled callbacks (so
timers are replicated state too), then whatever the user's `Snapshottable.snapshot` writes.
User code runs in a worker thread while the executor applies nothing; its writes reach the file
through `trio.from_thread`, a buffer at a time.
"""

from __future__ import annotations

import contextlib
import gc
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import trio

from ..core.sessions import CachedResult, EventBatch, Session, SessionTable
from ..protocol.codec import registry
from ..protocol.errors import ProtocolError
from ..protocol.messages import Member
from ..storage.errors import StorageCorruptionError
from ..storage.snapshots import SnapshotReader, SnapshotWriter

FORMAT = 2
"""Adds the timers section. A state machine that never scheduled anything still gets format 1,
byte for byte what earlier versions wrote and read, so members of either version install each
other's snapshots during a rolling upgrade; an earlier member refuses format 2 by name rather
than install it without its timers."""
FORMATS = (1, 2)
FLUSH_AT = 1 << 20
_LENGTH = struct.Struct(">I")


class _CollectorPause:
    """Python's cyclic garbage collector held off while snapshots are written or read.

    Decoding a snapshot makes a container object per row; each few hundred of them start a
    collection that walks every object of the young generations, and now and then all of them
    (the state already loaded included): two thirds of the decoding time of a million-key map.
    Snapshot code makes no garbage cycles worth collecting meanwhile. Counted, so overlapping
    snapshots (several servers in one process) enable it again only once the last one ends,
    and only if it was enabled before the first began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._was_enabled:
                    gc.enable()


collector_paused = _CollectorPause()


@attrs.frozen
class SnapshotHeader:
    index: int
    term: int
    log_time: int
    members: tuple[Member, ...]
    configuration_index: int
    timer_sequence: int = 0
    """The executor's next timer number (ids and tie-break order): replicated like the rest."""


@attrs.frozen
class TimerRecord:
    """A pending scheduled callback as a snapshot holds it: the callback is a method of the
    state machine, by name, so it can be found again on any member."""

    due: int
    """Log time of its next firing."""
    order: int
    """Breaks ties between timers due at the same log time (scheduling order)."""
    timer_id: int
    interval_ms: int | None
    method: str
    args: tuple[Any, ...]


class ThreadSink:
    """A SnapshotSink for user code in a worker thread, writing to an async SnapshotWriter."""

    def __init__(self, writer: SnapshotWriter) -> None:
        self._writer = writer
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= FLUSH_AT:
            self.flush()

    def write_object(self, value: Any) -> None:
        payload = registry.encode(value)
        self.write(_LENGTH.pack(len(payload)) + payload)

    def flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            trio.from_thread.run(self._writer.write, data)


class ThreadSource:
    """A SnapshotSource for user code in a worker thread, reading an async SnapshotReader."""

    def __init__(self, reader: SnapshotReader) -> None:
        self._reader = reader
        self._buffer = bytearray()
        self._eof = False

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size and not self._eof:
            chunk = trio.from_thread.run(self._reader.read, max(size, FLUSH_AT))
            if not chunk:
                self._eof = True
            self._buffer += chunk

    def read(self, size: int) -> bytes:
        self._fill(size)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_object(self) -> Any:
        head = self.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            raise EOFError("the snapshot has no more objects")
        (length,) = _LENGTH.unpack(head)
        payload = self.read(length)
        if len(payload) < length:
            raise EOFError("the snapshot ends inside an object")
        return registry.decode(payload)


def _encode_session(session: Session) -> list[Any]:
    return [
        session.id,
        session.client,
        session.timeout,
        session.last_active,
        session.command_sequence,
        [
            [seq, r.index, r.event_index, r.result, r.error]
            for seq, r in sorted(session.results.items())
        ],
        session.event_index,
        [[b.index, b.previous_index, list(b.events)] for b in session.events],
        session.acknowledged_event_index,
        session.identity,
    ]


def _decode_session(record: list[Any]) -> Session:
    # Snapshots written before identities have nine fields; newer ones a tenth.
    (sid, client, timeout, last_active, command_sequence, results, event_index, events, acked) = (
        record[:9]
    )
    identity = record[9] if len(record) > 9 else ""
    return Session(
        id=sid,
        client=client,
        timeout=timeout,
        last_active=last_active,
        command_sequence=command_sequence,
        results={
            seq: CachedResult(index, ev, result, error) for seq, index, ev, result, error in results
        },
        event_index=event_index,
        events=deque(EventBatch(i, p, list(evs)) for i, p, evs in events),
        acknowledged_event_index=acked,
        identity=identity,
    )


def write_snapshot(
    sink: ThreadSink,
    header: SnapshotHeader,
    sessions: SessionTable,
    user: Any,
    timers: Sequence[TimerRecord] = (),
) -> None:
    """Runs in a worker thread: the whole snapshot, header first."""
    with collector_paused():
        head = {
            "format": 1,
            "index": header.index,
            "term": header.term,
            "log_time": header.log_time,
            "members": list(header.members),
            "configuration_index": header.configuration_index,
            "sessions": len(sessions),
        }
        if timers or header.timer_sequence:
            head.update(format=FORMAT, timers=len(timers), timer_sequence=header.timer_sequence)
        sink.write_object(head)
        for session in sessions.sessions.values():
            sink.write_object(_encode_session(session))
        for t in timers:
            sink.write_object([t.due, t.order, t.timer_id, t.interval_ms, t.method, list(t.args)])
        if user is not None:
            user.snapshot(sink)
        sink.flush()


def decode_header(head: Any) -> SnapshotHeader:
    """The header object a snapshot starts with; StorageCorruptionError if it is not one."""
    if not isinstance(head, dict) or head.get("format") not in FORMATS:
        raise StorageCorruptionError("snapshot header is not in a known format")
    try:
        return SnapshotHeader(
            index=head["index"],
            term=head["term"],
            log_time=head["log_time"],
            members=tuple(head["members"]),
            configuration_index=head["configuration_index"],
            timer_sequence=head.get("timer_sequence", 0),
        )
    except (KeyError, TypeError) as exc:
        raise StorageCorruptionError(f"snapshot header is damaged: {exc}") from exc


def read_snapshot(
    source: ThreadSource,
    user: Any,
    adopt: Callable[[SnapshotHeader, SessionTable, list[TimerRecord]], None],
) -> SnapshotHeader:
    """Runs in a worker thread: the header, sessions and timers, then the user's state.

    `adopt` gets the header, sessions and timers before `user.install` runs, so that the
    executor has them (and the snapshot's index and log time) in place for it."""
    with collector_paused():
        try:
            head = source.read_object()
            header = decode_header(head)
            table = SessionTable()
            for _ in range(head["sessions"]):
                session = _decode_session(source.read_object())
                table.sessions[session.id] = session
            timers = [
                TimerRecord(due, order, timer_id, interval, method, tuple(args))
                for due, order, timer_id, interval, method, args in (
                    source.read_object() for _ in range(head.get("timers", 0))
                )
            ]
        except (ProtocolError, KeyError, ValueError, TypeError, EOFError) as exc:
            raise StorageCorruptionError(f"snapshot contents are damaged: {exc}") from exc
        adopt(header, table, timers)
        if user is not None:
            user.install(source)
        return header
