"""`copycat-trio serve` runs the resources manager unless told otherwise, and importing
copycat_trio alone makes every built-in resource operation decodable."""

from __future__ import annotations

import subprocess
import sys

from copycat_trio.cli import build_parser, load_state_machine
from copycat_trio.recipes import Resources


def test_serve_runs_resources_by_default() -> None:
    args = build_parser().parse_args(["serve", "--id", "1", "--members", "1=127.0.0.1:1"])
    assert load_state_machine(args.state_machine) is Resources


def test_importing_copycat_trio_registers_the_resource_operations() -> None:
    code = (
        "import copycat_trio\n"
        "from copycat_trio.protocol.codec import registry\n"
        "tags = set(registry.tags.values())\n"
        "assert {33200, 33220, 33250, 33010, 33020, 33030} <= tags, sorted(tags)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
