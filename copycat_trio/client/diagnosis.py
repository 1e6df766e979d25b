"""Why a cluster cannot serve, in one sentence an operator can act on.

The command line asks every member for its status (at once) before and after an operation, and
turns the answers into: which members could not be reached and why (refused, unknown host, no
answer), whether the ones that answered know a leader, and whether that leader still has a
quorum. Pure: it only reads the answers `fetch_status` gathered.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ..protocol.errors import CopycatError
from ..protocol.messages import StatusResponse

__all__ = ["ClusterView"]


@attrs.frozen
class ClusterView:
    """The members' answers to one status round, in the order they were asked."""

    addresses: tuple[str, ...]
    answers: tuple[StatusResponse | CopycatError, ...]
    confirm_asked: bool = False
    """Whether the leader was asked to confirm its quorum (StatusRequest.confirm)."""

    @classmethod
    def of(
        cls,
        addresses: Sequence[str],
        answers: Sequence[StatusResponse | CopycatError],
        *,
        confirm_asked: bool = False,
    ) -> ClusterView:
        return cls(tuple(addresses), tuple(answers), confirm_asked)

    @property
    def statuses(self) -> list[StatusResponse]:
        return [a for a in self.answers if isinstance(a, StatusResponse)]

    @property
    def leader(self) -> StatusResponse | None:
        """The answer of a member that says it leads (the highest term's, if several do)."""
        leaders = [s for s in self.statuses if s.role == "leader"]
        return max(leaders, key=lambda s: s.term) if leaders else None

    @property
    def has_quorum(self) -> bool:
        """A leader answered, and confirmed its quorum when it was asked to."""
        leader = self.leader
        return leader is not None and (leader.confirmed or not self.confirm_asked)

    def unreachable(self) -> list[str]:
        """'ADDRESS (why)' for each member that did not answer."""
        return [
            f"{address} ({_reason(answer)})"
            for address, answer in zip(self.addresses, self.answers, strict=True)
            if not isinstance(answer, StatusResponse)
        ]

    def problem(self) -> str | None:
        """None when a leader with a quorum answered; else what is wrong, in a sentence."""
        if self.has_quorum:
            return None
        silent = self.unreachable()
        total = len(self.addresses)
        if not self.statuses:
            return f"no member could be reached: {'; '.join(silent)}"
        tail = f"; unreachable: {'; '.join(silent)}" if silent else ""
        leader = self.leader
        if leader is not None:
            return (
                f"no quorum: member {leader.id} says it leads term {leader.term}, but a quorum "
                f"did not answer its heartbeat round within an election timeout{tail}"
            )
        named = sorted({s.leader for s in self.statuses if s.leader is not None})
        if named:
            return (
                f"the members that answered follow leader {', '.join(map(str, named))}, which "
                f"could not be reached{tail}"
            )
        return (
            f"no quorum: {len(self.statuses)} of {total} members answered and none knows a "
            f"leader (an election that cannot finish){tail}"
        )


def _reason(error: StatusResponse | CopycatError) -> str:
    text = str(error)
    prefix = "cannot connect to "
    if text.startswith(prefix) and ": " in text[len(prefix) :]:
        text = text[len(prefix) :].split(": ", 1)[1]
    return text
