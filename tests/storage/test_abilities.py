"""Which storages have which optional abilities: the server finds them by isinstance on small
Protocols (storage.base), so a storage that loses one silently loses what it was for."""

from __future__ import annotations

from pathlib import Path

from copycat_trio.storage.base import (
    CompactableLog,
    FailureReporting,
    FsyncObservable,
    IndexedLog,
    InDirectory,
)
from copycat_trio.storage.disk import DiskStorage
from copycat_trio.storage.memory import MemoryStorage

ABILITIES = (IndexedLog, CompactableLog, FsyncObservable, FailureReporting, InDirectory)


def test_disk_storage_has_every_ability(tmp_path: Path) -> None:
    storage = DiskStorage(tmp_path / "member")
    assert [isinstance(storage, ability) for ability in ABILITIES] == [True] * len(ABILITIES)


def test_memory_storage_says_what_it_holds_and_nothing_more() -> None:
    storage = MemoryStorage()
    assert [isinstance(storage, ability) for ability in ABILITIES] == [True] + [False] * 4


def test_an_ability_is_a_method_or_property_by_name_not_a_base_class() -> None:
    class Watched(MemoryStorage):
        def observe_fsyncs(self, observer: object) -> None:
            self.observer = observer

    assert isinstance(Watched(), FsyncObservable)
    assert not isinstance(Watched(), CompactableLog)
