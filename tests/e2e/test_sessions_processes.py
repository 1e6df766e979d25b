"""Sessions across real processes: a SIGKILLed lock holder loses its session after its timeout
and the waiting client gets the lock through an event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

from copycat_trio import open_client
from copycat_trio.recipes.lock import Holder, Lock
from tests.e2e.procs import REPO_ROOT

pytestmark = pytest.mark.e2e

LOCKS = "copycat_trio.recipes.lock:LockStateMachine"


async def test_killed_lock_holder_loses_its_session_and_the_waiter_gets_the_lock(
    start_cluster,
) -> None:
    cluster = await start_cluster(state_machine=LOCKS)
    addresses = cluster.addresses()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    holder = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.e2e.lock_holder", ",".join(addresses), "job"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout is not None
        with trio.fail_after(20):
            line = b""
            while b"\n" not in line:
                chunk = await holder.stdout.receive_some(1024)
                assert chunk, "the lock holder exited early"
                line += chunk
        assert line.startswith(b"acquired"), line
        holder_session = int(line.split()[1])
        async with open_client(addresses) as client:
            assert await client.submit(Holder("job")) == holder_session
            acquired = trio.Event()

            async def wait_for_lock() -> None:
                await Lock(client, "job").acquire()
                acquired.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_lock)
                await trio.sleep(1.0)
                assert not acquired.is_set()  # the holder is alive: nobody else gets it
                holder.send_signal(signal.SIGKILL)
                await holder.wait()
                killed_at = trio.current_time()
                with trio.fail_after(20):
                    await acquired.wait()
                waited = trio.current_time() - killed_at
            assert await client.submit(Holder("job")) == client.session_id
            print(f"lock handed over {waited:.2f}s after SIGKILL of its holder")
            assert waited > 0.5  # only once the holder's session (1.5 s) has run out
            cluster.assert_running()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
