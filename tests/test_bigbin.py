"""Large values built without a Packer (mesh.core.bigbin): the bytes and hashes are msgpack's."""

from __future__ import annotations

import msgpack
import pytest
import xxhash

from mesh.core import bigbin, wire
from mesh.core.counters import canonical
from mesh.core.digest import entry_digest
from mesh.core.mutation import Mutation, encode_records

#: every bin header boundary, and both sides of the parts path's threshold
SIZES = [0, 1, 255, 256, 65_535, 65_536, 65_537, 100_000, 1_000_000]


def value_of(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"v" * (size % 256)


@pytest.mark.parametrize("size", [*SIZES, 2**32 - 1])
def test_bin_header_is_msgpacks(size: int) -> None:
    header = bigbin.bin_header(size)
    if size <= 1_000_000:
        assert msgpack.packb(value_of(size)) == header + value_of(size)
    else:  # bin 32's largest, without allocating it
        assert header == b"\xc6\xff\xff\xff\xff"


def test_bin_header_refuses_4_gib() -> None:
    with pytest.raises(ValueError, match="4 GiB"):
        bigbin.bin_header(2**32)


@pytest.mark.parametrize("count", [1, 15, 16, 17, 300])
def test_array_header_is_msgpacks(count: int) -> None:
    assert msgpack.packb([None] * count) == bigbin.array_header(count) + b"\xc0" * count


@pytest.mark.parametrize("size", SIZES)
def test_joined_records_are_msgpacks(size: int) -> None:
    value = value_of(size)
    for before, after in [
        (("n1/abc", 1, 0, "k"), (0,)),
        (("nœud-7/2a", 2**40, 2**63 - 1, "clé:ü" * 40), (2**47,)),
        (("o" * 40, 127, 128, "k" * 300), (1,)),
    ]:
        assert bigbin.joined(before, value, after) == msgpack.packb([*before, value, *after])


def test_encode_records_matches_msgpack_for_every_kind_of_value() -> None:
    counter = canonical([5, "n1/a", 0, 3, [["n1/a", 2, 4]]])
    mutations = [
        Mutation("n1/a", seq, 2**50 + seq, f"key:{seq}", value, deadline)
        for seq, (value, deadline) in enumerate(
            [(value_of(s), 0) for s in SIZES]
            + [(None, 0), (counter, 0), (value_of(70_000), 1_700_000_000_000)]
        )
    ]
    assert encode_records(mutations) == [msgpack.packb(m) for m in mutations]
    plain = [tuple(m) for m in mutations]  # entries as peers' plain tuples
    assert encode_records(plain) == [msgpack.packb(m) for m in mutations]
    for record, m in zip(encode_records(mutations), mutations, strict=True):
        assert Mutation.from_record(msgpack.unpackb(record)) == m


@pytest.mark.parametrize("size", SIZES)
def test_encode_request_matches_msgpack(size: int) -> None:
    packer = msgpack.Packer(use_bin_type=True)
    value = value_of(size)
    for args in [("k", value), ("clé", value, {"ttl_ms": 5, "w": "quorum"}), (b"k", value)]:
        frame = wire.encode_request(2**40, "SET", *args)
        assert frame == wire.VERSION_BYTE + packer.pack([2**40, "SET", *args])


def test_encode_request_of_a_large_value_still_refuses_what_msgpack_cannot_carry() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.encode_request(-1, "SET", "k", value_of(100_000), {"ttl_ms": object()})


@pytest.mark.parametrize("size", SIZES)
def test_entry_digest_of_a_large_value_is_the_msgpack_hash(size: int) -> None:
    value = value_of(size)
    for key, hlc, origin, deadline in [(b"k", 1, "n1/a", 0), ("ü".encode() * 9, 2**60, "n2/b", 7)]:
        packed = msgpack.packb((key, value, hlc, origin, deadline))
        assert entry_digest(key, value, hlc, origin, deadline) == (
            xxhash.xxh3_64_intdigest(packed) or 1
        )
