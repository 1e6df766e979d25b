"""The simulation's command line: run many seeds (in worker processes), or replay one.

    python -m copycat_trio.testing.simulation --seeds 200 --jobs 2
    python -m copycat_trio.testing.simulation --seed 17        # replay one, verbosely

(`python -m copycat_trio.testing.sim_runner` is the same command.)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from .faults import EXTRA_PROFILES, PROFILES
from .sim_watch import DEADLOCK_DIR_VARIABLE
from .simulation import run_simulation

__all__ = ["main"]


def _run_one(args: tuple[int, str | None, dict[str, Any]]) -> tuple[int, bool, str, str]:
    seed, profile, overrides = args
    logging.getLogger("copycat_trio").setLevel(logging.WARNING)
    try:
        result = run_simulation(seed, profile=profile, **overrides)
    except Exception:
        return seed, False, f"FAIL seed {seed}: could not run", traceback.format_exc()
    return seed, result.ok, result.summary(), "" if result.ok else result.report()


def _seeds(start: int, count: int) -> Iterator[int]:
    return iter(range(start, start + count))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m copycat_trio.testing.simulation",
        description="Deterministic simulation of a copycat_trio cluster under faults.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seeds", type=int, default=20, help="how many seeds to run (default 20)")
    group.add_argument("--seed", type=int, help="replay one seed verbosely")
    parser.add_argument("--start", type=int, default=0, help="first seed of --seeds (default 0)")
    parser.add_argument(
        "--profile",
        choices=[*PROFILES, *EXTRA_PROFILES],
        help="force a fault profile (default: by seed)",
    )
    parser.add_argument(
        "--disk",
        choices=["sim", "fs"],
        help="members' storage: SimDisk, or the real DiskStorage on a simulated file system",
    )
    parser.add_argument(
        "--workload",
        choices=["kv", "resources"],
        default="kv",
        help="kv (default): the key-value workload on the SimStore; resources: locks with "
        "fencing, a queue and a watched map on the Resources state machine",
    )
    parser.add_argument("--jobs", type=int, default=1, help="processes to run seeds in")
    parser.add_argument("--duration", type=float, help="virtual seconds of workload per seed")
    parser.add_argument(
        "--check-replay", action="store_true", help="with --seed: run twice, compare traces"
    )
    parser.add_argument("--verbose", action="store_true", help="print full reports")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.duration is not None:
        overrides["duration"] = args.duration
    if args.disk is not None:
        overrides["disk"] = args.disk
    if args.workload != "kv":
        overrides["scenario"] = args.workload
    if args.seed is not None:
        result = run_simulation(args.seed, profile=args.profile, **overrides)
        print(result.report(verbose=True))
        if args.check_replay:
            again = run_simulation(args.seed, profile=args.profile, **overrides)
            same = again.digest == result.digest
            print(f"\nreplay: trace {again.digest} {'matches' if same else 'DIFFERS'}")
            if not same:
                return 2
        return 0 if result.ok else 1
    jobs = [(seed, args.profile, overrides) for seed in _seeds(args.start, args.seeds)]
    failures: list[tuple[int, str]] = []
    began = time.monotonic()
    if args.jobs > 1:
        failures = _print_outcomes(_run_parallel(jobs, args.jobs), verbose=args.verbose)
    else:
        failures = _print_outcomes(map(_run_one, jobs), verbose=args.verbose)
    elapsed = time.monotonic() - began
    print(
        f"\n{len(jobs)} seeds from {args.start}, {len(failures)} failed, {elapsed:.0f}s "
        f"({elapsed / max(1, len(jobs)):.1f}s per seed)"
    )
    for seed, _ in failures:
        print(f"  failed: seed {seed} (replay with --seed {seed})")
    return 1 if failures else 0


def _run_parallel(
    jobs: list[tuple[int, str | None, dict[str, Any]]], workers: int
) -> Iterator[tuple[int, bool, str, str]]:
    """Run seeds in `workers` processes, yielding outcomes as they finish. A seed whose process
    exits (a deadlock ends its process: see sim_watch.deadlock_sentinel) is reported failed with its
    report; the other seeds that pool was running are run again in a new pool."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    previous = os.environ.get(DEADLOCK_DIR_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="copycat-sim-") as directory:
        os.environ[DEADLOCK_DIR_VARIABLE] = directory  # the workers inherit it
        try:
            queue = list(jobs)
            while queue:
                batch, queue = queue, []
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(workers, mp_context=context) as executor:
                    futures = {executor.submit(_run_one, job): job for job in batch}
                    for future in as_completed(futures):
                        job = futures[future]
                        try:
                            yield future.result()
                        except BrokenProcessPool:
                            path = os.path.join(directory, f"{job[0]}.txt")
                            if os.path.exists(path):
                                with open(path) as file:
                                    report = file.read()
                                yield job[0], False, report.splitlines()[0], report
                            else:
                                queue.append(job)
                queue.sort(key=lambda job: job[0])
        finally:
            if previous is None:
                os.environ.pop(DEADLOCK_DIR_VARIABLE, None)
            else:
                os.environ[DEADLOCK_DIR_VARIABLE] = previous


def _print_outcomes(
    outcomes: Iterator[tuple[int, bool, str, str]], *, verbose: bool
) -> list[tuple[int, str]]:
    failures = []
    for seed, ok, summary, report in outcomes:
        print(summary, flush=True)
        if not ok:
            failures.append((seed, report))
            print(report if verbose else _short(report), flush=True)
    return failures


def _short(report: str) -> str:
    """The configuration, failures (with the start of the checker's explanation) and how to
    replay: what a batch run prints for a failing seed."""
    lines = report.splitlines()
    keep: list[str] = []
    explaining = 0
    for line in lines:
        if line.startswith(("FAILURE", "replay", "seed")):
            keep.append(line)
            explaining = 12 if "linearizability" in line else 0
        elif explaining and line:
            keep.append(line)
            explaining -= 1
        else:
            explaining = 0
    return "\n".join("    " + line for line in keep[:40])


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
