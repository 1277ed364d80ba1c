"""Canonical msgpack: the one byte form of every consensus value.

Values are arrays (fixed field order), non-negative or signed integers, ``bin`` for bytes and
``str`` only where a schema allows it (``chain_id``). Decoding caps every length, then rejects
maps, floats, booleans, nil, ext types and trailing bytes, and finally re-encodes the result:
input whose re-encoding differs (a non-minimal int, a str8 where a fixstr fits, ...) is not
canonical and is refused. So each value has exactly one accepted encoding, and hashes of
encodings are hashes of values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from mpsnode.consensus.errors import DecodeError

MAX_DEPTH = 16
U64_MAX = 2**64 - 1


def encode(obj: Any) -> bytes:
    """Canonical bytes of ``obj`` (lists, ints, bytes, str)."""
    return msgpack.packb(obj, use_bin_type=True, strict_types=True)


def array_header(n: int) -> bytes:
    """The canonical msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n <= 0xFFFF:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_array(items: Sequence[bytes]) -> bytes:
    """Canonical bytes of an array whose items' canonical bytes are ``items``: what ``encode`` gives
    for the list of their values, without encoding them again (the header, then them, one copy)."""
    return b"".join([array_header(len(items)), *items])


def decode(
    data: bytes,
    *,
    max_bytes: int,
    max_bin_len: int | None = None,
    max_array_len: int = 1 << 20,
    max_str_len: int = 256,
) -> Any:
    """Decode canonical msgpack or raise ``DecodeError`` with a reason (never anything else)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise DecodeError(f"{len(data)} bytes exceeds the limit of {max_bytes}")
    if not data:
        raise DecodeError("empty input")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            timestamp=0,
            max_bin_len=max_bin_len if max_bin_len is not None else len(data),
            max_str_len=max_str_len,
            max_array_len=max_array_len,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the value") from None
    except Exception as exc:  # noqa: BLE001 - the C unpacker raises several types; all mean "not msgpack"
        raise DecodeError(f"not valid msgpack: {type(exc).__name__}: {exc}") from None
    _check_types(obj)
    try:
        again = encode(obj)
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - _check_types admits only encodable values
        raise DecodeError(f"cannot re-encode: {exc}") from None
    if again != data:
        raise DecodeError("non-canonical encoding (re-encoding gives different bytes)")
    return obj


def _check_types(obj: Any) -> None:
    t = type(obj)
    if t is list:
        _check_list(obj, 0)
    elif t is not int and t is not bytes and t is not str:
        raise DecodeError(f"type {_msgpack_name(obj)} is not allowed")


def _check_list(items: list[Any], depth: int) -> None:
    """Every item an int, bytes, str or list of them, at most ``MAX_DEPTH`` lists deep; the last
    item first, depth first (so the first fault found is the same whichever way it is walked)."""
    if depth >= MAX_DEPTH:
        raise DecodeError(f"nesting deeper than {MAX_DEPTH}")
    for item in reversed(items):
        t = type(item)
        if t is list:
            _check_list(item, depth + 1)
        elif t is not int and t is not bytes and t is not str:
            raise DecodeError(f"type {_msgpack_name(item)} is not allowed")


def _msgpack_name(item: Any) -> str:
    if isinstance(item, bool):
        return "bool"
    if item is None:
        return "nil"
    if isinstance(item, float):
        return "float"
    if isinstance(item, dict):
        return "map"
    return type(item).__name__


# ---------------------------------------------------------------------------------------------
# Schema helpers: each raises DecodeError naming the field.


def expect_list(obj: Any, length: int | None, what: str) -> list[Any]:
    """``obj`` if it is an array (of ``length`` items when given); else ``DecodeError`` naming ``what``."""
    if type(obj) is not list:
        raise DecodeError(f"{what}: expected an array")
    if length is not None and len(obj) != length:
        raise DecodeError(f"{what}: expected {length} fields, got {len(obj)}")
    return obj


def expect_uint(obj: Any, what: str, max_value: int = U64_MAX) -> int:
    """``obj`` if it is an int in ``0..max_value``; else ``DecodeError`` naming ``what``."""
    if type(obj) is not int:
        raise DecodeError(f"{what}: expected an integer")
    if obj < 0 or obj > max_value:
        raise DecodeError(f"{what}: {obj} outside 0..{max_value}")
    return obj


def expect_bytes(obj: Any, what: str, length: int | None = None, max_len: int | None = None) -> bytes:
    """``obj`` if it is bin (of ``length`` bytes, or at most ``max_len``); else ``DecodeError``."""
    if type(obj) is not bytes:
        raise DecodeError(f"{what}: expected bin")
    if length is not None and len(obj) != length:
        raise DecodeError(f"{what}: expected {length} bytes, got {len(obj)}")
    if max_len is not None and len(obj) > max_len:
        raise DecodeError(f"{what}: {len(obj)} bytes exceeds {max_len}")
    return obj


def expect_str(obj: Any, what: str, max_len: int = 64) -> str:
    """``obj`` if it is a str of 1..``max_len`` characters; else ``DecodeError``."""
    if type(obj) is not str:
        raise DecodeError(f"{what}: expected str")
    if not obj or len(obj) > max_len:
        raise DecodeError(f"{what}: length must be 1..{max_len}")
    return obj


def u64be(n: int) -> bytes:
    """``n`` as 8 big-endian bytes (ids in state keys, so byte order is numeric order)."""
    return n.to_bytes(8, "big")
