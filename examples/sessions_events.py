"""Sessions, consistency levels and events on an in-process cluster.

Run: python examples/sessions_events.py
"""

from __future__ import annotations

import attrs
import trio

from copycat_trio import Command, Commit, Consistency, Query, StateMachine, register
from copycat_trio.recipes.lock import Lock, LockStateMachine
from copycat_trio.testing import open_memory_cluster


@register(40021)
@attrs.frozen
class Post(Command):
    """Append a message to a topic and tell every subscriber's session."""

    topic: str
    text: str


@register(40022)
@attrs.frozen
class Subscribe(Command):
    topic: str


@register(40023)
@attrs.frozen
class History(Query):
    topic: str


class Board(StateMachine):
    def __init__(self) -> None:
        self.messages: dict[str, list[str]] = {}
        self.subscribers: dict[str, set[int]] = {}

    def subscribe(self, commit: Commit[Subscribe]) -> None:
        assert commit.session is not None
        self.subscribers.setdefault(commit.operation.topic, set()).add(commit.session.id)

    def post(self, commit: Commit[Post]) -> int:
        topic, text = commit.operation.topic, commit.operation.text
        self.messages.setdefault(topic, []).append(text)
        for session_id in sorted(self.subscribers.get(topic, ())):
            session = self.context.sessions.get(session_id)
            if session is not None:
                session.publish("post", {"topic": topic, "text": text})
        return len(self.messages[topic])

    def history(self, commit: Commit[History]) -> list[str]:
        return self.messages.get(commit.operation.topic, [])

    def on_close(self, session) -> None:  # type: ignore[no-untyped-def]
        for ids in self.subscribers.values():
            ids.discard(session.id)


async def board_demo() -> None:
    async with (
        open_memory_cluster(3, Board, election_timeout=0.5) as cluster,
        cluster.client(host="reader") as reader,
        cluster.client(host="writer") as writer,
    ):
        await reader.submit(Subscribe("news"))
        async with reader.events("post") as posts:
            for text in ("hello", "world"):
                await writer.submit(Post("news", text))
            for _ in range(2):
                event = await posts.receive()
                print("event:", event.payload["text"])
        # Three ways to read:
        print("linearizable:", await writer.submit(History("news")))
        print(
            "lease:",
            await writer.submit(History("news"), consistency=Consistency.LINEARIZABLE_LEASE),
        )
        print(
            "sequential:",
            await writer.submit(History("news"), consistency=Consistency.SEQUENTIAL),
        )


async def lock_demo() -> None:
    async with (
        open_memory_cluster(3, LockStateMachine, election_timeout=0.5) as cluster,
        cluster.client(host="a") as a,
        cluster.client(host="b") as b,
    ):
        await Lock(a, "printer").acquire()
        print("a holds the printer")
        async with trio.open_nursery() as nursery:

            async def b_waits() -> None:
                await Lock(b, "printer").acquire()
                print("b got the printer (woken by an event)")

            nursery.start_soon(b_waits)
            await trio.sleep(0.5)
            print("a releases")
            await Lock(a, "printer").release()


async def main() -> None:
    await board_demo()
    await lock_demo()


if __name__ == "__main__":
    trio.run(main)
