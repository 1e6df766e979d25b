"""Ready-made state machines built on `copycat_trio.state_machine`."""

from .kv import CompareAndSet, Delete, Get, Keys, KeyValueStore, Put, Size

__all__ = ["CompareAndSet", "Delete", "Get", "KeyValueStore", "Keys", "Put", "Size"]
