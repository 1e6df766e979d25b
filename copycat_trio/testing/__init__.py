"""Tools for testing clusters and state machines, like trio.testing: an in-process cluster on a
faulty in-memory network, a history recorder and a linearizability checker."""

from ..transport.memory import MemoryNetwork as MemoryNetwork
from .cluster import MemoryCluster as MemoryCluster
from .cluster import open_memory_cluster as open_memory_cluster
from .history import History as History
from .history import Operation as Operation
from .history import OpKind as OpKind
from .history import Outcome as Outcome
from .history import format_operations as format_operations
from .linearizability import DEFAULT_MAX_STATES as DEFAULT_MAX_STATES
from .linearizability import CheckResult as CheckResult
from .linearizability import CheckStatus as CheckStatus
from .linearizability import check as check
from .linearizability import check_key as check_key
