"""How long faults keep writes from being acknowledged: pure arithmetic over a run's history.

A fault run (the nemesis, the failover trials) records when each fault began and, for every
acknowledged write, which client it came from and when it was acknowledged. From those two lists
this module answers the question an operator asks of a consensus system: after this kind of
fault, how long until writes are acknowledged again, for the first client and for every client
that was writing before the fault? Only writes invoked after the fault count as recovery: an
answer already on its way when the fault struck says nothing about the cluster after it.

Pure: no Trio, no I/O; times are seconds on whatever one clock the caller uses.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Iterable, Sequence

import attrs

__all__ = ["FaultRecovery", "RecoveryStats", "recovery_after", "summarize"]


@attrs.frozen
class FaultRecovery:
    """One fault: when it began and how long until writes were acknowledged again."""

    kind: str
    started: float
    first: float | None
    """Seconds from the fault to the first acknowledgement of a write invoked after it (any
    client); None if there was none before the run ended."""
    every: float | None
    """Seconds from the fault until every client that had written before it had a write invoked
    after it acknowledged; None if some such client had none before the run ended."""
    clients: int
    """How many clients had written before the fault (the ones `every` waits for)."""


def recovery_after(
    kind: str,
    started: float,
    acknowledged: Sequence[tuple[Hashable, float, float]],
) -> FaultRecovery:
    """The recovery from one fault that began at `started`, given every acknowledged write as
    (client, time invoked, time acknowledged), in any order."""
    after: dict[Hashable, float] = {}
    before: set[Hashable] = set()
    for client, invoked, at in acknowledged:
        if at <= started:
            before.add(client)
        elif invoked >= started and (client not in after or at < after[client]):
            after[client] = at
    first = min(after.values(), default=None)
    waits = [after.get(client) for client in before]
    every: float | None
    if not before:
        every = None if first is None else first - started
    elif any(w is None for w in waits):
        every = None
    else:
        every = max(w for w in waits if w is not None) - started
    return FaultRecovery(
        kind=kind,
        started=started,
        first=None if first is None else first - started,
        every=every,
        clients=len(before),
    )


@attrs.frozen
class RecoveryStats:
    """Recovery figures for one kind of fault over a run (seconds; None: never recovered)."""

    kind: str
    faults: int
    first_median: float | None
    first_worst: float | None
    every_median: float | None
    every_worst: float | None
    unrecovered: int
    """Faults after which some client that wrote before never had a write acknowledged."""

    def format(self, *, every: bool = True) -> str:
        """One line; `every=False` leaves out the every-client figures (for workloads whose
        clients do not all keep writing)."""

        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}s"

        text = (
            f"{self.kind}: {self.faults} faults; first write after {seconds(self.first_median)} "
            f"median, {seconds(self.first_worst)} worst"
        )
        if not every:
            return text
        text += (
            f"; every client after {seconds(self.every_median)} median, "
            f"{seconds(self.every_worst)} worst"
        )
        if self.unrecovered:
            text += f"; {self.unrecovered} never recovered before the run ended"
        return text


def summarize(recoveries: Iterable[FaultRecovery]) -> list[RecoveryStats]:
    """Median and worst recovery per kind of fault, kinds in order of first appearance."""
    by_kind: dict[str, list[FaultRecovery]] = {}
    for recovery in recoveries:
        by_kind.setdefault(recovery.kind, []).append(recovery)
    stats = []
    for kind, items in by_kind.items():
        firsts = sorted(r.first for r in items if r.first is not None)
        everys = sorted(r.every for r in items if r.every is not None)
        unrecovered = sum(1 for r in items if r.every is None)
        stats.append(
            RecoveryStats(
                kind=kind,
                faults=len(items),
                first_median=statistics.median(firsts) if firsts else None,
                first_worst=firsts[-1] if firsts else None,
                every_median=statistics.median(everys) if everys else None,
                every_worst=everys[-1] if everys else None,
                unrecovered=unrecovered,
            )
        )
    return stats
