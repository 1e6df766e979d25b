"""Developer sessions: `nox -s tests`, `lint`, `typecheck`, `docs`, `demo`, `bench`, `soak`,
`simulate`, `nemesis`, `mutation`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default test run: unit, simulation and real-process tests (under 15 minutes)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The API reference from the docstrings (mkdocs.yml, docs/api/) into site/, strictly: a
    broken reference or a missing module fails it. `-- --site-dir DIR` writes it elsewhere."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Three local server processes, writes, a SIGKILLed leader, everything read back."""
    session.install(".")
    session.run("copycat-trio", "demo", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Many small commands on disk-backed processes; disk and memory sampled; restart timed.

    Small by default; `nox -s soak -- --commands 1000000 --restart-keys 1000000` for the full one.
    """
    session.install(".")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput and latency of a three-process cluster on loopback (see docs/benchmarks.md).

    Pass options after `--`, e.g. `nox -s bench -- --seconds 10 --writers 1,16,64`;
    `-- --compare etcd,pysyncobj --reads` runs the same load against a 3-member etcd (the
    Debian package etcd-server, when `etcd` is on PATH) and PySyncObj, alternating, with ratios;
    `-- --tls` runs every row with TLS on and on plaintext, `-- --metrics-cost` with metrics on
    and off, alternating, with ratios; `-- --plots DIR` draws a latency histogram per row.
    """
    plots = any(a == "--plots" or a.startswith("--plots=") for a in session.posargs)
    session.install(".[plots]" if plots else ".")
    if "--tls" in session.posargs:
        session.install("trustme")  # the run's certificates
    peers = compared_peers(session.posargs)
    if "etcd" in peers:
        session.install("h11")
    if "pysyncobj" in peers:
        session.install("pysyncobj")
    session.run("python", "benchmarks/bench_cluster.py", *session.posargs)


def compared_peers(args: list[str]) -> set[str]:
    """The systems named by `--compare A,B` or `--compare=A,B` in the bench's arguments."""
    peers: set[str] = set()
    for i, arg in enumerate(args):
        if arg == "--compare" and i + 1 < len(args):
            peers.update(args[i + 1].split(","))
        elif arg.startswith("--compare="):
            peers.update(arg.removeprefix("--compare=").split(","))
    return {p.strip() for p in peers}


@nox.session(python=PYTHON)
def simulate(session: nox.Session) -> None:
    """Deterministic simulation under faults, checked for linearizability and Raft invariants.

    `nox -s simulate` runs 24 seeds (0 to 23: three per profile, the default test run's eight
    among them); `-- --seeds 500 --jobs 2` runs more; `-- --seed 17` replays one seed verbosely
    (its fault schedule, trace and history); see docs/testing.md.
    """
    session.install("-e", ".")
    args = session.posargs or ["--seeds", "24"]
    session.run("python", "-m", "copycat_trio.testing.simulation", *args)


@nox.session(python=PYTHON)
def nemesis(session: nox.Session) -> None:
    """Five real server processes under SIGKILL, SIGSTOP/SIGCONT and network partitions (in
    network namespaces the run creates; as root), checked for linearizability.

    `nox -s nemesis` runs 3 seeds of 60 s; `-- --runs 20 --seconds 120 --seed 100` runs more;
    `-- --no-netns` plays kills and pauses only; `-- --plots DIR` keeps every run's latency
    and throughput plots (matplotlib, installed here); see docs/testing.md.
    """
    session.install("-e", ".[plots]")
    args = session.posargs or ["--runs", "3", "--seconds", "60"]
    session.run("python", "-m", "copycat_trio.testing.nemesis", *args)


@nox.session(python=PYTHON)
def failover(session: nox.Session) -> None:
    """Kill or isolate the leader of three real processes again and again, and time every
    connected client's next write (as root, for the isolations).

    `nox -s failover` runs 20 trials; `-- --trials 40 --election-timeout 3` runs others.
    """
    session.install("-e", ".")
    args = session.posargs or ["--trials", "20"]
    session.run("python", "-m", "copycat_trio.testing.failover", *args)


@nox.session(python=PYTHON)
def mutation(session: nox.Session) -> None:
    """Break one rule at a time (copycat_trio/testing/mutants) and check that a named scenario
    or a simulation seed catches each; fails if any mutant survives.

    `nox -s mutation` tries up to 100 seeds per mutant; `-- --list` lists them; `-- --only
    dedup-off --seeds 20`; `-- --simulation-only` measures the simulation alone;
    `-- --catalogue mypackage.mutants:CATALOGUE` runs your own; see docs/testing.md.
    """
    session.install("-e", ".")
    session.run("python", "-m", "copycat_trio.testing.mutation", *session.posargs)
