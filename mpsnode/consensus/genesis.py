"""Genesis: the chain's parameters, keys and allocations, and the state and header they define.

The genesis state holds the config (chain id, parameters, sequencer key, fee recipient,
treasury, genesis time, supply), the globals and one account per allocation. The genesis header
is ``[1, chain_id, 0, zeros, genesis_time_ms, empty, empty, state_root]`` and the genesis hash is
its hash: it commits to everything above, so peers compare it in their handshake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from mpsnode.consensus import crypto
from mpsnode.consensus.block import Header
from mpsnode.consensus.errors import GenesisError
from mpsnode.consensus.hashing import ZERO32
from mpsnode.consensus.merkle import EMPTY_LIST_ROOT
from mpsnode.consensus.params import Params
from mpsnode.consensus.settlement import L1Config
from mpsnode.consensus.smt import compute_root_reference
from mpsnode.consensus.state import CONFIG_KEY, GLOBALS_KEY, Account, Config, Globals, account_key

CHAIN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_SUPPLY = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Allocation:
    address: bytes
    balance: int
    bonded: int = 0


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    params: Params
    sequencer: bytes
    fee_recipient: bytes
    treasury: bytes
    allocations: tuple[Allocation, ...]
    l1: L1Config | None = None  # settlement mode: the L1 and its contracts (allocations must be empty)

    @property
    def supply(self) -> int:
        """The total of every allocation, balance and bond: the invariant's constant."""
        return sum(a.balance + a.bonded for a in self.allocations)

    def config(self) -> Config:
        """The chain's ``Config`` (what the state's ``C`` key holds)."""
        return Config(
            self.chain_id,
            self.params,
            self.sequencer,
            self.fee_recipient,
            self.treasury,
            self.genesis_time_ms,
            self.supply,
            self.l1,
        )

    def state_items(self) -> dict[bytes, bytes]:
        """The genesis state: config, globals and every allocated account, as key -> value."""
        items = {CONFIG_KEY: self.config().encode(), GLOBALS_KEY: Globals().encode()}
        for a in self.allocations:
            acct = Account(balance=a.balance, bonded=a.bonded)
            if not acct.is_empty():
                items[account_key(a.address)] = acct.encode()
        return items

    def state_root(self) -> bytes:
        """The sparse-Merkle root of ``state_items`` (computed by the reference tree)."""
        return compute_root_reference(self.state_items())

    def header(self) -> Header:
        """The height-0 header: zero parent, empty tx and receipt roots, the genesis state root."""
        return Header(
            self.chain_id,
            0,
            ZERO32,
            self.genesis_time_ms,
            EMPTY_LIST_ROOT,
            EMPTY_LIST_ROOT,
            self.state_root(),
            l1_origin=None if self.l1 is None else self.l1.start_block,
        )

    def hash(self) -> bytes:
        """The genesis hash: the hash of the height-0 header."""
        return self.header().hash()

    # JSON ----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The genesis as the JSON of a genesis file."""
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "params": self.params.to_json(),
            "sequencer": self.sequencer.hex(),
            "fee_recipient": self.fee_recipient.hex(),
            "treasury": self.treasury.hex(),
            "allocations": [
                {"address": a.address.hex(), "balance": a.balance, "bonded": a.bonded}
                for a in self.allocations
            ],
            **({} if self.l1 is None else {"l1": self.l1.to_json()}),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Genesis:
        """A genesis from a genesis file's JSON; ``GenesisError`` naming the field that is wrong."""
        if not isinstance(doc, dict):
            raise GenesisError("genesis", "must be a JSON object")
        required = {
            "chain_id",
            "genesis_time_ms",
            "params",
            "sequencer",
            "fee_recipient",
            "treasury",
            "allocations",
        }
        for name in sorted(required - doc.keys()):
            raise GenesisError(name, "is missing")
        for name in sorted(doc.keys() - required - {"l1"}):
            raise GenesisError(name, "is not a genesis field")
        chain_id = doc["chain_id"]
        if not isinstance(chain_id, str) or not CHAIN_ID_RE.match(chain_id):
            raise GenesisError(
                "chain_id", "must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit"
            )
        time_ms = _int(doc["genesis_time_ms"], "genesis_time_ms")
        params = _params(doc["params"])
        sequencer = _addr(doc["sequencer"], "sequencer")
        fee_recipient = _addr(doc["fee_recipient"], "fee_recipient")
        treasury = _addr(doc["treasury"], "treasury")
        allocs = doc["allocations"]
        if not isinstance(allocs, list):
            raise GenesisError("allocations", "must be a list")
        seen: set[bytes] = set()
        out = []
        for i, a in enumerate(allocs):
            where = f"allocations[{i}]"
            if (
                not isinstance(a, dict)
                or not {"address", "balance"} <= a.keys()
                or a.keys() - {"address", "balance", "bonded"}
            ):
                raise GenesisError(where, "must be an object with address, balance and optional bonded")
            address = _addr(a["address"], f"{where}.address")
            if address in seen:
                raise GenesisError(f"{where}.address", "appears twice")
            seen.add(address)
            out.append(
                Allocation(
                    address,
                    _int(a["balance"], f"{where}.balance"),
                    _int(a.get("bonded", 0), f"{where}.bonded"),
                )
            )
        l1 = _l1(doc["l1"]) if "l1" in doc else None
        g = cls(chain_id, time_ms, params, sequencer, fee_recipient, treasury, tuple(out), l1)
        if l1 is not None and g.supply:
            raise GenesisError(
                "allocations", "a chain that settles on L1 allocates nothing: every unit on it is a deposit"
            )
        if g.supply > MAX_SUPPLY:
            raise GenesisError("allocations", f"total supply {g.supply} exceeds {MAX_SUPPLY}")
        return g


def _int(v: Any, field: str) -> int:
    if type(v) is not int or v < 0 or v > MAX_SUPPLY:
        raise GenesisError(field, f"must be an integer in 0..{MAX_SUPPLY}")
    return v


def _addr(v: Any, field: str) -> bytes:
    if not isinstance(v, str):
        raise GenesisError(field, "must be a hex address string")
    try:
        return crypto.parse_address(v)
    except ValueError as exc:
        raise GenesisError(field, str(exc)) from None


def _l1_address(v: Any, field: str) -> bytes:
    if not isinstance(v, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", v):
        raise GenesisError(field, "must be a 0x-prefixed 20-byte hex L1 address")
    return bytes.fromhex(v[2:])


def _l1(doc: Any) -> L1Config:
    names = {"chain_id", "portal", "oracle", "start_block", "deposit_window"}
    if not isinstance(doc, dict):
        raise GenesisError("l1", "must be an object")
    for name in sorted(names - doc.keys()):
        raise GenesisError(f"l1.{name}", "is missing")
    for name in sorted(doc.keys() - names):
        raise GenesisError(f"l1.{name}", "is not an L1 field")
    window = _int(doc["deposit_window"], "l1.deposit_window")
    if window < 1:
        raise GenesisError("l1.deposit_window", "must be at least 1 L1 block")
    return L1Config(
        _int(doc["chain_id"], "l1.chain_id"),
        _l1_address(doc["portal"], "l1.portal"),
        _l1_address(doc["oracle"], "l1.oracle"),
        _int(doc["start_block"], "l1.start_block"),
        window,
    )


def _params(doc: Any) -> Params:
    if not isinstance(doc, dict):
        raise GenesisError("params", "must be an object")
    names = {f.name for f in fields(Params)}
    for name in sorted(doc.keys() - names):
        raise GenesisError(f"params.{name}", "is not a parameter")
    values = {}
    for name in sorted(names):
        # Every parameter is spelled out: a default that changed between versions must never
        # change what an existing genesis means.
        if name not in doc:
            raise GenesisError(f"params.{name}", "is missing")
        values[name] = _int(doc[name], f"params.{name}")
    params = Params(**values)
    for name, why in params.validate():
        raise GenesisError(f"params.{name}", why)
    return params
