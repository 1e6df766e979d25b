"""ClusterView: the sentence an operator gets for each way a cluster cannot serve."""

from __future__ import annotations

from copycat_trio.client.diagnosis import ClusterView
from copycat_trio.protocol import CopycatError, Member, Status, StatusResponse

ADDRESSES = ("a:1", "b:1", "c:1")
MEMBERS = tuple(Member(i, a) for i, a in enumerate(ADDRESSES, start=1))


def status(member_id: int, role: str, leader: int | None, **fields: object) -> StatusResponse:
    return StatusResponse(
        status=Status.OK,
        id=member_id,
        role=role,
        term=3,
        leader=leader,
        members=MEMBERS,
        **fields,  # type: ignore[arg-type]
    )


def refused(address: str) -> CopycatError:
    return CopycatError(f"cannot connect to {address}: Connection refused")


def test_a_confirmed_leader_is_no_problem() -> None:
    answers = [status(1, "leader", 1, confirmed=True), status(2, "follower", 1), refused("c:1")]
    view = ClusterView.of(ADDRESSES, answers, confirm_asked=True)
    assert view.has_quorum and view.problem() is None


def test_nobody_reachable_names_each_address_and_why() -> None:
    view = ClusterView.of(ADDRESSES, [refused(a) for a in ADDRESSES])
    assert view.problem() == (
        "no member could be reached: a:1 (Connection refused); b:1 (Connection refused); "
        "c:1 (Connection refused)"
    )


def test_a_leader_that_cannot_confirm_has_no_quorum() -> None:
    answers = [status(1, "leader", 1, confirmed=False), refused("b:1"), refused("c:1")]
    problem = ClusterView.of(ADDRESSES, answers, confirm_asked=True).problem()
    assert problem is not None and problem.startswith("no quorum: member 1 says it leads term 3")
    assert "unreachable: b:1 (Connection refused); c:1 (Connection refused)" in problem


def test_followers_without_a_leader() -> None:
    answers = [status(1, "follower", None), status(2, "candidate", None), refused("c:1")]
    problem = ClusterView.of(ADDRESSES, answers).problem()
    assert problem is not None
    assert problem.startswith("no quorum: 2 of 3 members answered and none knows a leader")


def test_followers_of_an_unreachable_leader() -> None:
    answers = [refused("a:1"), status(2, "follower", 1), status(3, "follower", 1)]
    problem = ClusterView.of(ADDRESSES, answers).problem()
    assert problem is not None and "follow leader 1, which could not be reached" in problem
