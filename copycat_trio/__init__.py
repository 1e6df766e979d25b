"""copycat_trio: highly consistent, fault-tolerant replicated state machines on Trio (Raft).

Write a StateMachine with methods taking Commit[YourCommand] or Commit[YourQuery], register the
operation classes with `register(tag)`, run CopycatServer members, and talk to them with
`open_client`.
"""

# `recipes` first: importing copycat_trio registers every built-in operation's wire tag, so
# every server decodes the resources' operations whatever its state machine.
from . import recipes as recipes
from .client import CopycatClient as CopycatClient
from .client import open_client as open_client
from .protocol.codec import register as register
from .protocol.errors import ApplicationError as ApplicationError
from .protocol.errors import CommandError as CommandError
from .protocol.errors import ConfigurationError as ConfigurationError
from .protocol.errors import CopycatError as CopycatError
from .protocol.errors import ErrorType as ErrorType
from .protocol.errors import IllegalMemberStateError as IllegalMemberStateError
from .protocol.errors import InternalError as InternalError
from .protocol.errors import NoLeaderError as NoLeaderError
from .protocol.errors import OutcomeUnknownError as OutcomeUnknownError
from .protocol.errors import ProtocolError as ProtocolError
from .protocol.errors import QueryError as QueryError
from .protocol.errors import UnauthorizedError as UnauthorizedError
from .protocol.errors import UnknownOperationError as UnknownOperationError
from .protocol.errors import UnknownSessionError as UnknownSessionError
from .protocol.messages import Member as Member
from .protocol.messages import MemberType as MemberType
from .protocol.operations import Command as Command
from .protocol.operations import Consistency as Consistency
from .protocol.operations import Operation as Operation
from .protocol.operations import Query as Query
from .server.server import CopycatServer as CopycatServer
from .server.server import ServerStatus as ServerStatus
from .state_machine import Commit as Commit
from .state_machine import StateMachine as StateMachine
from .state_machine import handler as handler
from .storage.memory import MemoryStorage as MemoryStorage
from .transport.tcp import TcpTransport as TcpTransport


def _version() -> str:
    """The one version string: the installed distribution's (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("copycat-trio")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
