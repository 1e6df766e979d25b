"""What the leader knows of one follower's log, and how it paces appends to it.

PROBE sends one append at a time until the follower's match point is found; REPLICATE pipelines
up to `max_inflight` appends optimistically (etcd-io/raft's tracker/progress.go, simplified).
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"
    """The entries it needs were compacted away: a snapshot is being sent; appends wait."""


class Progress:
    """Replication state of one peer, kept by the leader."""

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.state = ProgressState.PROBE
        self.max_inflight = max_inflight
        self.inflight: deque[int] = deque()
        """Last index of each append sent and not yet acknowledged (REPLICATE only)."""
        self.probe_sent = False
        self.recent_active = False
        """Heard from since the last check-quorum round."""
        self.match_at_heartbeat = 0
        self.read_round = 0
        """The highest heartbeat round this peer has answered in the leader's term."""
        self.commit_sent = 0
        """The highest commit index sent to this peer (a commit index no append has carried
        yet is sent on its own a little later: RaftConfig.commit_notify_delay)."""
        self.round_sent = 0
        """The heartbeat round of the last append sent to this peer: an empty append that
        would tell it no newer round and no newer commit index is not sent."""

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value}, match={self.match_index}, next={self.next_index}, "
            f"inflight={len(self.inflight)})"
        )

    @property
    def paused(self) -> bool:
        """No new append may be sent now (a probe outstanding, or the window full)."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= self.max_inflight

    def sent(self, last_index: int) -> None:
        """Record an append carrying entries up to last_index."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next_index:
                self.next_index = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def acknowledge(self, match_index: int) -> bool:
        """A successful append reply; returns whether the match point advanced."""
        advanced = match_index > self.match_index
        if advanced:
            self.match_index = match_index
        if self.next_index <= match_index:
            self.next_index = match_index + 1
        while self.inflight and self.inflight[0] <= match_index:
            self.inflight.popleft()
        if self.state is not ProgressState.REPLICATE:
            self.state = ProgressState.REPLICATE
            self.inflight.clear()
            self.probe_sent = False
            self.next_index = max(self.next_index, self.match_index + 1)
        return advanced

    def reject(self, rejected_index: int, hint: int) -> bool:
        """A failed append reply; returns False if it is stale and was ignored."""
        if rejected_index < self.match_index or self.state is ProgressState.SNAPSHOT:
            return False
        if rejected_index == self.match_index and hint <= self.match_index:
            # It no longer holds what it acknowledged (its disk lost a damaged tail): its log
            # still matches up to its end, so replicate again from there. Commits already made
            # stand; a lower match only makes later commits wait for it.
            self.match_index = hint - 1
        if self.state is ProgressState.PROBE and rejected_index != self.next_index - 1:
            return False
        self.next_index = max(self.match_index + 1, min(rejected_index, hint))
        self.become_probe()
        return True

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.inflight.clear()
        self.probe_sent = False
        self.next_index = max(self.next_index, self.match_index + 1)

    def become_snapshot(self) -> None:
        self.state = ProgressState.SNAPSHOT
        self.inflight.clear()
        self.probe_sent = False

    def snapshot_done(self, index: int, succeeded: bool) -> None:
        """The snapshot up to index was installed (or the attempt failed): probe onwards."""
        if succeeded and index > self.match_index:
            self.match_index = index
        self.next_index = self.match_index + 1
        self.become_probe()

    def heartbeat_due(self) -> None:
        """Called every heartbeat: unpause a probe, and recover a pipeline whose appends were
        lost (the match point did not move for a whole heartbeat interval)."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = False
        elif self.inflight and self.match_index == self.match_at_heartbeat:
            self.next_index = self.match_index + 1
            self.become_probe()
        self.match_at_heartbeat = self.match_index
