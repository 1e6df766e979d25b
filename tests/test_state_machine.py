"""StateMachine dispatch: by annotation, by @handler, along the operation's MRO, and inheritance.

This module uses `from __future__ import annotations` on purpose: every handler annotation below
is a string that StateMachine must resolve in the module's globals.
"""

from __future__ import annotations

import pickle
import textwrap
import types
from typing import Any

import attrs
import pytest

from copycat_trio.protocol.errors import ApplicationError, ErrorType
from copycat_trio.protocol.operations import Command, Query
from copycat_trio.state_machine import Commit, StateMachine, UnknownOperationError, handler


def commit(operation: object, index: int = 1, time: int = 0) -> Commit[Any]:
    return Commit(operation, index=index, time=time)


@attrs.frozen
class Incr(Command):
    by: int = 1


@attrs.frozen
class Read(Query):
    pass


@attrs.frozen
class Unknown(Command):
    pass


class Counter(StateMachine):
    def __init__(self) -> None:
        self.value = 0
        self.seen: list[tuple[int, int]] = []

    def incr(self, commit: Commit[Incr]) -> int:
        self.value += commit.operation.by
        self.seen.append((commit.index, commit.time))
        return self.value

    def read(self, commit: Commit[Read]) -> int:
        return self.value


def test_annotations_are_strings_here() -> None:
    assert isinstance(Counter.incr.__annotations__["commit"], str)


def test_dispatch_by_annotation() -> None:
    counter = Counter()
    assert counter.apply(commit(Incr(2), index=5, time=1000)) == 2
    assert counter.apply(commit(Incr(3), index=6, time=1001)) == 5
    assert counter.apply(commit(Read(), index=6)) == 5
    assert counter.seen == [(5, 1000), (6, 1001)]


def test_commit_fields() -> None:
    c = Commit(Incr(), index=3, time=42)
    assert (c.operation, c.index, c.time, c.session) == (Incr(), 3, 42, None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.index = 4  # type: ignore[misc]


def test_handles() -> None:
    assert Counter.handles(Incr)
    assert Counter.handles(Read)
    assert not Counter.handles(Unknown)
    assert not StateMachine.handles(Incr)


def test_unknown_operation() -> None:
    with pytest.raises(UnknownOperationError) as info:
        Counter().apply(commit(Unknown()))
    err = info.value
    assert isinstance(err, ApplicationError)
    assert err.error_type is ErrorType.UNKNOWN_OPERATION  # still an ApplicationError to catch
    assert "Counter" in err.message
    assert "tests.test_state_machine.Unknown" in err.message
    assert (err.operation_type, err.state_machine) == (Unknown, Counter)
    assert pickle.loads(pickle.dumps(err)).message == err.message


def test_handler_exceptions_propagate_unwrapped() -> None:
    class Failing(StateMachine):
        def incr(self, commit: Commit[Incr]) -> None:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        Failing().apply(commit(Incr()))


# --- MRO fallback ------------------------------------------------------------------------------


@attrs.frozen
class Shape(Command):
    pass


@attrs.frozen
class Circle(Shape):
    pass


@attrs.frozen
class Square(Shape):
    pass


@attrs.frozen
class BigSquare(Square):
    pass


class Shapes(StateMachine):
    def any_shape(self, commit: Commit[Shape]) -> str:
        return f"shape {type(commit.operation).__name__}"

    def square(self, commit: Commit[Square]) -> str:
        return "square"


def test_fallback_to_parent_operation_class() -> None:
    shapes = Shapes()
    assert shapes.apply(commit(Shape())) == "shape Shape"
    assert shapes.apply(commit(Circle())) == "shape Circle"
    assert shapes.apply(commit(Circle())) == "shape Circle"  # now from the cache
    assert Shapes._resolved[Circle] == "any_shape"


def test_fallback_prefers_nearest_parent() -> None:
    assert Shapes().apply(commit(BigSquare())) == "square"
    assert Shapes.handles(BigSquare)


def test_catch_all_handler_for_object() -> None:
    class Anything(StateMachine):
        def anything(self, commit: Commit[object]) -> str:
            return "caught"

        def incr(self, commit: Commit[Incr]) -> str:
            return "incr"

    assert Anything().apply(commit(Unknown())) == "caught"
    assert Anything().apply(commit(Incr())) == "incr"


def test_union_annotation_registers_each_member() -> None:
    class Both(StateMachine):
        def both(self, commit: Commit[Incr | Read]) -> str:
            return type(commit.operation).__name__

    assert Both().apply(commit(Incr())) == "Incr"
    assert Both().apply(commit(Read())) == "Read"


# --- errors at class creation --------------------------------------------------------------


def test_duplicate_handler_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="two handlers for Incr: incr and increment"):

        class Twice(StateMachine):
            def incr(self, commit: Commit[Incr]) -> None:
                pass

            def increment(self, commit: Commit[Incr]) -> None:
                pass


def test_duplicate_between_annotation_and_decorator() -> None:
    with pytest.raises(TypeError, match="incr and other"):

        class Twice(StateMachine):
            def incr(self, commit: Commit[Incr]) -> None:
                pass

            @handler(Read, Incr)
            def other(self, commit: Any) -> None:
                pass


def test_unresolvable_commit_annotation() -> None:
    with pytest.raises(TypeError, match=r"Broken\.op.*Nowhere.*@handler"):

        class Broken(StateMachine):
            def op(self, commit: Commit[Nowhere]) -> None:  # type: ignore[name-defined]  # noqa: F821
                pass


@pytest.mark.parametrize("annotation", ["Commit[Any]", "Commit", "Commit[Incr | None]"])
def test_commit_without_an_operation_class(annotation: str) -> None:
    def op(self: object, commit: Any) -> None:
        pass

    op.__annotations__["commit"] = annotation
    with pytest.raises(TypeError, match=r"Vague\.op.*Commit\[Put\]"):
        type("Vague", (StateMachine,), {"op": op})


def test_handler_with_extra_required_parameter() -> None:
    with pytest.raises(TypeError, match="just one parameter"):

        class Greedy(StateMachine):
            def op(self, commit: Commit[Incr], extra: int) -> None:
                pass


def test_async_handler_is_rejected() -> None:
    with pytest.raises(TypeError, match="async"):

        class Sleepy(StateMachine):
            async def op(self, commit: Commit[Incr]) -> None:
                pass


def test_handler_decorator_needs_classes() -> None:
    with pytest.raises(TypeError, match="at least one"):
        handler()
    with pytest.raises(TypeError, match="operation classes"):
        handler("Put")  # type: ignore[arg-type]


# --- what is not a handler ------------------------------------------------------------------


class Tolerant(StateMachine):
    """Everything here but `incr` is ignored by dispatch."""

    def __init__(self) -> None:
        self._value = 0

    @property
    def value(self) -> int:
        return self._value

    def _private(self, commit: Commit[Read]) -> int:  # private: not a handler
        return -1

    def unannotated(self, commit):  # type: ignore[no-untyped-def]
        return -1

    def plain_helper(self, key: str) -> str:
        return key

    def no_parameters(self) -> None:
        pass

    def hint_not_importable(self, commit: NotImported) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    @staticmethod
    def static(commit: Commit[Read]) -> int:
        return -1

    @classmethod
    def klass(cls, commit: Commit[Read]) -> int:
        return -1

    constant = 3

    def incr(self, commit: Commit[Incr], scale: int = 1) -> int:
        self._value += commit.operation.by * scale
        return self._value


def test_non_handlers_are_tolerated() -> None:
    assert Tolerant._handlers == {Incr: "incr"}
    sm = Tolerant()
    assert sm.apply(commit(Incr(4))) == 4
    assert sm.value == 4
    with pytest.raises(UnknownOperationError):
        sm.apply(commit(Read()))


# --- inheritance ----------------------------------------------------------------------------


class LoudCounter(Counter):
    def incr(self, commit: Commit[Incr]) -> int:  # same name: overrides
        return super().incr(commit) * 100


class SplitCounter(Counter):
    def increment(self, commit: Commit[Incr]) -> str:  # other name, same type: replaces
        return "increment"


class PlainOverride(Counter):
    def incr(self, commit):  # type: ignore[no-untyped-def]  # plain override, no annotation
        return "plain"


class Repurposed(Counter):
    def incr(self, commit: Commit[Unknown]) -> str:  # type: ignore[override]  # repurposed
        return "unknown"


def test_subclass_inherits_handlers() -> None:
    loud = LoudCounter()
    assert loud.apply(commit(Read())) == 0
    assert LoudCounter.handles(Read)


def test_subclass_overrides_by_name() -> None:
    loud = LoudCounter()
    assert loud.apply(commit(Incr())) == 100
    assert loud.value == 1
    assert Counter().apply(commit(Incr())) == 1  # the parent is untouched


def test_subclass_replaces_handler_under_another_name() -> None:
    assert SplitCounter().apply(commit(Incr())) == "increment"
    assert Counter._handlers[Incr] == "incr"


def test_plain_override_keeps_the_registration() -> None:
    assert PlainOverride().apply(commit(Incr())) == "plain"


def test_redefined_name_drops_old_registration() -> None:
    sm = Repurposed()
    assert sm.apply(commit(Unknown())) == "unknown"
    assert not Repurposed.handles(Incr)
    assert sm.apply(commit(Read())) == 0


def test_multiple_inheritance_merges_handlers() -> None:
    class Both(Counter, Shapes):
        def __init__(self) -> None:
            Counter.__init__(self)

    both = Both()
    assert both.apply(commit(Incr())) == 1
    assert both.apply(commit(Circle())) == "shape Circle"


# --- decorator form -------------------------------------------------------------------------


class Decorated(StateMachine):
    def __init__(self) -> None:
        self.log: list[str] = []

    @handler(Incr)
    def bump(self, commit):  # type: ignore[no-untyped-def]
        self.log.append("bump")
        return len(self.log)

    @handler(Read, Unknown)
    def _either(self, commit):  # type: ignore[no-untyped-def]  # explicit, so private is fine
        return type(commit.operation).__name__


def test_decorator_form() -> None:
    sm = Decorated()
    assert sm.apply(commit(Incr())) == 1
    assert sm.apply(commit(Read())) == "Read"
    assert sm.apply(commit(Unknown())) == "Unknown"
    assert Decorated.handles(Incr)


def test_decorator_wins_over_annotation() -> None:
    class Mixed(StateMachine):
        @handler(Read)
        def op(self, commit: Commit[Incr]) -> str:
            return "read"

    assert Mixed._handlers == {Read: "op"}


# --- annotations that are real objects (no __future__ import) -------------------------------


def test_annotations_evaluated_at_definition_time() -> None:
    module = types.ModuleType("user_module_without_future")
    module.__dict__.update(Commit=Commit, StateMachine=StateMachine, Incr=Incr, Read=Read)
    source = textwrap.dedent(
        """
        class Eager(StateMachine):
            def incr(self, commit: Commit[Incr]) -> str:
                return "incr"

            def read(self, commit: Commit["Read"]) -> str:
                return "read"
        """
    )
    exec(compile(source, "<user>", "exec", dont_inherit=True), module.__dict__)
    eager = module.__dict__["Eager"]
    assert not isinstance(eager.incr.__annotations__["commit"], str)
    assert eager().apply(commit(Incr())) == "incr"
    assert eager().apply(commit(Read())) == "read"


# --- seed 002's MapStateMachine, to show the API is small -----------------------------------


@attrs.frozen
class PutCommand(Command):
    key: object
    value: object


@attrs.frozen
class GetQuery(Query):
    key: object


@attrs.frozen
class RemoveCommand(Command):
    key: object


class MapStateMachine(StateMachine):
    def __init__(self) -> None:
        self.map: dict[object, object] = {}

    def put(self, commit: Commit[PutCommand]) -> object:
        previous = self.map.get(commit.operation.key)
        self.map[commit.operation.key] = commit.operation.value
        return previous

    def get(self, commit: Commit[GetQuery]) -> object:
        return self.map.get(commit.operation.key)

    def remove(self, commit: Commit[RemoveCommand]) -> object:
        return self.map.pop(commit.operation.key, None)


def test_map_state_machine() -> None:
    sm = MapStateMachine()
    assert sm.apply(commit(PutCommand("foo", "Hello world!"), index=1)) is None
    assert sm.apply(commit(GetQuery("foo"), index=1)) == "Hello world!"
    assert sm.apply(commit(PutCommand("foo", "bye"), index=2)) == "Hello world!"
    assert sm.apply(commit(RemoveCommand("foo"), index=3)) == "bye"
    assert sm.apply(commit(GetQuery("foo"), index=3)) is None
