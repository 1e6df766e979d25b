"""What messages show when printed or logged."""

from copycat_trio.protocol.messages import Hello


def test_a_hello_never_shows_its_token() -> None:
    hello = Hello(1, 2, cluster="c", token="s3cret-bearer")
    assert "s3cret" not in repr(hello)
    assert "cluster='c'" in repr(hello)
