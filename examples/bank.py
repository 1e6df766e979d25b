"""An embedded three-member cluster running a user state machine, with a leader crash.

Run: python examples/bank.py
"""

from __future__ import annotations

import attrs
import trio

from copycat_trio import Command, Commit, Query, StateMachine, register
from copycat_trio.testing import open_memory_cluster


@register(40001)
@attrs.frozen
class Deposit(Command):
    account: str
    amount: int


@register(40002)
@attrs.frozen
class Balance(Query):
    account: str


class Bank(StateMachine):
    """Account balances; deposits must be positive."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}

    def deposit(self, commit: Commit[Deposit]) -> int:
        op = commit.operation
        if op.amount <= 0:
            raise ValueError(f"deposit must be positive, not {op.amount}")
        self.balances[op.account] = self.balances.get(op.account, 0) + op.amount
        return self.balances[op.account]

    def balance(self, commit: Commit[Balance]) -> int:
        return self.balances.get(commit.operation.account, 0)


async def main() -> None:
    async with open_memory_cluster(3, Bank, election_timeout=0.5) as cluster:
        leader = await cluster.wait_for_leader()
        print(f"leader is member {leader}")
        async with cluster.client() as client:
            for amount in (10, 20, 30):
                print("balance after deposit:", await client.submit(Deposit("alice", amount)))
            try:
                await client.submit(Deposit("alice", -5))
            except Exception as exc:
                print(f"refused: {type(exc).__name__}: {exc}")
        cluster.crash(leader)
        print(f"crashed member {leader}; new leader is {await cluster.wait_for_leader()}")
        async with cluster.client() as client:
            print("balance after failover:", await client.submit(Balance("alice")))


if __name__ == "__main__":
    trio.run(main)
