"""Guards that end a simulation run that cannot end by itself: a CPU-time watchdog (tasks
spinning without sleeping) and a deadlock sentinel (no task can run and none waits for a
time), each saying what happened instead of leaving a test run hanging."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import trio

__all__ = [
    "DEADLOCK_DIR_VARIABLE",
    "DEADLOCK_EXIT",
    "CpuWatchdog",
    "deadlock_sentinel",
    "task_tree",
]


class CpuWatchdog(trio.abc.Instrument):
    """Stops a run that takes too much CPU time (say, tasks spinning without sleeping)."""

    def __init__(self, limit: float) -> None:
        self.deadline = time.process_time() + limit
        self.scope: trio.CancelScope | None = None
        self.fired = False

    def before_io_wait(self, timeout: float) -> None:
        if not self.fired and self.scope is not None and time.process_time() > self.deadline:
            self.fired = True
            self.scope.cancel()


DEADLOCK_EXIT = 70
"""The exit status of a process whose simulation deadlocked (see deadlock_sentinel)."""
DEADLOCK_DIR_VARIABLE = "COPYCAT_SIM_DEADLOCK_DIR"
"""If set, a deadlocked run also writes its report to SEED.txt in this directory."""


async def deadlock_sentinel(seed: int, after: float) -> None:
    """Wake only if virtual time jumps this far: on the MockClock that means no task of the run
    waits for a time any more and none can run, so the run can never end (say, a shielded wait
    for a task that has stopped). Not even cancelling everything ends such a run, so print what
    every task waits on and end the process (status DEADLOCK_EXIT): a failure that names the
    seed beats a test run that hangs until its CI times out."""
    await trio.sleep(after)
    report = (
        f"FAIL seed {seed}: deadlock at virtual time {trio.current_time():.3f}: no task can "
        "run and none waits for a time. Tasks and where they wait:\n" + "\n".join(task_tree())
    )
    print(report, file=sys.stderr, flush=True)
    directory = os.environ.get(DEADLOCK_DIR_VARIABLE)
    if directory:
        with open(os.path.join(directory, f"{seed}.txt"), "w") as file:
            file.write(report)
    os._exit(DEADLOCK_EXIT)


def task_tree() -> list[str]:
    """One line per task, indented by nesting, with where it waits (innermost frames last)."""
    lines: list[str] = []
    stack = [(trio.lowlevel.current_root_task(), 0)]
    while stack:
        task, depth = stack.pop()
        if task is None:
            continue
        where: list[str] = []
        coro: Any = task.coro
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            name = frame.f_code.co_filename.rsplit("/", 1)[-1]
            where.append(f"{name}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        lines.append(f"{'  ' * depth}{task.name.rsplit('.', 1)[-1]}: {' > '.join(where[-4:])}")
        for nursery in task.child_nurseries:
            stack.extend((child, depth + 1) for child in nursery.child_tasks)
    return lines
