"""Tagged CBOR: one tag table maps frozen attrs classes to CBOR tags and back.

A registered instance travels as ``CBORTag(tag, [field values in attrs order])``. Decoding builds
instances bottom-up through cbor2's ``semantic_decoders`` and checks every field against the class's
type hints, so bytes from the network only ever become plain values and registered classes: no
pickles, no datetimes or sets, no shared references (cycles), no unknown tags.

Classes evolve by appending fields with defaults, never by inserting, removing or reordering:
an array shorter than the class gives the missing trailing fields their defaults (an older
sender), and one longer than the class has its extra trailing values ignored (a newer sender).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import io
import itertools
import operator
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import attrs
import cbor2

from .errors import ConfigurationError, CopycatError, ProtocolError
from .messages import BUILTIN_TAGS, ENTRY_TYPES, USER_TAG_MIN

MAX_DEPTH = 64
"""Deepest nesting of arrays, maps and tags that decode accepts."""

_T = TypeVar("_T")
_NoneType = type(None)
_SCALARS: frozenset[type] = frozenset({_NoneType, bool, int, float, str, bytes})
_JUST_LISTS: set[type] = {list}
# Tags cbor2 decodes by itself. All are refused, except bignums (2, 3), which decode to plain ints.
_CBOR2_TAGS: tuple[int, ...] = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258)
_CBOR2_TAGS += (260, 261, 1004, 43000, 55799)
_RESERVED_TAGS = frozenset((2, 3, *_CBOR2_TAGS))


class _Mismatch(Exception):
    """A value does not fit a field's type; the plan turns it into a ProtocolError."""


@attrs.frozen
class _Check:
    """How to validate one annotation: types taken as they are, else a converting slow path."""

    fast: frozenset[type] | set[type]
    slow: Callable[[Any], Any] | None
    name: str
    has_any: bool = False
    """Whether values may hold user data (an `Any` somewhere), which encode must inspect."""


def _type_name(value: object) -> str:
    return type(value).__qualname__


class UnknownTagError(ProtocolError):
    """A message holds a tag this process has not registered (the sender knows more types)."""

    def __init__(self, tag: int) -> None:
        super().__init__(f"message contains unknown CBOR tag {tag}")
        self.tag = tag


def _unknown_tag(tag: cbor2.CBORTag, immutable: bool) -> Any:
    raise UnknownTagError(tag.tag)


def _make_refuse_tag(tag: int) -> Callable[[Any, bool], Any]:
    def refuse(value: Any, immutable: bool) -> Any:
        raise ProtocolError(f"message contains CBOR tag {tag}, which is not allowed")

    return refuse


def _to_float(value: Any) -> float:
    if type(value) is not int:
        raise _Mismatch
    try:
        return float(value)
    except OverflowError:
        raise _Mismatch("too large for a float") from None


def _field_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A fast function from an instance to the tuple of its field values."""
    if len(names) >= 2:
        return operator.attrgetter(*names)
    get_one = operator.attrgetter(*names) if names else None

    def getter(obj: Any) -> tuple[Any, ...]:
        return (get_one(obj),) if get_one is not None else ()

    return getter


def _copycat_cause(exc: BaseException) -> CopycatError | None:
    """Our own error raised inside a cbor2 callback, which cbor2 wraps in CBORDecodeError."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, CopycatError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


ENCODING_CACHE_SIZE = 16384
"""Log entries whose encodings are kept (see _EncodingCache): a few seconds' worth at full load."""


class _EncodingCache:
    """Encodings of log entries, kept by identity for the newest `capacity` of them: an entry is
    encoded once, when first measured or sent, and those bytes are spliced into every frame
    and storage record that carries it (to each peer, to disk). Entries are frozen, and a
    cached one is held alive, so its id cannot be reused while its bytes are here.

    An OrderedDict, so dropping the oldest costs the same however many were dropped before (a
    plain dict's first item is found by stepping over the holes its deletions left: about
    6 us per put here once full, against 0.3)."""

    __slots__ = ("_items", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[int, tuple[Any, bytes]] = collections.OrderedDict()

    def get(self, value: Any) -> bytes | None:
        item = self._items.get(id(value))
        return item[1] if item is not None and item[0] is value else None

    def put(self, value: Any, data: bytes) -> None:
        items = self._items
        items[id(value)] = (value, data)
        if len(items) > self.capacity:
            with contextlib.suppress(KeyError):  # another thread emptied it meanwhile
                items.popitem(last=False)  # the oldest

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class _Plan:
    """Precomputed encode and decode steps for one registered class."""

    __slots__ = (
        "aliases",
        "any_fields",
        "cached",
        "checks",
        "cls",
        "compiled",
        "getter",
        "pairs",
        "registry",
        "required",
        "tag",
    )

    def __init__(self, registry: TypeRegistry, cls: type, tag: int) -> None:
        fields = attrs.fields(cast(Any, cls))
        self.registry = registry
        self.cls = cls
        self.tag = tag
        self.aliases = tuple(f.alias for f in fields)
        self.required = max(
            (i + 1 for i, f in enumerate(fields) if f.default is attrs.NOTHING), default=0
        )
        """Fields an array must have: up to the last one without a default."""
        self.getter = _field_getter([f.name for f in fields])
        self.checks: tuple[_Check, ...] = ()
        self.pairs: tuple[tuple[str, frozenset[type] | set[type]], ...] = ()
        self.any_fields: tuple[int, ...] = ()
        self.compiled = False
        self.cached = False
        """Whether instances' encodings are kept (log entries: see _EncodingCache)."""

    def compile(self) -> None:
        """Resolve the type hints once (deferred to first use if a forward ref is unresolved)."""
        try:
            hints = typing.get_type_hints(self.cls)
        except NameError as exc:
            msg = f"cannot resolve the type hints of {self.cls.__qualname__}: {exc}"
            raise ConfigurationError(msg) from exc
        fields = attrs.fields(cast(Any, self.cls))
        checks = tuple(self.registry._compile_hint(hints[f.name]) for f in fields)
        self.pairs = tuple(zip(self.aliases, (c.fast for c in checks), strict=True))
        self.any_fields = tuple(i for i, check in enumerate(checks) if check.has_any)
        self.checks = checks
        self.compiled = True

    def encode(self, encoder: cbor2.CBOREncoder, obj: Any) -> None:
        if self.cached:
            cache = self.registry._encodings
            data = cache.get(obj)
            if data is None:
                data = self.encode_cached(obj)
            encoder.write(data)  # the same bytes encode_semantic would write
            return
        encoder.encode_semantic(self.tag, self._tree_values(obj))

    def encode_cached(self, obj: Any) -> bytes:
        """A cached class's instance encoded and kept (see _EncodingCache)."""
        data = cbor2.dumps(self.tree(obj), default=self.registry._encode_default)
        self.registry._encodings.put(obj, data)
        return data

    def tree(self, obj: Any) -> cbor2.CBORTag:
        """`obj` as a CBORTag, and so are the registered instances held directly in its fields
        (an entry's operation, a response's error), so that cbor2 writes them without calling
        back into Python: its fallback to `default` first tries isinstance against its own
        known types, about 1.5 us an object. Cached classes stay objects, to splice their bytes."""
        return cbor2.CBORTag(self.tag, self._tree_values(obj))

    def _tree_values(self, obj: Any) -> tuple[Any, ...] | list[Any]:
        values = self._checked_values(obj)
        plans = self.registry._plans
        tree: list[Any] | None = None
        for index, value in enumerate(values):
            if type(value) in _SCALARS:
                continue
            plan = plans.get(type(value))
            if plan is not None and not plan.cached:
                if tree is None:
                    tree = list(values)
                tree[index] = plan.tree(value)
        return values if tree is None else tree

    def _checked_values(self, obj: Any) -> tuple[Any, ...]:
        if not self.compiled:
            self.compile()
        values = self.getter(obj)
        for index in self.any_fields:
            value = values[index]
            if type(value) not in _SCALARS:
                self.registry._check_outgoing(
                    value, f"{self.cls.__qualname__}.{self.aliases[index]}"
                )
        return values

    def decode(self, item: Any, immutable: bool) -> Any:
        if not self.compiled:
            self.compile()
        pairs = self.pairs
        if type(item) is not list or len(item) != len(pairs):
            # Another version of the class: missing trailing fields take their defaults (an
            # older sender), extra trailing values are dropped (a newer sender's added fields).
            if type(item) is not list or len(item) < self.required:
                raise self._bad_shape(item)
            if len(item) < len(pairs):
                pairs = pairs[: len(item)]
            else:
                item = item[: len(pairs)]
        kwargs = {}
        for (alias, fast), value in zip(pairs, item, strict=True):
            kwargs[alias] = value if type(value) in fast else self._convert(alias, value)
        try:
            return self.cls(**kwargs)
        except Exception as exc:
            raise ProtocolError(f"{self.cls.__qualname__}: rejected its fields: {exc}") from exc

    def _bad_shape(self, item: Any) -> ProtocolError:
        name = self.cls.__qualname__
        if type(item) is not list:
            return ProtocolError(f"{name}: expected an array of fields, got {_type_name(item)}")
        missing = self.aliases[len(item)]
        count = f"expected {len(self.aliases)} fields, got {len(item)}"
        msg = f"{name}: {count}; {missing} has no default"
        return ProtocolError(msg)

    def _convert(self, alias: str, value: Any) -> Any:
        """The slow path for one field: convert (enum, tuple, float, Any) or reject it."""
        check = self.checks[self.aliases.index(alias)]
        try:
            if check.slow is None:
                raise _Mismatch
            return check.slow(value)
        except _Mismatch as exc:
            detail = f" ({exc})" if str(exc) else ""
            msg = f"{self.cls.__qualname__}.{alias}: expected {check.name}"
            raise ProtocolError(f"{msg}, got {_type_name(value)}{detail}") from None


class TypeRegistry:
    """The tag table: registered attrs classes to CBOR tags and back, with encode and decode."""

    def __init__(self, *, builtins: bool = False, cache_entries: bool = True) -> None:
        """`builtins`: register the library's messages; `cache_entries`: keep log entries'
        encodings to splice into every frame and record that carries them (see
        _EncodingCache; the bytes are the same either way)."""
        self._encodings = _EncodingCache(ENCODING_CACHE_SIZE)
        self._tags: dict[type, int] = {}
        self._plans: dict[type, _Plan] = {}
        self._classes: dict[int, type] = {}
        self._any_fast: set[type] = set(_SCALARS)
        self._decoders: dict[int, Callable[[Any, bool], Any]] = {
            tag: _make_refuse_tag(tag) for tag in _CBOR2_TAGS
        }
        if builtins:
            for cls, tag in BUILTIN_TAGS.items():
                self.register(cls, tag, builtin=True)
            for cls in ENTRY_TYPES:
                self._plans[cls].cached = cache_entries

    @property
    def tags(self) -> Mapping[type, int]:
        """Every registered class and its tag (read-only view)."""
        return types.MappingProxyType(self._tags)

    def register(self, cls: type[_T], tag: int, *, builtin: bool = False) -> type[_T]:
        """Give `cls` the wire tag `tag`; returns `cls`. Tags are forever: never renumber."""
        if not isinstance(cls, type) or not attrs.has(cast(type, cls)):
            raise ConfigurationError(f"{cls!r} is not an attrs class; only attrs classes register")
        name = cls.__qualname__
        if type(tag) is not int or not 0 <= tag < 2**64:
            raise ConfigurationError(f"tag {tag!r} for {name} is not an integer in [0, 2**64)")
        if not builtin and tag < USER_TAG_MIN:
            msg = f"tag {tag} for {name} is reserved for the library; user tags start at"
            raise ConfigurationError(f"{msg} {USER_TAG_MIN}")
        if tag in _RESERVED_TAGS:
            raise ConfigurationError(f"tag {tag} for {name} is a standard CBOR tag; pick another")
        if tag in self._classes:
            other = self._classes[tag].__qualname__
            raise ConfigurationError(f"tag {tag} for {name} is already registered to {other}")
        if cls in self._tags:
            raise ConfigurationError(f"{name} is already registered with tag {self._tags[cls]}")
        for field in attrs.fields(cast(Any, cls)):
            if not field.init:
                raise ConfigurationError(f"{name}.{field.name} has init=False; it cannot decode")
        plan = _Plan(self, cls, tag)
        try:
            plan.compile()
        except ConfigurationError as exc:
            if not isinstance(exc.__cause__, NameError):
                raise
            # A forward reference to a class not defined yet: compile on first use.
        self._tags[cls] = tag
        self._classes[tag] = cls
        self._plans[cls] = plan
        self._any_fast.add(cls)
        self._decoders[tag] = plan.decode
        return cls

    def encode(self, obj: Any) -> bytes:
        """CBOR bytes for `obj`: registered instances and plain values, nested as you like."""
        try:
            plan = self._plans.get(type(obj))
            if plan is not None:
                if not plan.cached:
                    return cbor2.dumps(plan.tree(obj), default=self._encode_default)
                return self._encodings.get(obj) or plan.encode_cached(obj)
            if type(obj) not in _SCALARS:
                self._check_outgoing(obj, "the message")
            return cbor2.dumps(obj, default=self._encode_default)
        except CopycatError:
            raise
        except (cbor2.CBORError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ProtocolError(f"cannot encode {_type_name(obj)}: {exc}") from exc

    def decode(self, data: bytes, unknown_tag: Callable[[int], Any] | None = None) -> Any:
        """The value encoded in `data`; raises ProtocolError for anything but one valid value.
        `unknown_tag`, if given, makes the value of each unregistered tag instead (its content
        is dropped) rather than refusing the message."""
        tag_hook = _unknown_tag
        if unknown_tag is not None:
            make = unknown_tag

            def tag_hook(tag: cbor2.CBORTag, immutable: bool) -> Any:
                return make(tag.tag)

        try:
            decoder = cbor2.CBORDecoder(
                io.BytesIO(data),
                tag_hook=tag_hook,
                semantic_decoders=self._decoders,
                max_depth=MAX_DEPTH,
                allow_indefinite=False,
                allow_duplicate_keys=False,
                strict_hashable_types=True,
            )
            value = decoder.decode()
            try:
                decoder.read(1)
            except cbor2.CBORDecodeEOF:
                pass
            else:
                raise ProtocolError("trailing bytes after the message")
            if type(value) not in _SCALARS:
                self._check_any(value)
            return value
        except CopycatError:
            raise
        except _Mismatch as exc:
            raise ProtocolError(f"message contains a value that is not allowed: {exc}") from None
        except Exception as exc:
            cause = _copycat_cause(exc)
            if cause is not None:
                raise cause from None
            raise ProtocolError(f"malformed CBOR: {exc}") from exc

    def _encode_default(self, encoder: cbor2.CBOREncoder, value: Any) -> None:
        plan = self._plans.get(type(value))
        if plan is not None:
            plan.encode(encoder, value)
        elif attrs.has(type(value)):
            msg = f"cannot encode {_type_name(value)}: register it with @register(tag)"
            raise ProtocolError(msg)
        else:
            raise ProtocolError(f"cannot encode {_type_name(value)}: not a plain CBOR value")

    def _check_outgoing(self, value: Any, where: str, depth: int = 1) -> None:
        """Refuse, before sending, what decode would refuse: sets, datetimes, int map keys..."""
        kind = type(value)
        if kind in _SCALARS or kind in self._tags:
            return
        if depth > MAX_DEPTH:
            raise ProtocolError(f"cannot encode {where}: nested deeper than {MAX_DEPTH}")
        if isinstance(value, list | tuple):
            for item in value:
                if type(item) not in _SCALARS:
                    self._check_outgoing(item, where, depth + 1)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str | bytes):
                    msg = f"cannot encode {where}: map keys must be str or bytes, not"
                    raise ProtocolError(f"{msg} {_type_name(key)}")
                if type(item) not in _SCALARS:
                    self._check_outgoing(item, where, depth + 1)
        elif attrs.has(kind):
            msg = f"cannot encode {where}: {_type_name(value)}: register it with @register(tag)"
            raise ProtocolError(msg)
        elif not isinstance(value, str | bytes | int | float | bytearray):
            msg = f"cannot encode {where}: {_type_name(value)} is not a plain value"
            raise ProtocolError(f"{msg} or a registered class")

    def _check_any(self, value: Any) -> Any:
        """Accept decoded plain values (lists, str/bytes-keyed dicts) and registered instances.

        Level by level rather than by recursion: the types of all the values one level down are
        collected in one pass (a set of `type` over them, which runs in C), and only the lists
        and dicts among them are looked into next, so a snapshot chunk of a thousand rows costs
        a few passes, not a Python call per row."""
        kind = type(value)
        if kind is not list and kind is not dict:
            if kind not in self._tags and kind not in _SCALARS:
                raise _Mismatch(f"{kind.__qualname__} is not a plain value")
            return value
        lists: list[Any] = [value] if kind is list else []
        dicts: list[Any] = [value] if kind is dict else []
        chain = itertools.chain.from_iterable
        while lists or dicts:
            items = [*chain(lists), *chain(map(dict.values, dicts))]
            kinds = set(map(type, items))
            unusual = kinds - _SCALARS
            for other in unusual:
                if other is not list and other is not dict and other not in self._tags:
                    raise _Mismatch(f"{other.__qualname__} is not a plain value")
            if kinds == _JUST_LISTS:
                lists, dicts = items, []  # rows of a table: no filtering needed
                continue
            lists = [i for i in items if type(i) is list] if list in unusual else []
            dicts = [i for i in items if type(i) is dict] if dict in unusual else []
        return value

    def _compile_hint(self, hint: Any) -> _Check:
        if hint is Any or hint is object:
            return _Check(self._any_fast, self._check_any, "any plain value", has_any=True)
        if hint in (int, bool, str, bytes, _NoneType):
            return _Check(frozenset({hint}), None, "None" if hint is _NoneType else hint.__name__)
        if hint is float:
            return _Check(frozenset({float}), _to_float, "float")
        origin = typing.get_origin(hint)
        if origin is typing.Union or origin is types.UnionType:
            return _union([self._compile_hint(arm) for arm in typing.get_args(hint)])
        if origin is tuple:
            args = typing.get_args(hint)
            if len(args) == 2 and args[1] is Ellipsis:
                return _tuple_of(self._compile_hint(args[0]))
        if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
            return _int_enum(hint)
        if isinstance(hint, type) and origin is None and hint.__module__ != "builtins":
            return _instance_of(hint, self._tags)
        raise ConfigurationError(f"cannot decode the annotation {hint!r}")


def _union(arms: list[_Check]) -> _Check:
    has_any = any(arm.has_any for arm in arms)
    fast: frozenset[type] | set[type]
    if has_any:  # Any absorbs the other arms, and its fast set grows as classes register
        return next(arm for arm in arms if arm.has_any)
    fast = frozenset().union(*(arm.fast for arm in arms))
    slows = [arm.slow for arm in arms if arm.slow is not None]
    name = " | ".join(arm.name for arm in arms)

    def slow(value: Any) -> Any:
        for convert in slows:
            try:
                return convert(value)
            except _Mismatch:
                pass
        raise _Mismatch

    return _Check(fast, slow if slows else None, name)


def _tuple_of(item: _Check) -> _Check:
    fast, convert = item.fast, item.slow

    def slow(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _Mismatch
        if convert is None:
            for index, element in enumerate(value):
                if type(element) not in fast:
                    raise _Mismatch(f"item {index} is {_type_name(element)}")
            return tuple(value)
        result = []
        for index, element in enumerate(value):
            if type(element) in fast:
                result.append(element)
                continue
            try:
                result.append(convert(element))
            except _Mismatch:
                raise _Mismatch(f"item {index} is {_type_name(element)}") from None
        return tuple(result)

    return _Check(frozenset(), slow, f"tuple[{item.name}, ...]", has_any=item.has_any)


def _int_enum(cls: type[enum.IntEnum]) -> _Check:
    members = {member.value: member for member in cls}

    def slow(value: Any) -> enum.IntEnum:
        if type(value) is not int:
            raise _Mismatch
        try:
            return members[value]
        except KeyError:
            raise _Mismatch(f"{value} is not a {cls.__qualname__}") from None

    return _Check(frozenset(), slow, cls.__qualname__)


def _instance_of(cls: type, registered: Mapping[type, int]) -> _Check:
    """A registered class, or a base class (say an Operation) of registered classes."""

    def slow(value: Any) -> Any:
        if isinstance(value, cls) and type(value) in registered:
            return value
        raise _Mismatch

    return _Check(frozenset({cls}), slow, cls.__qualname__)


registry = TypeRegistry(builtins=True)
"""The default registry: every library message, plus the operations users register."""


def register(tag: int) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: register a user operation (an attrs class) on the default registry."""

    def decorate(cls: type[_T]) -> type[_T]:
        return registry.register(cls, tag)

    return decorate


def encode(obj: Any) -> bytes:
    """`registry.encode(obj)` on the default registry."""
    return registry.encode(obj)


def decode(data: bytes) -> Any:
    """`registry.decode(data)` on the default registry."""
    return registry.decode(data)
