"""The client side: open_client and CopycatClient."""

from .client import CopycatClient as CopycatClient
from .client import open_client as open_client
