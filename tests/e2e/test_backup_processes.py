"""Backup and restore with real processes (issue 14): `snapshot save` from a live cluster, then
a new cluster made from the file with `snapshot restore` serves every key the backup held."""

from __future__ import annotations

from pathlib import Path

import pytest

from copycat_trio import Consistency, open_client
from copycat_trio.recipes.kv import Get, Keys, Put
from tests.e2e.conftest import StartCluster
from tests.e2e.procs import ProcessCluster
from tests.e2e.test_cli_processes import cli

pytestmark = pytest.mark.e2e

KV = "copycat_trio.recipes.kv:KeyValueStore"


async def test_a_backup_restored_into_a_new_cluster_serves_every_key(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    old = await start_cluster(state_machine=KV)
    written = {f"key{i:03d}": f"value {i}" for i in range(300)}
    async with open_client(old.addresses(), timeout=20) as client:
        for key, value in written.items():
            await client.submit(Put(key, value))
    backup = tmp_path / "cluster.backup"
    code, out, err, _ = await cli(
        "snapshot", "save", str(backup), "--cluster", ",".join(old.addresses())
    )
    assert code == 0 and "saved snapshot" in out, err
    # Written after the backup: the new cluster must not have it.
    async with open_client(old.addresses(), timeout=20) as client:
        await client.submit(Put("later", "not in the backup"))
    await old.aclose()

    new = ProcessCluster(tmp_path / "new", 3, state_machine=KV)
    (tmp_path / "new").mkdir()
    try:
        for member_id in new.ids():
            code, out, err, _ = await cli(
                "snapshot",
                "restore",
                str(backup),
                "--data-dir",
                str(new.data_dir(member_id)),
                "--id",
                str(member_id),
                "--members",
                new.members,
            )
            assert code == 0 and "restored snapshot" in out, err
        await new.start()
        await new.wait_for_leader(timeout=20)
        async with open_client(new.addresses(), timeout=20) as client:
            keys = await client.submit(Keys(), consistency=Consistency.LINEARIZABLE)
            assert keys == sorted(written), keys[:5]
            for key in ("key000", "key150", "key299"):
                assert await client.submit(Get(key)) == written[key]
            await client.submit(Put("new", "cluster"))  # and it takes writes
        code, out, err, _ = await cli("members", "list", "--cluster", ",".join(new.addresses()))
        assert code == 0 and all(a in out for a in new.addresses()), out + err
    finally:
        await new.aclose()


async def test_a_damaged_backup_is_refused(tmp_path: Path) -> None:
    backup = tmp_path / "bad.backup"
    backup.write_bytes(b"copycat-trio backup 1\n" + b"\x00\x00\x00\x02xx")
    code, _, err, _ = await cli(
        "snapshot",
        "restore",
        str(backup),
        "--data-dir",
        str(tmp_path / "d"),
        "--id",
        "1",
        "--members",
        "1=127.0.0.1:7301",
    )
    assert code == 1 and "damaged" in err, err
    assert not (tmp_path / "d").exists()
