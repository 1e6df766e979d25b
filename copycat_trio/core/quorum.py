"""Majority arithmetic: quorum sizes and the index a majority has reached."""

from __future__ import annotations

from collections.abc import Iterable


def quorum_size(voters: int) -> int:
    """How many of `voters` make a majority."""
    return voters // 2 + 1


def majority_index(indexes: Iterable[int]) -> int:
    """The highest index that a majority of the given per-voter indexes has reached."""
    ordered = sorted(indexes, reverse=True)
    if not ordered:
        return 0
    return ordered[quorum_size(len(ordered)) - 1]


def has_quorum(granted: int, voters: int) -> bool:
    return granted >= quorum_size(voters)
