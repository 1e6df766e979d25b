"""Tests of durable storage; helpers shared by the test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from copycat_trio.core.raft import HardState
from copycat_trio.protocol.messages import CommandEntry, Entry
from copycat_trio.storage.disk import DiskStorage


def entry(index: int, term: int = 1, size: int = 16) -> CommandEntry:
    """A command entry whose payload names its index and term (so mix-ups show)."""
    tag = f"{index}:{term}:".encode()
    return CommandEntry(term=term, index=index, operation=(tag * (size // len(tag) + 1))[:size])


def entries(first: int, last: int, term: int = 1, size: int = 16) -> list[Entry]:
    return [entry(i, term, size) for i in range(first, last + 1)]


def segment_files(directory: Path) -> list[Path]:
    return sorted((directory / "log").glob("*.log"))


async def reopen(directory: Path, **options: Any) -> tuple[HardState, list[Entry]]:
    """Open, load and close: what a restarted server would see."""
    async with DiskStorage(directory, **options) as storage:
        state = await storage.load()
    return state.hard_state, list(state.entries)
