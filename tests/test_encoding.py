"""Canonical encoding: round trips for every type, and every way to be non-canonical refused."""

from __future__ import annotations

import contextlib
import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import genesis as genesis_tool
from mpsnode.consensus import crypto, encoding, hashing
from mpsnode.consensus.block import Block, Header, decode_block, sign_header
from mpsnode.consensus.encoding import decode, encode, encode_array
from mpsnode.consensus.errors import BlockDecodeError, DecodeError, InvalidBlock, InvalidTransaction
from mpsnode.consensus.events import EVENT_TYPES, decode_event
from mpsnode.consensus.receipt import Receipt, encode_receipts, receipts_root, root_and_encoding
from mpsnode.consensus.tx import (
    CommitUpdate,
    CreateTask,
    JoinTask,
    RevealUpdate,
    SignedTx,
    Stake,
    Transfer,
    Tx,
    Unstake,
    decode_signed_tx,
    hash_ahead,
)
from verifier.checks import precheck_many

KEY = crypto.Keypair.from_seed(bytes(range(32)))
u64 = st.integers(0, 2**64 - 1)
addr = st.binary(min_size=32, max_size=32)

bodies = st.one_of(
    st.builds(Transfer, addr, u64),
    st.builds(Stake, u64),
    st.builds(Unstake, u64),
    st.builds(JoinTask, u64),
    st.builds(CommitUpdate, u64, u64, st.binary(min_size=32, max_size=32)),
    st.builds(RevealUpdate, u64, u64, st.binary(max_size=64), st.binary(min_size=32, max_size=32)),
    st.builds(
        CreateTask,
        st.lists(u64, max_size=5).map(tuple),
        u64,
        st.binary(max_size=32),
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        st.binary(max_size=16),
        st.binary(max_size=8),
    ),
)
chain_ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
txs = st.builds(Tx, chain_ids, st.just(KEY.address), u64, u64, bodies)


@settings(max_examples=200, deadline=None)
@given(txs)
def test_signed_tx_round_trip(tx: Tx) -> None:
    stx = tx.sign(KEY)
    data = stx.encode()
    back = decode_signed_tx(data)
    assert back == stx
    assert back.tx_id == tx.signing_hash()
    assert back.size == len(data)
    assert back.verify_signature()
    later = decode_signed_tx(data, hash_id=False)  # the id left to hash, as a node does on a thread
    assert later.tx_id == b"" and later.with_id() == stx and later.with_id().tx_id == stx.tx_id
    assert back.with_id() is back


@settings(max_examples=100, deadline=None)
@given(st.lists(txs, max_size=4), u64, st.binary(min_size=32, max_size=32))
def test_block_round_trip(tx_list: list[Tx], height: int, root: bytes) -> None:
    header = Header("mps-devnet", height, root, 5, root, root, root)
    block = sign_header(header, KEY, tuple(t.sign(KEY) for t in tx_list))
    back = decode_block(block.encode())
    assert back == block
    assert back.verify_signature(KEY.address)


@given(st.sampled_from(sorted(EVENT_TYPES)), st.data())
def test_event_round_trip(kind: int, data: st.DataObject) -> None:
    import typing
    from dataclasses import fields

    cls = EVENT_TYPES[kind]
    hints = typing.get_type_hints(cls)
    values = []
    for f in fields(cls):
        t = hints[f.name]
        if t is int:
            values.append(data.draw(u64))
        elif t is bytes:
            values.append(data.draw(addr))
        elif t == tuple[bytes, ...]:
            values.append(tuple(data.draw(st.lists(addr, max_size=3))))
        else:
            values.append(tuple(data.draw(st.lists(u64, max_size=3))))
    event = cls(*values)
    obj = decode(encode(event.encode_obj()), max_bytes=1 << 16)
    assert decode_event(obj) == event
    receipt = Receipt(bytes(32), 0, 1, (event,))
    assert Receipt.decode_obj(decode(encode(receipt.encode_obj()), max_bytes=1 << 16)) == receipt


def _valid_tx_bytes() -> bytes:
    return Tx("mps-devnet", KEY.address, 0, 1, Transfer(bytes(32), 5)).sign(KEY).encode()


@pytest.mark.parametrize(
    "bad, why",
    [
        (b"", "empty"),
        (_valid_tx_bytes() + b"\x00", "trailing"),
        (_valid_tx_bytes()[:-1], "truncated"),
        (msgpack.packb({"a": 1}), "map"),
        (msgpack.packb([1.5]), "float"),
        (msgpack.packb([True]), "bool"),
        (msgpack.packb([None]), "nil"),
        (msgpack.packb(msgpack.ExtType(1, b"x")), "ext"),
        (b"\xcd\x00\x05", "non-minimal int (uint16 holding 5)"),
        (b"\x91\xd0\x05", "non-minimal int (int8 holding 5)"),
        (b"\xc1", "reserved byte"),
        (b"\xdd\xff\xff\xff\xff", "oversized array length"),
        (b"\xc6\xff\xff\xff\xff", "oversized bin length"),
        (b"\x91" * 40 + b"\x00", "deep nesting"),
    ],
)
def test_decode_rejects(bad: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        decode(bad, max_bytes=1 << 20)
    with pytest.raises(InvalidTransaction):
        decode_signed_tx(bad)
    with pytest.raises(InvalidBlock):
        decode_block(bad)


def test_str_where_bin_is_due_is_refused() -> None:
    stx = Tx("mps-devnet", KEY.address, 0, 1, Transfer(bytes(32), 5)).sign(KEY)
    obj = stx.encode_obj()
    obj[0][3] = "x" * 32  # sender as str
    with pytest.raises(InvalidTransaction, match="sender"):
        decode_signed_tx(msgpack.packb(obj, use_bin_type=True))


def test_bin_as_str8_non_canonical() -> None:
    # chain_id "a" encoded as str8 (0xd9 0x01 'a') instead of fixstr: same value, other bytes
    stx = Tx("a", KEY.address, 0, 1, Stake(5)).sign(KEY)
    data = stx.encode()
    fixstr = b"\xa1a"
    assert fixstr in data
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_signed_tx(data.replace(fixstr, b"\xd9\x01a", 1))


def test_wrong_field_count_and_unknown_kind() -> None:
    stx = Tx("mps-devnet", KEY.address, 0, 1, Stake(5)).sign(KEY)
    obj = stx.encode_obj()
    obj[0][1] = 99
    with pytest.raises(DecodeError, match="kind"):
        decode_signed_tx(encode(obj))
    obj = stx.encode_obj()
    obj[0].append(1)
    with pytest.raises(DecodeError, match="fields"):
        decode_signed_tx(encode(obj))
    with pytest.raises(DecodeError, match="outside"):
        decode_signed_tx(encode([[1, 2, "c", KEY.address, -1, 1, [5]], bytes(64)]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    for fn, err in ((decode_signed_tx, InvalidTransaction), (decode_block, InvalidBlock)):
        with contextlib.suppress(err):
            fn(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_one_changed_byte_is_refused_or_unsigned(data: st.DataObject) -> None:
    raw = bytearray(_valid_tx_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    raw[i] = new
    try:
        stx = decode_signed_tx(bytes(raw))
    except InvalidTransaction:
        return
    # canonical decoding means a changed byte is a changed value: the signature cannot still hold
    assert not stx.verify_signature()


def test_signature_checks() -> None:
    other = crypto.Keypair.from_seed(bytes(32))
    tx = Tx("mps-devnet", KEY.address, 0, 1, Stake(5))
    stx = tx.sign(KEY)
    assert stx.verify_signature()
    # signed for another chain id: the id differs, the signature no longer matches
    moved = SignedTx(
        Tx("other-chain", KEY.address, 0, 1, Stake(5)),
        stx.signature,
        Tx("other-chain", KEY.address, 0, 1, Stake(5)).signing_hash(),
        stx.size,
    )
    assert not moved.verify_signature()
    # one flipped bit in the signature
    flipped = bytearray(stx.signature)
    flipped[10] ^= 1
    assert not SignedTx(tx, bytes(flipped), stx.tx_id, stx.size).verify_signature()
    # signed with the wrong key
    forged = SignedTx(tx, other.sign(stx.tx_id), stx.tx_id, stx.size)
    assert not forged.verify_signature()
    with pytest.raises(ValueError):
        tx.sign(other)


def test_block_decode_wraps_tx_errors() -> None:
    header = Header("mps-devnet", 1, bytes(32), 5, bytes(32), bytes(32), bytes(32))
    block = sign_header(header, KEY, (Tx("mps-devnet", KEY.address, 0, 1, Stake(5)).sign(KEY),))
    obj = block.encode_obj()
    obj[1][0][1] = b"short"
    with pytest.raises(BlockDecodeError, match="signature"):
        decode_block(encode(obj))
    assert isinstance(decode_block(block.encode()), Block)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 255, 0xFFFF, 0x10000])
def test_encode_array_is_the_encoding_of_the_list(n: int) -> None:
    items = [i % 300 for i in range(n)]
    assert encode_array([encode(x) for x in items]) == encode(items)


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=40)), max_size=40))
@settings(max_examples=50, deadline=None)
def test_a_block_encodes_the_same_from_its_txs_own_bytes(bodies: list[tuple[int, bytes]]) -> None:
    """A block of decoded txs (which keep their bytes) and of fresh ones encode alike; decoded txs equal fresh."""
    key = crypto.Keypair.from_seed(bytes(32))
    fresh = [
        Tx("c", key.address, i, fee, Transfer(bytes(32), len(memo))).sign(key)
        for i, (fee, memo) in enumerate(bodies)
    ]
    decoded = [decode_signed_tx(t.encode()) for t in fresh]
    assert decoded == fresh and all(d.encoded == f.encode() for d, f in zip(decoded, fresh, strict=True))
    assert [d.tx_id for d in decoded] == [f.tx_id for f in fresh]
    header = Header("c", 1, bytes(32), 1, bytes(32), bytes(32), bytes(32))
    a, b = Block(header, tuple(fresh), bytes(64)), Block(header, tuple(decoded), bytes(64))
    assert a.encode() == b.encode() == encode(a.encode_obj())
    receipts = [Receipt(t.tx_id, 0, 1, ()) for t in fresh]
    assert root_and_encoding(receipts) == (receipts_root(receipts), encode_receipts(receipts))


def _check_types_plain(obj: object) -> None:
    """The type walk as first written (an explicit stack): the twin of encoding._check_types."""
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if type(item) is list:
            if depth >= 16:
                raise DecodeError("nesting deeper than 16")
            stack.extend((x, depth + 1) for x in item)
        elif type(item) not in (int, bytes, str):
            raise DecodeError(f"type {encoding._msgpack_name(item)} is not allowed")


_leaves = st.one_of(
    st.integers(), st.binary(max_size=3), st.text(max_size=3), st.none(), st.booleans(), st.floats()
)


@given(st.recursive(_leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=60))
@settings(max_examples=300, deadline=None)
def test_the_type_walk_finds_the_same_first_fault_as_its_twin(obj: object) -> None:
    def outcome(check) -> str:
        try:
            check(obj)
        except DecodeError as exc:
            return exc.reason
        return "ok"

    assert outcome(encoding._check_types) == outcome(_check_types_plain)


@pytest.mark.parametrize("size", [0, 1, 96, 4096, 1 << 20])
def test_hashing_copies_a_prepared_hasher_and_gives_plain_personalized_blake2b(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for domain in (*hashing._PREPARED, b"not-a-domain"):
        assert hashing.H(domain, data) == hashlib.blake2b(data, digest_size=32, person=domain).digest()
        assert hashing.H(domain, data) == hashing.H(domain, data)  # the prepared hasher is not consumed


@given(st.binary(max_size=4096), st.binary(min_size=32, max_size=32))
def test_a_reveal_keeps_its_delta_hash_which_is_the_update_hash_and_not_part_of_its_value(delta, salt):
    body = RevealUpdate(1, 2, delta, salt)
    fresh = RevealUpdate(1, 2, delta, salt)
    assert body.delta_hash() == hashing.H(hashing.UPDATE, delta)
    assert body.delta_hash() is body.delta_hash()  # hashed once
    assert body == fresh and hash(body) == hash(fresh)  # one holds its hash, the other not yet
    assert RevealUpdate.decode_obj(body.encode_obj()) == body
    assert encode(body.encode_obj()) == encode(fresh.encode_obj())


def test_hash_ahead_hashes_the_reveals_of_a_batch_and_nothing_else():
    key = KEY
    reveal = Tx("c", key.address, 0, 1, RevealUpdate(1, 1, b"\x01\x00" * 8, bytes(32))).sign(key)
    transfer = Tx("c", key.address, 1, 1, Transfer(key.address, 5)).sign(key)
    assert reveal.tx.body._delta_hash is None
    hash_ahead([reveal, transfer])
    assert reveal.tx.body._delta_hash == hashing.H(hashing.UPDATE, b"\x01\x00" * 8)
    # a tx id taken over the decoded bytes (a view, no copy) is the one taken over the tx itself
    assert decode_signed_tx(reveal.encode()).tx_id == reveal.tx_id


def test_a_precheck_hashes_a_blocks_revealed_deltas_on_its_own_thread() -> None:
    g, keys = genesis_tool.devnet(clients=1)
    key = keys["client-0"]
    delta = b"\x02\x00" * 16
    reveal = Tx(g.chain_id, key.address, 0, 1, RevealUpdate(1, 1, delta, bytes(32))).sign(key)
    header = Header(g.chain_id, 1, bytes(32), 5, bytes(32), bytes(32), bytes(32))
    data = sign_header(header, keys["sequencer"], (reveal,)).encode()
    (pre,) = precheck_many([(1, data)], g.config())
    assert pre.block is not None
    body = pre.block.txs[0].tx.body
    assert isinstance(body, RevealUpdate) and body._delta_hash == hashing.H(hashing.UPDATE, delta)
