"""A client process that takes a lock, says so, and then sits on it until it is killed."""

from __future__ import annotations

import sys

import trio

from copycat_trio import open_client
from copycat_trio.recipes.lock import Lock


async def main(addresses: list[str], name: str) -> None:
    async with open_client(addresses, session_timeout=1.5) as client:
        await Lock(client, name).acquire()
        print(f"acquired {client.session_id}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1].split(","), sys.argv[2])
