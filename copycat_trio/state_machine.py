"""The user's replicated state machine, and the commits the server applies to it.

Users subclass `StateMachine` and write one method per operation, taking a single parameter
annotated `Commit[SomeOperation]` (or decorated with `@handler(SomeOperation)`); the class builds
its dispatch table when it is created, so mistakes surface at import time, not on a server.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import attrs

from .protocol import errors

__all__ = [
    "Commit",
    "Scheduled",
    "ServerSession",
    "SnapshotSink",
    "SnapshotSource",
    "Snapshottable",
    "StateMachine",
    "StateMachineContext",
    "UnknownOperationError",
    "handler",
]

OpT = TypeVar("OpT", covariant=True)
_F = TypeVar("_F", bound=Callable[..., Any])

_HANDLER_ATTR = "__copycat_operations__"


@attrs.frozen
class Commit(Generic[OpT]):
    """An operation as the state machine sees it: with its log position and log time."""

    operation: OpT
    index: int
    """The log index of the command; for a query, the index the state machine was read at."""
    time: int
    """Log time in milliseconds, from the leader's timestamp: the same on every server."""
    session: ServerSession | None = None
    """The client session that submitted the operation (None for a query without one)."""


class ServerSession:
    """A client session as the state machine sees it: the same on every server.

    `publish` sends an event to the session's client: delivered in order and exactly once, after
    the responses to commands before it and before the responses to commands after it.
    """

    def __init__(
        self,
        session_id: int,
        client: str,
        publisher: Callable[[int, str, Any], None],
        identity: str = "",
    ):
        self.id = session_id
        self.client = client
        self.identity = identity
        """Who opened the session: its certificate's common name or its token's name, ""
        for an anonymous client or a cluster without authentication (docs/security.md).
        Recorded in the log and in snapshots: the same on every server."""
        self.closed = False
        self._publisher = publisher

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"ServerSession({self.id}, client={self.client!r}, {state})"

    def publish(self, name: str, payload: Any = None) -> None:
        """Queue an event for this session's client (ignored once the session is closed)."""
        if not self.closed:
            self._publisher(self.id, name, payload)


class Scheduled:
    """A callback scheduled by log time; `cancel()` stops it (and its repeats).

    A Snapshottable state machine's timers are part of its replicated state: every snapshot
    holds them (due time, repeat interval, order, and the callback as a method name and its
    arguments) and installing one brings them back as they were, so every member fires the same
    callbacks at the same log times. `id` names a timer the same way on every member and
    across snapshots; after an install `context.timers` holds the restored handles.
    """

    def __init__(
        self,
        timer_id: int = 0,
        due: int = 0,
        callback: Callable[..., None] | None = None,
        args: tuple[Any, ...] = (),
        interval_ms: int | None = None,
    ) -> None:
        self.id = timer_id
        self.due = due
        """The log time (ms) of its next firing."""
        self.callback = callback
        self.args = args
        """The arguments `callback` is called with (plain data, copied when scheduled)."""
        self.interval_ms = interval_ms
        self.cancelled = False

    def __repr__(self) -> str:
        name = getattr(self.callback, "__name__", repr(self.callback))
        state = " cancelled" if self.cancelled else ""
        every = f" every {self.interval_ms}ms" if self.interval_ms is not None else ""
        return f"Scheduled({self.id}, {name}{tuple(self.args)!r} at {self.due}{every}{state})"

    def cancel(self) -> None:
        """Stop the timer: it does not fire again (nor repeat), on any member."""
        self.cancelled = True


class SnapshotSink(Protocol):
    """Where a state machine writes its snapshot: a stream, never one object in memory."""

    def write(self, data: bytes) -> None:
        """Append raw bytes."""
        ...

    def write_object(self, value: Any) -> None:
        """Append one CBOR-encodable value (plain data or registered classes)."""
        ...


class SnapshotSource(Protocol):
    """Where a state machine reads its snapshot back, in the order it was written."""

    def read(self, size: int) -> bytes:
        """Up to `size` raw bytes; b"" at the end."""
        ...

    def read_object(self) -> Any:
        """The next value written with write_object."""
        ...


class Snapshottable:
    """Mix into a StateMachine to let the server snapshot it and compact the log.

    Both methods run in a worker thread while nothing is applied, so the state is consistent;
    they must not touch the event loop. `install` must discard all previous state. Scheduled
    callbacks are part of the snapshot, written and restored by the server, so `install` must
    not schedule anything: the pending timers are already back (in `context.timers`) when it
    runs, and `context.index` and `context.time` are the snapshot's. That is why a Snapshottable
    state machine schedules only its own methods, with plain-data arguments (see `schedule`).
    """

    def snapshot(self, writer: SnapshotSink) -> None:
        """Write the whole state to `writer` (not the timers: the server writes those)."""
        raise NotImplementedError

    def install(self, reader: SnapshotSource) -> None:
        """Replace the whole state with what `snapshot` wrote, read back from `reader`."""
        raise NotImplementedError


class StateMachineContext:
    """What the server tells the state machine: the index and log time being applied, the open
    sessions, and a scheduler that fires callbacks by log time, identically on every server."""

    index: int = 0
    time: int = 0

    @property
    def sessions(self) -> dict[int, ServerSession]:
        """The open sessions by id, the same on every server at the same index."""
        raise NotImplementedError

    def schedule(
        self,
        delay_ms: int,
        callback: Callable[..., None],
        *args: Any,
        interval_ms: int | None = None,
    ) -> Scheduled:
        """Run `callback(*args)` once log time has advanced by delay_ms (then every interval_ms).

        Timers due at the same log time fire in the order they were scheduled. For a
        Snapshottable state machine the timer goes into snapshots, so `callback` must be one of
        the state machine's own methods (`self.expire`) and `args` CBOR-encodable values; they
        are copied now, so the callback sees the same values on every member, snapshot or not.
        Anything else raises TypeError. Call it from handlers, listeners and callbacks, never
        from `install` (the timers are restored for it) or a query.
        """
        raise NotImplementedError

    @property
    def timers(self) -> tuple[Scheduled, ...]:
        """The pending timers, in the order they will fire."""
        raise NotImplementedError


class UnknownOperationError(errors.UnknownOperationError):
    """The state machine has no handler for an operation's type (nor for any of its parents);
    it reaches the client as UNKNOWN_OPERATION."""

    def __init__(self, operation_type: type[Any], state_machine: type[Any]) -> None:
        super().__init__(
            f"state machine {state_machine.__qualname__} has no handler for operation type "
            f"{operation_type.__module__}.{operation_type.__qualname__}"
        )
        self.operation_type = operation_type
        self.state_machine = state_machine

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.operation_type, self.state_machine))


def handler(*operation_types: type[Any]) -> Callable[[_F], _F]:
    """Mark a method as the handler for the given operation types, instead of an annotation.

    For code that does not annotate; the decorator wins over any annotation on the method.
    """
    if not operation_types:
        raise TypeError("@handler() needs at least one operation type, e.g. @handler(Put)")
    for op_type in operation_types:
        if not isinstance(op_type, type):
            raise TypeError(f"@handler() takes operation classes, not {op_type!r}")

    def mark(func: _F) -> _F:
        setattr(func, _HANDLER_ATTR, tuple(operation_types))
        return func

    return mark


class StateMachine:
    """Base class for replicated state machines: subclass it and write one method per operation.

    A handler takes one parameter annotated `Commit[Op]` (or is decorated `@handler(Op)`); an
    operation whose type has no handler goes to the handler of its nearest parent class.
    Subclasses inherit their parents' handlers and may override them.

    `apply` must be deterministic: the same commits in the same order must give the same state
    and results on every server. Handlers must not do I/O or read clocks or randomness; use
    `commit.time` (log time) for time. Exceptions propagate: the server reports them to the client
    as APPLICATION errors and goes on.
    """

    context: StateMachineContext
    """Set by the server before anything is applied."""

    _handlers: ClassVar[dict[type[Any], str]] = {}
    """Operation type -> name of the method handling it, for this class and its parents."""
    _resolved: ClassVar[dict[type[Any], str | None]] = {}
    """Cache of `_resolve`: operation type -> handler name, or None when nothing handles it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = _own_handlers(cls)
        table: dict[type[Any], str] = {}
        for base in reversed(cls.__bases__):
            if issubclass(base, StateMachine):
                table.update(base._handlers)
        own_types_by_name: dict[str, set[type[Any]]] = {}
        for op_type, name in own.items():
            own_types_by_name.setdefault(name, set()).add(op_type)
        # A method redefined here as a handler for other types no longer handles the old ones.
        for op_type, name in list(table.items()):
            if name in own_types_by_name and op_type not in own_types_by_name[name]:
                del table[op_type]
        table.update(own)
        cls._handlers = table
        cls._resolved = {}

    @classmethod
    def _resolve(cls, op_type: type[Any]) -> str | None:
        """The handler's name for an operation type, falling back along its MRO; cached."""
        try:
            return cls._resolved[op_type]
        except KeyError:
            pass
        name = next((cls._handlers[t] for t in op_type.__mro__ if t in cls._handlers), None)
        cls._resolved[op_type] = name
        return name

    @classmethod
    def handles(cls, op_type: type[Any]) -> bool:
        """Whether `apply` has a handler for operations of this type (its own or a parent's)."""
        return cls._resolve(op_type) is not None

    def on_register(self, session: ServerSession) -> None:
        """A client opened a session."""

    def on_unregister(self, session: ServerSession) -> None:
        """The client closed its session."""

    def on_expire(self, session: ServerSession) -> None:
        """The session expired: no keep-alive within its timeout (by log time)."""

    def on_close(self, session: ServerSession) -> None:
        """The session is gone, by unregister or expiry (called after either)."""

    def apply(self, commit: Commit[Any]) -> Any:
        """Apply one commit by calling the handler for its operation's type; return its result."""
        op_type = type(commit.operation)
        name = self._resolve(op_type)
        if name is None:
            raise UnknownOperationError(op_type, type(self))
        return getattr(self, name)(commit)


_BASE_NAMES = frozenset(vars(StateMachine))


def _own_handlers(cls: type[StateMachine]) -> dict[type[Any], str]:
    """The handlers defined in this class's own body, by operation type; rejects duplicates."""
    own: dict[type[Any], str] = {}
    for name, attr in vars(cls).items():
        if name in _BASE_NAMES or not isinstance(attr, types.FunctionType):
            continue  # properties, static/class methods, attributes, our own machinery
        op_types = _handled_types(cls, name, attr)
        if not op_types:
            continue
        if inspect.iscoroutinefunction(inspect.unwrap(attr)):
            raise TypeError(
                f"{cls.__qualname__}.{name} is async; state machine handlers must be plain "
                f"functions (deterministic, no I/O)"
            )
        for op_type in op_types:
            other = own.get(op_type)
            if other is not None:
                raise TypeError(
                    f"{cls.__qualname__} has two handlers for {op_type.__qualname__}: "
                    f"{other} and {name}"
                )
            own[op_type] = name
    return own


def _handled_types(cls: type[Any], name: str, func: types.FunctionType) -> tuple[type[Any], ...]:
    """The operation types a method handles: from @handler, else from its parameter annotation."""
    marked: tuple[type[Any], ...] | None = getattr(func, _HANDLER_ATTR, None)
    if marked is not None:
        return marked
    if name.startswith("_"):
        return ()
    params = list(inspect.signature(func).parameters.values())[1:]  # after self
    if not params or params[0].annotation is inspect.Parameter.empty:
        return ()
    hint = _resolve_annotation(cls, name, func, params[0].name, params[0].annotation)
    if hint is not Commit and typing.get_origin(hint) is not Commit:
        return ()
    where = f"{cls.__qualname__}.{name}"
    if any(p.default is inspect.Parameter.empty for p in params[1:]):
        raise TypeError(f"{where} is a handler, so it must take just one parameter (the commit)")
    args = typing.get_args(hint)
    op_types = _classes_in(args[0]) if args else None
    if not op_types:
        raise TypeError(
            f"{where}: annotate the commit with the operation class it handles, e.g. "
            f"Commit[Put] or Commit[Put | Delete] (Commit[object] catches all), not {hint!r}"
        )
    return op_types


def _resolve_annotation(
    cls: type[Any], name: str, func: types.FunctionType, param: str, raw: object
) -> object:
    """Evaluate one parameter's annotation in the method's module globals and the class body.

    Only this parameter is evaluated, so other annotations (say, names imported only under
    TYPE_CHECKING) do not matter. An unresolvable string that mentions Commit is an error;
    any other unresolvable annotation means the method is not a handler.
    """
    holder = types.SimpleNamespace(__annotations__={param: raw})
    globalns = inspect.unwrap(func).__globals__
    localns = dict(vars(cls))
    try:
        return typing.get_type_hints(holder, globalns, localns)[param]
    except Exception as exc:
        if isinstance(raw, str) and "Commit" in raw:
            raise TypeError(
                f"cannot resolve the annotation {raw!r} of {cls.__qualname__}.{name} ({exc}); "
                f"define the operation class at module level, or use @handler(...)"
            ) from exc
        return None


def _classes_in(arg: object) -> tuple[type[Any], ...] | None:
    """The classes in `Op` or `A | B | ...`; None if anything else (Any, a TypeVar, ...)."""
    if typing.get_origin(arg) in (typing.Union, types.UnionType):
        members = typing.get_args(arg)
    else:
        members = (arg,)
    if all(isinstance(m, type) and m not in (type(None), Any) for m in members):
        return tuple(typing.cast(type[Any], m) for m in members)
    return None
