"""The pipelining workload's own checks: SEQUENTIAL read floors and exactly once by value, and
that a broken SEQUENTIAL read in a run is reported (copycat_trio/testing/pipeline_workload.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from copycat_trio.client import client as client_module
from copycat_trio.client.strategies import ServerSelection
from copycat_trio.protocol.errors import Status
from copycat_trio.protocol.messages import QueryRequest, QueryResponse
from copycat_trio.protocol.operations import Consistency
from copycat_trio.recipes.kv import KeyValueStore, Put
from copycat_trio.server.client_service import ClientService
from copycat_trio.testing.invariants import Applied
from copycat_trio.testing.pipeline_workload import (
    PipelineRecord,
    PipelineWorkload,
    SequentialRead,
    check_pipeline,
)
from copycat_trio.testing.simulation import open_simulation


def _applied(*puts: tuple[int, str, str]) -> list[Applied]:
    """Applications of Put(key, value) at the given indices (session 1, made-up sequences)."""
    return [
        Applied(1, index, 1, sequence, Put(key, value), None)
        for sequence, (index, key, value) in enumerate(puts, 1)
    ]


def _read(value: Any, *, acknowledged: int = 0, session_floor: int = 0, earlier: int = 0) -> Any:
    return SequentialRead("p0/s", "p0", value, 1.0, 2.0, acknowledged, session_floor, earlier)


APPLIED = _applied((10, "p0", "1"), (12, "p0", "2"), (15, "p0", "3"))


def test_reads_at_or_above_every_floor_pass() -> None:
    record = PipelineRecord(
        "p0",
        acknowledged=[1, 2],
        reads=[_read(None), _read("2", acknowledged=2), _read("3", acknowledged=2, earlier=2)],
    )
    assert check_pipeline(APPLIED, [record]) == []


def test_a_read_below_an_acknowledged_put_is_reported() -> None:
    record = PipelineRecord("p0", acknowledged=[1, 2], reads=[_read("1", acknowledged=2)])
    (problem,) = check_pipeline(APPLIED, [record])
    assert "returned '1' (applied at index 10)" in problem
    assert "'2' (applied at index 12) was acknowledged" in problem
    assert "read your writes" in problem


def test_a_read_below_an_earlier_read_is_reported() -> None:
    record = PipelineRecord("p0", reads=[_read("3"), _read(None, earlier=1)])
    (problem,) = check_pipeline(APPLIED, [record])
    assert "returned nothing (absent)" in problem and "monotonic reads" in problem


def test_a_read_below_its_sessions_earlier_command_is_reported() -> None:
    record = PipelineRecord("p0", reads=[_read("2", session_floor=3)])
    (problem,) = check_pipeline(APPLIED, [record])
    assert "'3' (applied at index 15) was submitted earlier in the read's session" in problem


def test_floors_compare_log_positions_not_values() -> None:
    # Under RECOVER an old session's lower n may apply after a new session's higher one:
    # reading it then is not stale.
    applied = _applied((10, "p0", "5"), (12, "p0", "4"))
    record = PipelineRecord("p0", acknowledged=[5], reads=[_read("4", acknowledged=1)])
    assert check_pipeline(applied, [record]) == []


def test_a_put_applied_at_two_indices_is_reported() -> None:
    applied = [*APPLIED, Applied(2, 20, 7, 1, Put("p0", "2"), None)]
    (problem,) = check_pipeline(applied, [PipelineRecord("p0")])
    assert "exactly once: Put('p0', '2') was applied at log indices [12, 20]" in problem


def test_a_read_of_a_value_never_applied_is_reported() -> None:
    record = PipelineRecord("p0", reads=[_read("9")])
    (problem,) = check_pipeline(APPLIED, [record])
    assert "returned '9', which no member ever applied" in problem


def test_other_keys_are_ignored() -> None:
    applied = [*APPLIED, *_applied((30, "k0", "2"), (31, "k0", "2"))]
    assert check_pipeline(applied, [PipelineRecord("p0")]) == []


async def _pipeline_run(seed: int) -> tuple[list[str], list[PipelineRecord]]:
    """Two pipelining clients that read through followers, no faults, five seconds."""
    workload = PipelineWorkload(clients=2, max_ops=150, selection=ServerSelection.FOLLOWERS)
    async with open_simulation(
        KeyValueStore, seed=seed, faults="none", servers=3, check_invariants=False
    ) as sim:
        records = await workload.run(sim, trio.current_time() + 5.0)
        await sim.heal()
        assert await sim.settle() is not None
        assert await sim.converge()
        workload.check(sim, records)
    return sim.invariants.violations, records


def _forgetful_sequential_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: the client sends SEQUENTIAL queries as if it had seen nothing (index 0, no
    earlier commands), so any member may answer from however far behind it is."""

    def forgetful(**fields: Any) -> QueryRequest:
        if fields["consistency"] == Consistency.SEQUENTIAL:
            fields.update(index=0, sequence=0)
        return QueryRequest(**fields)

    monkeypatch.setattr(client_module, "QueryRequest", forgetful)


def _server_answers_sequential_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: a member answers a SEQUENTIAL query from its state as it is, without waiting to
    apply what the client has seen or the session's earlier commands."""
    original = ClientService.query

    async def query(self: ClientService, request: QueryRequest) -> QueryResponse:
        session = self.executor.session(request.session)
        if request.consistency == Consistency.SEQUENTIAL and session is not None:
            result, failure = self.executor.query(request.operation, request.session)
            if failure is None:
                return QueryResponse(
                    status=Status.OK,
                    index=self.executor.applied_index.value,
                    event_index=session.event_index,
                    result=result,
                )
        return await original(self, request)

    monkeypatch.setattr(ClientService, "query", query)


async def test_a_run_without_mutation_passes(autojump_clock) -> None:
    violations, records = await _pipeline_run(seed=5)
    assert violations == []
    assert all(len(r.reads) > 20 and len(r.acknowledged) > 50 for r in records)


async def test_a_client_that_forgets_what_it_saw_is_reported(
    autojump_clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forgetful_sequential_reads(monkeypatch)
    violations, _ = await _pipeline_run(seed=5)
    assert any(v.startswith("SEQUENTIAL read:") for v in violations), violations


async def test_a_member_that_answers_before_catching_up_is_reported(
    autojump_clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _server_answers_sequential_at_once(monkeypatch)
    violations, _ = await _pipeline_run(seed=5)
    assert any(v.startswith("SEQUENTIAL read:") for v in violations), violations
