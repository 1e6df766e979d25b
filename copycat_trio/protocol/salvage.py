"""What can still be answered in a request frame that does not decode.

A client one step ahead of the servers (an operation type the servers have not registered) or a
buggy one should get a typed answer within one round trip, not a closed connection and a wait
for its timeout. `salvage_request` is called with a frame the registry refused: a command or
query whose operation alone carries an unregistered tag becomes that request with
`UnknownOperation(tag)` in its place; any other request whose id can still be read raises
UnreadableRequestError (answered with a PROTOCOL error, the connection kept); the rest re-raises
the original error, which closes the connection as before.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from .codec import MAX_DEPTH, TypeRegistry, UnknownTagError
from .errors import ProtocolError, UnreadableRequestError
from .messages import CommandRequest, QueryRequest, RpcRequest, UnknownOperation

__all__ = ["salvage_request"]


def salvage_request(codec: TypeRegistry, frame: bytes, error: ProtocolError) -> Any:
    """The message to act on in place of `frame`, or raise (see the module's docstring)."""
    if isinstance(error, UnknownTagError):
        stand_ins: list[UnknownOperation] = []

        def stand_in(tag: int) -> UnknownOperation:
            stand_ins.append(UnknownOperation(tag))
            return stand_ins[-1]

        try:
            message = codec.decode(frame, unknown_tag=stand_in)
        except ProtocolError:
            message = None
        if (
            isinstance(message, RpcRequest)
            and isinstance(message.body, CommandRequest | QueryRequest)
            and len(stand_ins) == 1
            and message.body.operation is stand_ins[0]
        ):
            return message
    request_id = _request_id(codec, frame)
    if request_id is None:
        raise error
    raise UnreadableRequestError(f"request {request_id} could not be read: {error}", request_id)


def _request_id(codec: TypeRegistry, frame: bytes) -> int | None:
    """The id of an RpcRequest frame, read without decoding its body; None if it is not one."""
    try:
        decoder = cbor2.CBORDecoder(
            io.BytesIO(frame),
            tag_hook=lambda tag, immutable: tag,
            semantic_decoders={},
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
        )
        value = decoder.decode()
    except Exception:
        return None
    tag = codec.tags.get(RpcRequest)
    if (
        isinstance(value, cbor2.CBORTag)
        and value.tag == tag
        and isinstance(value.value, list | tuple)
        and value.value
        and type(value.value[0]) is int
        and 0 <= value.value[0] < 2**63
    ):
        return value.value[0]
    return None
