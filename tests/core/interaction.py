"""Golden interaction scripts for the pure core, in the style of etcd-io/raft's testdata: a
small command language drives a few cores by hand and prints every Ready they produce and every
message delivered, so a script's expected output shows each rule at work, step by step.

A script is blocks of a command line, a `----` line and the output the command printed, ended
by a blank line; lines starting with `#` are comments. `run_script` runs every command and
returns the script with the outputs it got; the test compares that with the file, and
rewrites the file instead when asked (`pytest --rewrite`, or COPYCAT_REWRITE=1).

Commands (ids are member ids, values are words):

    add-nodes N [option=value ...]   cores 1..N (RaftConfig options, e.g. pre_vote=false;
                                     priorities=0,0,5 gives the members election priorities)
    campaign ID                      ID starts an election (a poll round first with pre-vote)
    propose ID VALUE                 ID appends a command
    read-index ID CONTEXT            ID asks for a read index
    transfer ID TARGET               ID hands leadership to TARGET
    add-member ID NEW [passive|reserve]   ID proposes a configuration with NEW added
    remove-member ID GONE            ID proposes a configuration without GONE
    process-ready [ID ...] [hold]    print each core's Ready, persist it, queue its messages
                                     (hold: written but not yet durable, until `persist ID`)
    persist ID                       ID's writes so far are durable
    deliver-msgs [ID ...]            deliver the messages queued for these cores (all: none)
    drop-msgs [ID ...]               drop the messages queued for these cores
    stabilize                        process-ready and deliver-msgs until nothing is left
    tick SECONDS                     advance the clock; tick every core whose deadline passed
    advance SECONDS                  advance the clock only: no core acts until told (leases
                                     and stickiness run out, but no timer fires by itself)
    inject FROM TO TYPE [field=value ...]   deliver a message no core sent (stale, forged,
                                     misdirected): a protocol message class by name, ints, yes/no
    cut A B | isolate ID | heal      drop messages between A and B (both ways) from now on
    restart ID                       crash ID and start it again from what it persisted
    compact ID INDEX                 ID's entries up to INDEX are in a snapshot: drop them
    send-snapshot FROM TO            FROM's snapshot is installed on TO (unless they are cut)
    status                           one line per core
    log ID                           ID's log
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable
from typing import Any

import attrs

from copycat_trio.core.raft import RaftConfig, RaftCore, Ready, Role
from copycat_trio.protocol import messages
from copycat_trio.protocol.messages import (
    CommandEntry,
    ConfigurationEntry,
    Entry,
    Envelope,
    Member,
    MemberType,
    NoOpEntry,
)


def entry_text(entry: Entry) -> str:
    """`term/index` and what the entry is: noop, a command's value, a configuration."""
    where = f"{entry.term}/{entry.index}"
    if isinstance(entry, NoOpEntry):
        return f"{where} noop"
    if isinstance(entry, CommandEntry):
        return f"{where} {entry.operation}"
    if isinstance(entry, ConfigurationEntry):
        return f"{where} config {members_text(entry.members)}"
    return f"{where} {type(entry).__name__}"


def members_text(members: tuple[Member, ...]) -> str:
    """Ids, a PASSIVE or RESERVE one with its type: `1,2,3,4:passive`."""
    return ",".join(
        str(m.id) if m.type is MemberType.ACTIVE else f"{m.id}:{m.type.name.lower()}"
        for m in members
    )


def message_text(envelope: Envelope) -> str:
    """`source->target Type field=value ...`, fields at their default left out."""
    message = envelope.message
    parts = [f"{envelope.source}->{envelope.target} {type(message).__name__}"]
    for field in attrs.fields(type(message)):
        value = getattr(message, field.name)
        if field.default is not attrs.NOTHING and value == field.default:
            continue
        if field.name == "entries":
            shown = "[" + ", ".join(entry_text(e) for e in value) + "]"
        elif isinstance(value, bool):
            shown = "yes" if value else "no"
        else:
            shown = str(value)
        parts.append(f"{field.name}={shown}")
    return " ".join(parts)


class Interaction:
    """The cores of one script, the messages in flight between them and the script's clock."""

    def __init__(self) -> None:
        self.config = RaftConfig()
        self.now = 0.0
        self.members: tuple[Member, ...] = ()
        self.cores: dict[int, RaftCore] = {}
        self.queue: list[Envelope] = []
        self.cut: set[frozenset[int]] = set()
        self.output: list[str] = []
        self._commands: dict[str, Callable[[list[str]], None]] = {
            "add-nodes": self._add_nodes,
            "campaign": self._campaign,
            "propose": self._propose,
            "read-index": self._read_index,
            "transfer": self._transfer,
            "add-member": self._add_member,
            "remove-member": self._remove_member,
            "process-ready": self._process_ready,
            "persist": self._persist,
            "deliver-msgs": self._deliver,
            "drop-msgs": self._drop,
            "stabilize": self._stabilize,
            "tick": self._tick,
            "advance": self._advance,
            "inject": self._inject,
            "cut": self._cut,
            "isolate": self._isolate,
            "heal": self._heal,
            "restart": self._restart,
            "compact": self._compact,
            "send-snapshot": self._send_snapshot,
            "status": self._status,
            "log": self._log,
        }

    def run(self, line: str) -> list[str]:
        """Run one command; what it printed (an exception is printed, not raised: a refusal
        is part of what a script shows)."""
        self.output = []
        words = shlex.split(line)
        handler = self._commands.get(words[0])
        if handler is None:
            raise ValueError(f"unknown command {words[0]!r} (see tests/core/interaction.py)")
        try:
            handler(words[1:])
        except Exception as exc:  # shown in the output: a refusal is part of the script
            self.output.append(f"error: {type(exc).__name__}: {exc}")
        return self.output

    def _print(self, text: str) -> None:
        self.output.append(text)

    def _ids(self, words: list[str]) -> list[int]:
        return [int(w) for w in words] if words else sorted(self.cores)

    # --- commands ----------------------------------------------------------------------------

    def _add_nodes(self, words: list[str]) -> None:
        count, options = int(words[0]), dict(w.split("=", 1) for w in words[1:])
        priorities = [int(p) for p in options.pop("priorities", "").split(",") if p]
        defaults: dict[str, Any] = {"heartbeat_interval": 0.1, "commit_notify_delay": 0.0}
        for name, text in options.items():
            kind = type(getattr(RaftConfig(), name))
            defaults[name] = text == "true" if kind is bool else kind(text)
        self.config = RaftConfig(**defaults)
        priorities += [0] * (count - len(priorities))
        self.members = tuple(
            Member(i, f"host{i}:7000", priority=priorities[i - 1]) for i in range(1, count + 1)
        )
        for member in self.members:
            self.cores[member.id] = self._core(member.id, seed=member.id)
        # A member refuses votes for an election timeout after it starts (a restarted member
        # may have acknowledged a lease): the script's clock begins once that is over.
        self.now = self.config.election_timeout
        self._print(f"{count} cores; {self.config}")

    def _core(self, member_id: int, *, seed: int, old: RaftCore | None = None) -> RaftCore:
        persisted: dict[str, Any] = {}
        if old is not None:
            persisted = {
                "hard_state": old.hard_state,
                "entries": old.log.slice(old.log.first_index, old.log.last_index + 1),
            }
        return RaftCore(
            member_id,
            config=self.config,
            members=self.members,
            rng=random.Random(seed),
            now=self.now if old is not None else 0.0,
            **persisted,
        )

    def _campaign(self, words: list[str]) -> None:
        self.cores[int(words[0])].campaign(self.now)

    def _propose(self, words: list[str]) -> None:
        index, term = self.cores[int(words[0])].propose(words[1])
        self._print(f"proposed {term}/{index}")

    def _read_index(self, words: list[str]) -> None:
        self.cores[int(words[0])].read_index(words[1])

    def _transfer(self, words: list[str]) -> None:
        self.cores[int(words[0])].transfer_leadership(int(words[1]), self.now)

    def _add_member(self, words: list[str]) -> None:
        core, new = self.cores[int(words[0])], int(words[1])
        kind = MemberType[words[2].upper()] if len(words) > 2 else MemberType.ACTIVE
        member = Member(new, f"host{new}:7000", type=kind)
        index, term = core.propose_configuration((*core.members, member))
        if new not in self.cores:
            self.cores[new] = RaftCore(
                new, config=self.config, members=(), rng=random.Random(new), now=self.now
            )
        self._print(f"proposed {term}/{index}")

    def _remove_member(self, words: list[str]) -> None:
        core, gone = self.cores[int(words[0])], int(words[1])
        index, term = core.propose_configuration(tuple(m for m in core.members if m.id != gone))
        self._print(f"proposed {term}/{index}")

    def _process_ready(self, words: list[str]) -> None:
        hold = bool(words) and words[-1] == "hold"
        for member_id in self._ids(words[:-1] if hold else words):
            self._process(member_id, durable=not hold)

    def _persist(self, words: list[str]) -> None:
        core = self.cores[int(words[0])]
        core.persisted(core.log.last_index)

    def _process(self, member_id: int, *, durable: bool = True) -> bool:
        core = self.cores[member_id]
        if not core.has_ready():
            return False
        ready: Ready = core.ready()
        if durable:
            core.persisted(core.log.last_index)
        self._print(f"> {member_id} ready ({core.role.value}, term {core.term})")
        if ready.hard_state is not None:
            vote = ready.hard_state.vote
            self._print(f"  hard state: term {ready.hard_state.term}, vote {vote}")
        if ready.truncate_from is not None:
            self._print(f"  truncate from {ready.truncate_from}")
        if ready.entries:
            self._print("  append: " + ", ".join(entry_text(e) for e in ready.entries))
        for envelope in ready.messages:
            self._print(f"  send: {message_text(envelope)}")
        if ready.committed:
            self._print("  apply: " + ", ".join(entry_text(e) for e in ready.committed))
        for context, index in ready.reads:
            self._print(f"  read {context} at {index}")
        for context in ready.failed_reads:
            self._print(f"  read {context} failed")
        for peer in ready.snapshots:
            self._print(f"  snapshot needed by {peer}")
        self.queue.extend(ready.messages)
        return True

    def _deliver(self, words: list[str]) -> None:
        self._deliver_to(set(self._ids(words)))

    def _deliver_to(self, targets: set[int]) -> bool:
        delivering = [e for e in self.queue if e.target in targets]
        self.queue = [e for e in self.queue if e.target not in targets]
        for envelope in delivering:
            core = self.cores.get(envelope.target)
            if core is None or frozenset((envelope.source, envelope.target)) in self.cut:
                self._print(f"  lost: {message_text(envelope)}")
                continue
            self._print(f"{message_text(envelope)}")
            core.step(envelope.source, envelope.message, self.now)
        return bool(delivering)

    def _drop(self, words: list[str]) -> None:
        targets = set(self._ids(words))
        for envelope in [e for e in self.queue if e.target in targets]:
            self._print(f"  dropped: {message_text(envelope)}")
        self.queue = [e for e in self.queue if e.target not in targets]

    def _stabilize(self, words: list[str]) -> None:
        for _ in range(1000):
            readied = [self._process(i) for i in sorted(self.cores)]
            if not self._deliver_to(set(self.cores)) and not any(readied):
                return
        raise RuntimeError("did not stabilize within 1000 rounds")

    def _tick(self, words: list[str]) -> None:
        self.now = round(self.now + float(words[0]), 6)
        ticked = []
        for member_id, core in sorted(self.cores.items()):
            if core.next_deadline() <= self.now:
                core.tick(self.now)
                ticked.append(str(member_id))
        self._print(f"now {self.now:g}; ticked: {', '.join(ticked) or 'none'}")

    def _inject(self, words: list[str]) -> None:
        source, target, kind = int(words[0]), int(words[1]), getattr(messages, words[2])
        fields: dict[str, Any] = {}
        for word in words[3:]:
            name, text = word.split("=", 1)
            fields[name] = {"yes": True, "no": False}.get(text, text)
            if text.lstrip("-").isdigit():
                fields[name] = int(text)
        envelope = Envelope(source=source, target=target, message=kind(**fields))
        self._print(f"{message_text(envelope)}")
        self.cores[target].step(source, envelope.message, self.now)

    def _advance(self, words: list[str]) -> None:
        self.now = round(self.now + float(words[0]), 6)
        self._print(f"now {self.now:g}")

    def _cut(self, words: list[str]) -> None:
        self.cut.add(frozenset((int(words[0]), int(words[1]))))

    def _isolate(self, words: list[str]) -> None:
        member_id = int(words[0])
        for other in self.cores:
            if other != member_id:
                self.cut.add(frozenset((member_id, other)))

    def _heal(self, words: list[str]) -> None:
        self.cut.clear()

    def _restart(self, words: list[str]) -> None:
        member_id = int(words[0])
        old = self.cores[member_id]
        self.queue = [e for e in self.queue if e.target != member_id]
        self.cores[member_id] = self._core(member_id, seed=member_id + 100, old=old)

    def _compact(self, words: list[str]) -> None:
        self.cores[int(words[0])].compact(int(words[1]))

    def _send_snapshot(self, words: list[str]) -> None:
        """As the server's install stream does it: the follower accepts the leader (as an
        append would make it), restores, and the leader hears how it went."""
        source, target = int(words[0]), int(words[1])
        leader, follower = self.cores[source], self.cores[target]
        index = leader.log.snapshot_index
        if frozenset((source, target)) in self.cut:
            leader.snapshot_sent(target, index, False)
            self._print(f"snapshot {index} from {source} to {target}: lost")
            return
        installed = False
        if follower.accept_leader(leader.term, source, self.now):
            term = leader.log.term_at(index)
            assert term is not None
            installed = follower.restore(index, term, leader.members, leader.configuration_index)
        leader.snapshot_sent(target, index, installed)
        outcome = "installed" if installed else "not needed"
        self._print(f"snapshot {index} from {source} to {target}: {outcome}")

    def _status(self, words: list[str]) -> None:
        for member_id in self._ids(words):
            core = self.cores[member_id]
            lease = " lease" if core.role is Role.LEADER and core.lease_valid(self.now) else ""
            self._print(
                f"{member_id}: {core.role.value} term {core.term} vote {core.vote} "
                f"leader {core.leader} commit {core.commit_index} last "
                f"{core.log.last_term}/{core.log.last_index} members "
                f"{members_text(core.members)}{lease}"
            )

    def _log(self, words: list[str]) -> None:
        core = self.cores[int(words[0])]
        entries = core.log.slice(core.log.first_index, core.log.last_index + 1)
        self._print(", ".join(entry_text(e) for e in entries) or "(empty)")


def run_script(text: str) -> str:
    """The script with each command's output replaced by what it prints now."""
    interaction = Interaction()
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            out.append(line)
            continue
        out.append(line)
        out.append("----")
        out.extend(interaction.run(line))
        out.append("")
        if i < len(lines) and lines[i] == "----":  # skip the old output
            i += 1
            while i < len(lines) and lines[i].strip():
                i += 1
        if i < len(lines) and not lines[i].strip():
            i += 1  # the blank line that ends the block
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"
