"""Ready-made state machines built on `copycat_trio.state_machine`.

`Resources` serves named maps, counters, locks, elections, groups and queues from one cluster
(the default of `copycat-trio serve`); `Map`, `Counter`, `Lock`, `Election`, `Group` and
`Queue` are their client handles. Importing this package registers every built-in operation's
wire tag, the older single-purpose recipes' included.
"""

from . import counter as _counter  # noqa: F401  (registers the counter's wire tags)
from . import election as _election  # noqa: F401
from . import lock as _lock  # noqa: F401
from .kv import CompareAndSet, Delete, Get, Keys, KeyValueStore, Put, Size
from .resources import (
    Counter,
    Election,
    Group,
    Lock,
    Map,
    Queue,
    Resources,
)

__all__ = [
    "CompareAndSet",
    "Counter",
    "Delete",
    "Election",
    "Get",
    "Group",
    "KeyValueStore",
    "Keys",
    "Lock",
    "Map",
    "Put",
    "Queue",
    "Resources",
    "Size",
]
