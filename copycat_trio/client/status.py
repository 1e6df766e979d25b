"""A cluster's status as rows, one per member, and the plain table `copycat-trio status` prints.

Shared by the command line, the demo and the process harness in testing/, so that none of
them needs to import another's module for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocol.errors import CopycatError
from ..protocol.messages import StatusResponse
from .admin import fetch_status
from .diagnosis import ClusterView

STATUS_KEYS = (
    "id",
    "address",
    "role",
    "term",
    "leader",
    "commit_index",
    "applied_index",
    "snapshot_index",
    "sessions",
    "log_bytes",
    "last_contact",
)


async def collect_status(
    addresses: Sequence[str], timeout: float = 2.0, *, confirm: bool = False
) -> list[dict[str, Any]]:
    """Ask every address for its status at once; unreachable ones are reported as such.
    `last_contact` is, as the leader saw it, seconds since it last heard from that member."""
    answers = await fetch_status(addresses, timeout=timeout, confirm=confirm)
    return status_rows(addresses, answers)


def status_rows(
    addresses: Sequence[str], answers: Sequence[StatusResponse | CopycatError]
) -> list[dict[str, Any]]:
    """One row per address, in order: its answer's figures, or "unreachable" and why."""
    view = ClusterView.of(addresses, answers)
    heard = {c.member: c.seconds for c in view.leader.heard} if view.leader else {}
    rows: list[dict[str, Any]] = []
    for address, s in zip(addresses, answers, strict=True):
        if isinstance(s, StatusResponse):
            rows.append(
                {
                    "id": s.id,
                    "address": address,
                    "role": s.role,
                    "term": s.term,
                    "leader": s.leader,
                    "commit_index": s.commit_index,
                    "applied_index": s.applied_index,
                    "snapshot_index": s.snapshot_index,
                    "sessions": s.sessions,
                    "log_bytes": s.log_bytes,
                    "last_contact": 0.0 if s.role == "leader" else heard.get(s.id),
                    "cluster_id": s.cluster_id,
                }
            )
        else:
            rows.append(
                {
                    "id": None,
                    "address": address,
                    "role": "unreachable",
                    "term": None,
                    "leader": None,
                    "commit_index": None,
                    "applied_index": None,
                    "error": str(s),
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]], keys: Sequence[str]) -> str:
    """Rows as left-aligned columns under their keys; a missing value shows as "-"."""
    cells = [[str(k) for k in keys]] + [
        ["-" if row.get(k) is None else str(row.get(k)) for k in keys] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)
