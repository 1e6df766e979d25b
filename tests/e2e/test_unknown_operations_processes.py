"""An operation the server processes do not know, sent by a client that does: a typed error in
under a second (issue 12), the connection and the session going on, on real processes."""

from __future__ import annotations

import attrs
import pytest
import trio

from copycat_trio import Consistency, UnknownOperationError, open_client, register
from copycat_trio.protocol.operations import Command, Query
from tests.e2e.appendlog import Append, Items
from tests.e2e.procs import ProcessCluster

pytestmark = pytest.mark.e2e


@register(40790)
@attrs.frozen
class Newer(Command):
    """Registered in the test process only: the servers (running AppendLog) never import it."""

    value: str = ""


@register(40791)
@attrs.frozen
class NewerQuery(Query):
    pass


async def test_an_unknown_operation_is_answered_within_a_second(cluster: ProcessCluster) -> None:
    async with open_client(cluster.addresses(), timeout=10) as client:
        first = await client.submit(Append("before"))
        started = trio.current_time()
        with pytest.raises(UnknownOperationError) as info:
            await client.submit(Newer("x"))
        elapsed = trio.current_time() - started
        assert elapsed < 1.0, f"the typed error took {elapsed:.2f}s"
        assert "40790" in str(info.value) and "AppendLog" in str(info.value), info.value
        with trio.fail_after(1):
            with pytest.raises(UnknownOperationError, match="40791"):
                await client.submit(NewerQuery(), consistency=Consistency.LINEARIZABLE)
        second = await client.submit(Append("after"))
        items = await client.submit(Items(), consistency=Consistency.LINEARIZABLE)
    assert items[first] == "before" and items[second] == "after" and len(items) == 2, items
    for member_id, server in cluster.servers.items():
        log = server.log_text()
        assert "unknown CBOR tag" not in log and "closing connection" not in log, member_id
