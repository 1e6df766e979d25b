"""Raft's safety properties, checked while a simulation runs.

`InvariantChecker.poll(servers)` looks at every running member's core (a simulation calls it every
few virtual milliseconds) and `on_apply` hears every command each member applies (through
`observe`, which wraps a state machine). Broken properties are collected as `violations`, each a
sentence naming the members, terms and indices involved:

- election safety: at most one leader per term, over the whole run (crashed members included);
- log matching: every member's committed prefix is the same log (entries compared whole);
- leader completeness: an entry committed in a term is in the log of every later term's leader;
- state machine safety: every member applies the same command, with the same result, at each
  index (a restarted member that re-applies its log must agree with itself too);
- timer safety: every member has fired the same timer callbacks, at the same log positions,
  by each command it applies (a digest the state machine keeps, `Applied.timers`);
- exactly once: each session command (session, sequence) is applied at one index only;
- session order: every member applies each session's commands at consecutive sequence numbers
  (1, 2, 3 ...), no gap and none out of order, from the first it applies after starting or
  after installing a snapshot (then from wherever the snapshot left the session, and that
  command's predecessor must have applied, somewhere, at a lower index).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..core.raft import Role
from ..protocol.messages import CommandEntry, Entry
from ..protocol.operations import Command
from ..state_machine import Snapshottable

if TYPE_CHECKING:
    from ..server.server import CopycatServer
    from ..state_machine import SnapshotSource, StateMachine

__all__ = ["Applied", "InvariantChecker", "observe"]

MAX_VIOLATIONS = 50

_runs = itertools.count(1)
"""Numbers a state machine's runs (see `Applied.run`), unique in the process."""


@attrs.frozen
class Applied:
    """One command as a member applied it."""

    member: int
    index: int
    session: int
    sequence: int
    operation: Any
    result: Any
    run: int = 0
    """Which run of the member's state machine applied it: a new one at each start (a fresh
    state machine) and at each snapshot it installs."""
    from_snapshot: bool = False
    """That run began by installing a snapshot (so a session's first command in it may be any)."""
    timers: Any = None
    """The state machine's `timer_digest` as the command applied (None if it keeps none): a
    hash of every timer callback fired before it, so members that fired different timers, or
    at different log positions, disagree here."""


@attrs.define
class _Run:
    number: int
    from_snapshot: bool = False


def observe(
    state_machine: StateMachine,
    member: int,
    on_apply: Callable[[Applied], None],
    on_fire: Callable[[int, Any], None] | None = None,
) -> StateMachine:
    """Wrap a state machine's `apply` so that each command it applies is reported (with the
    session and sequence number the executor is applying); queries are not reported. A
    `Snapshottable` one's `install` is wrapped too: what it applies after is a new run. A state
    machine with an `observer` attribute (sim_machine.SimStore) reports its timer firings to
    `on_fire(member, firing)`."""
    if on_fire is not None and hasattr(state_machine, "observer"):
        state_machine.observer = lambda firing: on_fire(member, firing)
    original = state_machine.apply
    run = _Run(next(_runs))
    if isinstance(state_machine, Snapshottable):
        original_install = state_machine.install

        def install(reader: SnapshotSource) -> None:
            original_install(reader)
            run.number, run.from_snapshot = next(_runs), True

        state_machine.install = install  # type: ignore[method-assign]

    def apply(commit: Any) -> Any:
        if not isinstance(commit.operation, Command) or commit.session is None:
            return original(commit)
        sequence = getattr(state_machine.context, "sequence", 0)
        timers = getattr(state_machine, "timer_digest", None)
        try:
            result = original(commit)
        except Exception as exc:
            on_apply(
                Applied(
                    member,
                    commit.index,
                    commit.session.id,
                    sequence,
                    commit.operation,
                    ("raised", type(exc).__name__, str(exc)),
                    run.number,
                    run.from_snapshot,
                    timers,
                )
            )
            raise
        on_apply(
            Applied(
                member,
                commit.index,
                commit.session.id,
                sequence,
                commit.operation,
                result,
                run.number,
                run.from_snapshot,
                timers,
            )
        )
        return result

    state_machine.apply = apply  # type: ignore[method-assign]
    return state_machine


class InvariantChecker:
    """Remembers what every member showed, across the run, and records what contradicts it."""

    def __init__(self, note: Callable[[str, str], None] | None = None) -> None:
        self._note = note or (lambda kind, text: None)
        self.violations: list[str] = []
        self.leaders: dict[int, int] = {}
        """Term -> the member seen leading it."""
        self.committed: dict[int, Entry] = {}
        """Index -> the committed entry there (the first member to show it committed)."""
        self.commit_term: dict[int, int] = {}
        """Index -> the lowest term in which a member was seen holding it committed."""
        self.applied: dict[int, Applied] = {}
        self.applications: dict[tuple[int, int], int] = {}
        """(session, sequence) -> the index it was applied at."""
        self._last_sequence: dict[tuple[int, int, int], int] = {}
        """(member, run, session) -> the last sequence that run applied for the session."""
        self._checked: dict[tuple[int, int], int] = {}
        """(member, incarnation) -> committed index checked up to."""
        self._completeness: dict[tuple[int, int, int], int] = {}
        """(member, incarnation, term) -> committed index checked against that leader's log."""
        self.firings: dict[int, Any] = {}
        """Firing number -> the first member's (a sim_machine.Firing) of a timer callback."""
        self._firing_member: dict[int, int] = {}
        self.polls = 0
        self.applies = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def violation(self, text: str) -> None:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(text)
            self._note("VIOLATION", text)

    # --- polling cores ---------------------------------------------------------------------

    def poll(self, servers: Mapping[int, CopycatServer], incarnations: Mapping[int, int]) -> None:
        """Check every running member's core; `incarnations` tells restarts apart."""
        self.polls += 1
        for member_id in sorted(servers):
            loop = servers[member_id]._loop
            if loop is None:
                continue
            core = loop.core
            incarnation = incarnations.get(member_id, 0)
            if core.role is Role.LEADER:
                self._check_leader(member_id, incarnation, core)
            self._check_committed(member_id, incarnation, core)

    def _check_leader(self, member_id: int, incarnation: int, core: Any) -> None:
        term = core.term
        seen = self.leaders.setdefault(term, member_id)
        if seen != member_id:
            self.violation(f"election safety: members {seen} and {member_id} both led term {term}")
        elif (member_id, incarnation, term) not in self._completeness:
            self._note("leader", f"{member_id} leads term {term}")
        key = (member_id, incarnation, term)
        index = self._completeness.get(key, 0)
        log = core.log
        while index + 1 in self.committed:
            index += 1
            if self.commit_term[index] >= term or index <= log.snapshot_index:
                continue
            expected = self.committed[index]
            held = log.entry(index) if index <= log.last_index else None
            if held != expected:
                self.violation(
                    f"leader completeness: {member_id} leads term {term} without entry {index} "
                    f"(term {expected.term}), committed by term {self.commit_term[index]}; its "
                    f"log has {_describe(held)} there (log {log.first_index}..{log.last_index})"
                )
                break
        self._completeness[key] = index

    def _check_committed(self, member_id: int, incarnation: int, core: Any) -> None:
        key = (member_id, incarnation)
        log = core.log
        start = max(self._checked.get(key, 0), log.snapshot_index)
        end = min(core.commit_index, log.last_index)
        for index in range(start + 1, end + 1):
            entry = log.entry(index)
            known = self.committed.get(index)
            if known is None:
                self.committed[index] = entry
                self.commit_term[index] = core.term
            elif known != entry:
                self.violation(
                    f"log matching: {member_id} (term {core.term}) has {_describe(entry)} "
                    f"committed at {index}, another member had {_describe(known)}"
                )
                break
            else:
                self.commit_term[index] = min(self.commit_term[index], core.term)
        if end > start:
            self._checked[key] = end

    # --- applications ----------------------------------------------------------------------

    def on_apply(self, applied: Applied) -> None:
        self.applies += 1
        known = self.applied.setdefault(applied.index, applied)
        if known is not applied and (
            known.session,
            known.sequence,
            known.operation,
            known.result,
        ) != (applied.session, applied.sequence, applied.operation, applied.result):
            self.violation(
                f"state machine safety: member {applied.member} applied {_applied(applied)} at "
                f"index {applied.index}; member {known.member} applied {_applied(known)}"
            )
        elif known is not applied and known.timers != applied.timers:
            self.violation(
                f"timer safety: members {known.member} and {applied.member} fired different "
                f"timer callbacks before applying index {applied.index} (timer digests "
                f"{known.timers!r} and {applied.timers!r}): replicas diverged through "
                "scheduled callbacks (see each member's recent firings in the convergence "
                "check)"
            )
        entry = self.committed.get(applied.index)
        if isinstance(entry, CommandEntry) and (
            entry.session,
            entry.sequence,
            entry.operation,
        ) != (applied.session, applied.sequence, applied.operation):
            self.violation(
                f"state machine safety: member {applied.member} applied {_applied(applied)} at "
                f"index {applied.index}, where the committed entry is {_describe(entry)}"
            )
        self._check_session_order(applied)
        command = (applied.session, applied.sequence)
        first = self.applications.setdefault(command, applied.index)
        if first != applied.index:
            self.violation(
                f"exactly once: command {applied.sequence} of session {applied.session} "
                f"({applied.operation!r}) applied at index {first} and again at index "
                f"{applied.index} (member {applied.member})"
            )

    def on_fire(self, member: int, firing: Any) -> None:
        """A member ran a timer callback (a `sim_machine.Firing`): each firing number must be
        the same callback, at the same log position and time, with the same effect, everywhere."""
        known = self.firings.setdefault(firing.number, firing)
        first = self._firing_member.setdefault(firing.number, member)
        if known != firing:
            self.violation(
                f"timer safety: timer firing #{firing.number} was {known!r} on member {first} "
                f"but {firing!r} on member {member}: replicas diverged through scheduled "
                "callbacks"
            )

    def _check_session_order(self, applied: Applied) -> None:
        key = (applied.member, applied.run, applied.session)
        last = self._last_sequence.get(key)
        self._last_sequence[key] = max(last or 0, applied.sequence)
        sequence = applied.sequence
        if last is not None:
            if sequence != last + 1:
                self.violation(
                    f"session order: member {applied.member} applied command {sequence} of "
                    f"session {applied.session} ({applied.operation!r}) at index "
                    f"{applied.index} right after command {last}"
                )
            return
        if sequence == 1:
            return
        if not applied.from_snapshot:
            self.violation(
                f"session order: member {applied.member} applied command {sequence} of session "
                f"{applied.session} ({applied.operation!r}) at index {applied.index} as the "
                "session's first since it started"
            )
            return
        previous = self.applications.get((applied.session, sequence - 1))
        if previous is None or previous >= applied.index:
            where = "nowhere" if previous is None else f"at index {previous}"
            self.violation(
                f"session order: member {applied.member} applied command {sequence} of session "
                f"{applied.session} ({applied.operation!r}) at index {applied.index} after a "
                f"snapshot, but command {sequence - 1} applied {where}"
            )

    def summary(self) -> str:
        return (
            f"{len(self.leaders)} terms with a leader, {len(self.committed)} committed entries, "
            f"{len(self.applications)} commands applied ({self.applies} applications seen), "
            f"{self.polls} polls"
        )


def _describe(entry: Entry | None) -> str:
    if entry is None:
        return "nothing"
    if isinstance(entry, CommandEntry):
        return (
            f"{type(entry).__name__}(term {entry.term}, session {entry.session}, "
            f"seq {entry.sequence}, {entry.operation!r})"
        )
    return f"{type(entry).__name__}(term {entry.term})"


def _applied(applied: Applied) -> str:
    return (
        f"command {applied.sequence} of session {applied.session} {applied.operation!r} "
        f"-> {applied.result!r}"
    )
