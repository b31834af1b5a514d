"""Hypothesis strategies for protobuf messages, built by walking their descriptors.

Every field gets a strategy from its type: integers over the type's whole range (with its
extremes and the values around zero drawn often), floats with NaN and infinities, text with
control characters (never lone surrogates, which no protobuf string can hold), bytes, enums
(known and unknown numbers), nested messages, repeated fields and maps of bounded length.
Fields with presence (proto3 ``optional``) are sometimes left unset, and a real oneof gets one
of its members or none. ``overrides`` replaces the strategy of a field, by its full name
(``llamagrid.v1.SamplingParams.max_tokens``), where a test needs values of a certain kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor
M = TypeVar("M", bound=Message)
Strategy = st.SearchStrategy[Any]

#: The range of each integer type.
INT_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys((F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((F.TYPE_UINT32, F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((F.TYPE_UINT64, F.TYPE_FIXED64), (0, 2**64 - 1)),
}

#: Text as a hostile client writes it: any code point but a surrogate (control characters, NUL,
#: bidirectional overrides and astral planes included), or one of a few strings that mean
#: something to a tokenizer or a chat template.
TEXT: st.SearchStrategy[str] = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=24),
    st.sampled_from(
        ["", "\x00", "\u202e", "\ufeff", "<|im_start|>", "<|im_end|>", "{{ x }}", "\r\n\t"]
    ),
)


def integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Any integer in [lo, hi], with the extremes and the values around zero drawn often."""
    edges = sorted({lo, hi, *(v for v in (-1, 0, 1, 2) if lo <= v <= hi)})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def scalar(field: FieldDescriptor) -> Strategy:
    """A strategy for one value of a scalar or enum field."""
    kind = field.type
    if kind in INT_RANGES:
        return integers(*INT_RANGES[kind])
    if kind == F.TYPE_FLOAT:
        return st.floats(width=32)  # NaN, infinities, subnormals and extremes included
    if kind == F.TYPE_DOUBLE:
        return st.floats()
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_STRING:
        return TEXT
    if kind == F.TYPE_BYTES:
        return st.binary(max_size=32)
    if kind == F.TYPE_ENUM:
        assert field.enum_type is not None
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), integers(-(2**31), 2**31 - 1))
    raise TypeError(f"{field.full_name}: no strategy for field type {kind}")


def _message_type(field: FieldDescriptor) -> Descriptor:
    """The type of a message field."""
    descriptor = field.message_type
    assert descriptor is not None, field.full_name
    return descriptor


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    """The key-value entry type of a map field; None for any other field."""
    if field.type != F.TYPE_MESSAGE:
        return None
    entry = _message_type(field)
    return entry if entry.GetOptions().map_entry else None


def _synthetic(oneof: OneofDescriptor) -> bool:
    """Whether a oneof only gives a proto3 ``optional`` field its presence."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    entry = _map_entry(field)
    if entry is not None:
        value_field = entry.fields_by_name["value"]
        for key, item in value.items():
            if value_field.type == F.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated and field.type == F.TYPE_MESSAGE:
        for item in value:
            target.add().CopyFrom(item)
    elif field.is_repeated:
        target.extend(value)
    elif field.type == F.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


class MessageStrategies:
    """Strategies for protobuf messages, with per-field overrides."""

    def __init__(
        self,
        overrides: Mapping[str, Strategy] | None = None,
        *,
        max_repeated: int = 4,
        max_depth: int = 4,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.max_repeated = max_repeated
        self.max_depth = max_depth

    def of(self, cls: type[M]) -> st.SearchStrategy[M]:
        """Messages of class ``cls``."""
        descriptor = cls.DESCRIPTOR
        assert isinstance(descriptor, Descriptor)
        strategy: st.SearchStrategy[M] = self._message(descriptor, self.max_depth)
        return strategy

    def _message(self, descriptor: Descriptor, depth: int) -> Strategy:
        plain: dict[str, Strategy] = {}
        oneofs: list[Strategy] = []
        for oneof in descriptor.oneofs:
            if not _synthetic(oneof):
                members = [st.tuples(st.just(f), self._field(f, depth)) for f in oneof.fields]
                oneofs.append(st.one_of(st.none(), *members))
        for field in descriptor.fields:
            container = field.containing_oneof
            if container is None or _synthetic(container):
                plain[field.name] = self._field(field, depth)
        cls = message_factory.GetMessageClass(descriptor)

        def build(
            values: dict[str, Any], chosen: tuple[tuple[FieldDescriptor, Any] | None, ...]
        ) -> Any:
            message = cls()
            for name, value in values.items():
                _set(message, descriptor.fields_by_name[name], value)
            for pair in chosen:
                if pair is not None:
                    _set(message, *pair)
            return message

        return st.builds(build, st.fixed_dictionaries({}, optional=plain), st.tuples(*oneofs))

    def _field(self, field: FieldDescriptor, depth: int) -> Strategy:
        override = self.overrides.get(field.full_name)
        if override is not None:
            return override
        entry = _map_entry(field)
        if entry is not None:
            return st.dictionaries(
                self._single(entry.fields_by_name["key"], depth),
                self._single(entry.fields_by_name["value"], depth),
                max_size=self.max_repeated,
            )
        if field.is_repeated:
            return st.lists(self._single(field, depth), max_size=self.max_repeated)
        return self._single(field, depth)

    def _single(self, field: FieldDescriptor, depth: int) -> Strategy:
        """One value of the field (one element, for a repeated field)."""
        if field.type != F.TYPE_MESSAGE:
            return scalar(field)
        descriptor = _message_type(field)
        if depth <= 0:  # as deep as allowed: the nested message is left empty
            return st.just(message_factory.GetMessageClass(descriptor)())
        return self._message(descriptor, depth - 1)
