"""The client side: open_client, sessions, strategies."""

from .client import ClientClosedError as ClientClosedError
from .client import CopycatClient as CopycatClient
from .client import open_client as open_client
from .strategies import ClientState as ClientState
from .strategies import ConnectionStrategy as ConnectionStrategy
from .strategies import RecoveryStrategy as RecoveryStrategy
from .strategies import ServerSelection as ServerSelection
