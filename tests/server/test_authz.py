"""The pure rules of identities and roles (server/authz.py): which role each request needs,
what each role allows, tokens stored hashed, and how a connection's identity is found from its
certificate or token (issue 13, item 3)."""

from __future__ import annotations

from typing import Any

import pytest

from copycat_trio.protocol.errors import ConfigurationError
from copycat_trio.protocol.messages import (
    BackupRequest,
    CommandRequest,
    ConfigureRequest,
    ConnectRequest,
    InstallRequest,
    JoinRequest,
    KeepAliveRequest,
    LeaveRequest,
    Member,
    QueryRequest,
    ReconfigureRequest,
    RegisterRequest,
    StatusRequest,
    TransferRequest,
    UnregisterRequest,
)
from copycat_trio.server.authz import (
    AuthPolicy,
    Role,
    TokenTable,
    certificate_identity,
    hash_token,
    identify,
    is_member_only,
    parse_role_assignment,
    required_role,
    session_of,
    session_refusal,
    unauthorized_message,
)


def certificate(common_name: str | None, *names: tuple[str, str]) -> dict[str, Any]:
    """A certificate as ssl's getpeercert() gives it."""
    subject = ((("organizationName", "test"),),)
    if common_name is not None:
        subject += ((("commonName", common_name),),)
    return {"subject": subject, "subjectAltName": names}


MEMBER_CERT = certificate("member-1", ("IP Address", "127.0.0.1"))
OPS_CERT = certificate("ops", ("DNS", "ops"))


def test_each_request_needs_the_role_the_docs_give_it() -> None:
    member = Member(4, "127.0.0.1:5004")
    for request in (
        QueryRequest(),
        RegisterRequest(client="c"),
        KeepAliveRequest(session=1),
        UnregisterRequest(session=1),
        ConnectRequest(client="c", session=1),
        StatusRequest(),
    ):
        assert required_role(request) is Role.READ, request
    assert required_role(CommandRequest()) is Role.WRITE
    for request in (
        JoinRequest(member=member),
        LeaveRequest(member=member),
        ReconfigureRequest(member=member),
        TransferRequest(member=2),
        BackupRequest(),
    ):
        assert required_role(request) is Role.ADMIN, request


def test_roles_are_ordered_read_write_admin() -> None:
    assert Role.ADMIN.allows(Role.WRITE) and Role.ADMIN.allows(Role.READ)
    assert Role.WRITE.allows(Role.READ) and Role.WRITE.allows(Role.WRITE)
    assert not Role.WRITE.allows(Role.ADMIN)
    assert not Role.READ.allows(Role.WRITE)


def test_a_role_assignment_is_identity_equals_role() -> None:
    assert parse_role_assignment("ops=admin") == ("ops", Role.ADMIN)
    assert parse_role_assignment(" CN with spaces = read ") == ("CN with spaces", Role.READ)
    for bad in ("ops", "=admin", "ops=root"):
        with pytest.raises(ConfigurationError, match=r"IDENTITY=ROLE|role"):
            parse_role_assignment(bad)


def test_tokens_are_stored_hashed_and_found_by_their_hash() -> None:
    stored = hash_token("s3cret")
    assert stored.startswith("sha256:") and "s3cret" not in stored
    table = TokenTable.parse(f'# comment\n\nbatch = "{stored}"\nother = "{hash_token("x")}"\n')
    assert table.identity_of("s3cret") == "batch"
    assert table.identity_of("x") == "other"
    assert table.identity_of("wrong") is None
    assert table.identity_of("") is None


@pytest.mark.parametrize(
    "text",
    ['batch = "s3cret"', 'batch = "sha256:zz"', "batch", f'= "{hash_token("a")}"'],
)
def test_a_tokens_file_with_a_plain_or_malformed_line_is_refused_with_its_line(text: str) -> None:
    with pytest.raises(ConfigurationError, match="line 1"):
        TokenTable.parse(text, "tokens.txt")


def test_the_identity_of_a_certificate_is_its_common_name_else_its_first_name() -> None:
    assert certificate_identity(OPS_CERT) == "ops"
    assert certificate_identity(certificate(None, ("email", "ops@example"))) == "ops@example"
    assert certificate_identity(certificate(None)) == ""


def policy(**kwargs: Any) -> AuthPolicy:
    return AuthPolicy(
        roles={"ops": Role.ADMIN, "viewer": Role.READ},
        tokens=TokenTable.parse(f'batch = "{hash_token("t0k")}"'),
        **kwargs,
    )


MEMBER_HOSTS = ("127.0.0.1",)


def test_a_listed_identity_has_its_role_an_unlisted_one_write() -> None:
    ops = identify(policy(), OPS_CERT, "", MEMBER_HOSTS)
    assert (ops.identity, ops.role, ops.member) == ("ops", Role.ADMIN, False)
    viewer = identify(policy(), certificate("viewer"), "", MEMBER_HOSTS)
    assert viewer.role is Role.READ
    stranger = identify(policy(), certificate("someone"), "", MEMBER_HOSTS)
    assert (stranger.identity, stranger.role) == ("someone", Role.WRITE)


def test_a_certificate_valid_for_a_members_host_is_a_members_and_needs_no_role() -> None:
    member = identify(policy(), MEMBER_CERT, "", MEMBER_HOSTS)
    assert member.member and member.role is Role.ADMIN
    assert not identify(policy(), MEMBER_CERT, "", ("10.0.0.1",)).member
    named = certificate("m", ("DNS", "copycat"))
    assert identify(policy(server_name="copycat"), named, "", ("10.0.0.1",)).member
    assert identify(policy(), named, "", ("copycat",)).member


def test_a_token_names_its_identity_and_a_wrong_token_is_refused() -> None:
    batch = identify(policy(), None, "t0k", MEMBER_HOSTS)
    assert (batch.identity, batch.role, batch.refusal) == ("batch", Role.WRITE, "")
    wrong = identify(policy(), None, "guess", MEMBER_HOSTS)
    assert "token" in wrong.refusal and wrong.role is None
    no_tokens = identify(AuthPolicy(), None, "t0k", MEMBER_HOSTS)
    assert "no tokens" in no_tokens.refusal


def test_a_certificate_wins_over_a_token_but_the_token_must_still_be_valid() -> None:
    both = identify(policy(), OPS_CERT, "t0k", MEMBER_HOSTS)
    assert both.identity == "ops"
    assert identify(policy(), OPS_CERT, "guess", MEMBER_HOSTS).refusal


def test_an_anonymous_client_has_the_anonymous_role() -> None:
    anonymous = identify(policy(), None, "", MEMBER_HOSTS)
    assert (anonymous.identity, anonymous.role) == ("", Role.WRITE)
    read_only = identify(policy(anonymous_role=Role.READ), None, "", MEMBER_HOSTS)
    assert read_only.role is Role.READ
    with pytest.raises(ConfigurationError, match="anonymous"):
        AuthPolicy(anonymous_role=Role.ADMIN)


def test_the_refusal_names_the_identity_and_the_missing_role() -> None:
    ops = identify(policy(), certificate("viewer"), "", MEMBER_HOSTS)
    text = unauthorized_message(ops, ReconfigureRequest(member=Member(2, "h:2")))
    assert "'viewer'" in text and "admin" in text and "read" in text
    anonymous = identify(policy(), None, "", MEMBER_HOSTS)
    assert "anonymous" in unauthorized_message(anonymous, BackupRequest())


def test_a_client_acts_only_in_its_own_sessions_a_member_in_any() -> None:
    assert session_of(CommandRequest(session=7)) == 7
    assert session_of(QueryRequest(session=0)) == 0
    assert session_of(ConnectRequest(client="c", session=9)) == 9
    assert session_of(StatusRequest()) == 0
    ops = identify(policy(), OPS_CERT, "", MEMBER_HOSTS)
    assert session_refusal(ops, 7, "ops") is None
    refusal = session_refusal(ops, 7, "viewer")
    assert refusal == "session 7 belongs to client 'viewer', not to client 'ops'"
    anonymous = identify(policy(), None, "", MEMBER_HOSTS)
    assert session_refusal(anonymous, 7, "") is None
    assert "belongs to an anonymous client" in (session_refusal(ops, 7, "") or "")
    member = identify(policy(), MEMBER_CERT, "", MEMBER_HOSTS)
    assert session_refusal(member, 7, "viewer") is None


def test_a_members_certificate_is_matched_as_a_dialling_member_would_match_it() -> None:
    wildcard = certificate("m", ("DNS", "*.db.example"))
    assert identify(policy(), wildcard, "", ("db1.db.example",)).member
    assert not identify(policy(), wildcard, "", ("db.example",)).member
    assert not identify(policy(), wildcard, "", ("a.db1.db.example",)).member
    ipv6 = certificate("m", ("IP Address", "0:0:0:0:0:0:0:1"))
    assert identify(policy(), ipv6, "", ("::1",)).member
    assert identify(policy(), certificate("m", ("DNS", "DB1.Example")), "", ("db1.example",)).member


def test_member_traffic_sent_as_requests_is_for_members_only() -> None:
    assert is_member_only(InstallRequest(term=1, leader=1, index=1, offset=0, data=b""))
    assert is_member_only(ConfigureRequest(term=1, leader=1, index=1, timestamp=0))
    assert not is_member_only(LeaveRequest(member=Member(2, "h:2")))
    ops = identify(policy(), OPS_CERT, "", MEMBER_HOSTS)
    text = unauthorized_message(ops, ConfigureRequest(term=1, leader=1, index=1, timestamp=0))
    assert "only members send" in text
