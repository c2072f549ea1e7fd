"""Messages around one large msgpack ``bin`` value, built without packing the value.

A ``msgpack.Packer`` copies a value into its own buffer and then into the
``bytes`` it returns: two copies of each 1 MB value.  Records, request frames
and digest inputs that carry a large value are instead built as three parts,
the msgpack of everything before the value (its ``bin`` header included),
the value itself, and the msgpack of everything after it: joined once, or
hashed part by part.  The bytes are exactly the Packer's (``tests/test_bigbin.py``).
"""

from __future__ import annotations

from typing import Any

import msgpack

#: values of at least this many bytes take the parts path (below it a Packer is cheaper)
BIG_VALUE = 64 * 1024

_pack = msgpack.Packer().pack


def bin_header(size: int) -> bytes:
    """The msgpack ``bin`` header of a ``size``-byte value (bin 8, 16 or 32)."""
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 0x100000000:
        return b"\xc6" + size.to_bytes(4, "big")
    raise ValueError(f"a bin of {size} bytes is over msgpack's 4 GiB")


def array_header(count: int) -> bytes:
    """The msgpack array header of ``count`` items (fixarray up to 15, else array 16)."""
    if count < 16:
        return bytes((0x90 | count,))
    return b"\xdc" + count.to_bytes(2, "big")


def parts(before: tuple, value: bytes, after: tuple) -> tuple[bytes, bytes, bytes]:
    """The msgpack of the array ``[*before, value, *after]`` as (head, value, tail):
    their concatenation is ``msgpack.packb`` of it (``use_bin_type``, the default)."""
    head = [array_header(len(before) + 1 + len(after))]
    head += map(_pack, before)
    head.append(bin_header(len(value)))
    return b"".join(head), value, b"".join(map(_pack, after))


def joined(before: tuple, value: bytes, after: tuple) -> bytes:
    """:func:`parts` as one ``bytes`` (one copy of ``value``)."""
    return b"".join(parts(before, value, after))


def is_big(value: Any) -> bool:
    """Whether ``value`` is a ``bytes`` large enough for the parts path."""
    return type(value) is bytes and len(value) >= BIG_VALUE
