"""Tools for testing clusters and state machines, like trio.testing."""

from ..transport.memory import MemoryNetwork as MemoryNetwork
from .cluster import MemoryCluster as MemoryCluster
from .cluster import open_memory_cluster as open_memory_cluster
