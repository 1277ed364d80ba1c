"""Values that travel as arrays of their fields: a field's kind says how it is encoded and checked.

A record class lists its fields in encoding order, each declared with ``wire(kind)``; ``to_obj``
lays them out as a msgpack array and ``decode_items`` checks each one, raising ``DecodeError``
naming the first field that is wrong. State records (``state.Task``) and the wire messages
(``mpsnode.node.messages``) are written this way, as events are encoded from their fields, so no
record is indexed by hand on either side.

Kinds: ``UINT`` (u64), ``FLAG`` (0/1 as bool), ``BLOB`` (bin), ``HASH`` (bin of 32: hashes and
addresses), ``TEXT`` (str, may be empty), ``NAME`` (non-empty str), ``RAW`` (any canonical object,
decoded by its owner), ``list_of(kind)`` (a tuple), ``pair(a, b)`` (a 2-tuple), ``enum_of(E)`` (an
IntEnum) and ``record(cls)`` (a nested record). Two trailing layouts: ``optional=True`` (sent only
when not None) and ``inline=cls`` (a tuple of records laid out field by field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import IntEnum
from typing import Any, Self

from mpsnode.consensus.encoding import U64_MAX, expect_bytes, expect_list, expect_str, expect_uint
from mpsnode.consensus.errors import DecodeError

MAX_TEXT = 4000  # characters of a str field


@dataclass(frozen=True, slots=True)
class Kind:
    """How one field travels: ``encode`` a value to its msgpack object, ``decode`` it back (checked)."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]


def _same(value: Any) -> Any:
    return value


UINT = Kind(_same, lambda obj, what: expect_uint(obj, what, U64_MAX))
FLAG = Kind(int, lambda obj, what: bool(expect_uint(obj, what, 1)))
BLOB = Kind(_same, lambda obj, what: expect_bytes(obj, what))
HASH = Kind(_same, lambda obj, what: expect_bytes(obj, what, 32))
TEXT = Kind(_same, lambda obj, what: _text(obj, what))
RAW = Kind(_same, lambda obj, what: obj)  # a canonical object decoded by its owner (a proof)


def _text(obj: Any, what: str) -> str:
    if type(obj) is not str:
        raise DecodeError(f"{what}: expected str")
    if len(obj) > MAX_TEXT:
        raise DecodeError(f"{what}: longer than {MAX_TEXT} characters")
    return obj


def _nonempty_text(obj: Any, what: str) -> str:
    return expect_str(obj, what, MAX_TEXT)


NAME = Kind(_same, _nonempty_text)


def list_of(kind: Kind) -> Kind:
    """A field holding a tuple of ``kind`` values, encoded as an array."""
    return Kind(
        lambda values: [kind.encode(v) for v in values],
        lambda obj, what: tuple(kind.decode(v, what) for v in expect_list(obj, None, what)),
    )


def pair(first: Kind, second: Kind) -> Kind:
    """A field holding a 2-tuple ``(first, second)``, encoded as a 2-array."""

    def decode(obj: Any, what: str) -> tuple[Any, Any]:
        a, b = expect_list(obj, 2, what)
        return first.decode(a, what), second.decode(b, what)

    return Kind(lambda value: [first.encode(value[0]), second.encode(value[1])], decode)


class NamedCode(IntEnum):
    """A code carried as an integer on the wire and shown by name to people and in JSON."""

    @classmethod
    def describe(cls, code: int) -> str:
        """The code's name in lower case (``krum_score``, ``nnm_multi_krum``), or the code itself."""
        try:
            return cls(code).name.lower()
        except ValueError:
            return str(code)


def enum_of(enum: type[IntEnum]) -> Kind:
    """A field holding a member of ``enum``, encoded as its int; an unknown value is a ``DecodeError``."""

    def decode(obj: Any, what: str) -> IntEnum:
        value = expect_uint(obj, what)
        try:
            return enum(value)
        except ValueError:
            raise DecodeError(f"{what}: {value} is not a {enum.__name__}") from None

    return Kind(int, decode)


def record(cls: type[Record]) -> Kind:
    """A field holding a nested ``cls`` record, encoded as its array."""
    return Kind(
        lambda value: value.to_obj(), lambda obj, what: cls.decode_items(expect_list(obj, None, what), what)
    )


def wire(
    kind: Kind | None = None,
    default: Any = MISSING,
    *,
    optional: bool = False,
    inline: type[Record] | None = None,
) -> Any:
    """A dataclass field of ``kind``. ``optional``: a trailing field, sent only when not None.
    ``inline``: a trailing tuple of these records, laid out field by field after the others."""
    metadata = {"wire": kind, "optional": optional, "inline": inline}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Records and messages


# A record class's fields as (name, kind, optional, inline), in declaration order: read once per
# class, since ``dataclasses.fields`` builds its tuple anew on every call (most of a small record's
# encoding, and every reply the sequencer sends is one).
_Layout = tuple[tuple[str, Kind, bool, "type[Record] | None"], ...]
_LAYOUTS: dict[type, _Layout] = {}


def _layout(cls: type) -> _Layout:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = tuple(
            (f.name, f.metadata["wire"], f.metadata["optional"], f.metadata["inline"]) for f in fields(cls)
        )
        _LAYOUTS[cls] = layout
    return layout


@dataclass(frozen=True, slots=True)
class Record:
    """A value that travels as an array of its fields, in declaration order."""

    def to_obj(self) -> list[Any]:
        """The record as the array of its fields (``optional`` ones left out when None, ``inline`` ones
        spread)."""
        out: list[Any] = []
        for name, kind, optional, inline in _layout(type(self)):
            value = getattr(self, name)
            if optional and value is None:
                continue
            if inline is not None:
                out.extend(item for v in value for item in v.to_obj())
                continue
            out.append(kind.encode(value))
        return out

    @classmethod
    def decode_items(cls, items: list[Any], name: str) -> Self:
        """From the array of its fields; ``DecodeError`` naming the first field that is wrong."""
        values: dict[str, Any] = {}
        at = 0
        for field_name, kind, optional, inline in _layout(cls):
            if inline is not None:
                values[field_name] = _inline(inline, items[at:], field_name)
                at = len(items)
                continue
            if at >= len(items):
                if optional:
                    values[field_name] = None
                    continue
                raise DecodeError(f"{field_name}: missing ({len(items)} fields)")
            values[field_name] = kind.decode(items[at], field_name)
            at += 1
        if at != len(items):
            raise DecodeError(f"{len(items)} fields, expected {at}")
        return cls(**values)


def _inline(cls: type[Record], items: list[Any], what: str) -> tuple[Any, ...]:
    """Records of ``cls`` laid out one after another, field by field."""
    width = len(_layout(cls))
    if len(items) % width:
        raise DecodeError(f"{what}: {len(items)} fields is not a whole number of {width}-field entries")
    return tuple(cls.decode_items(items[i : i + width], what) for i in range(0, len(items), width))
