"""Making networks: keys, allocations and parameters written to a node home, and the devnet.

``make_network`` writes a home directory::

    HOME/genesis.json       the genesis (mpsnode.genesis.Genesis)
    HOME/config.toml        node settings (listen address, data directory)
    HOME/keys/*.json        sequencer, user, treasury, fees and client-N keys
    HOME/keys/l1/*.json     settlement mode: the L1 accounts (the sequencer's; on a devnet every role's)

``make_settled_network`` deploys the L1 contracts first and writes a genesis that names them
(docs/SETTLEMENT.md): it allocates nothing, every unit on it is a deposit.

The embedded devnet (``devnet=True``) derives every key from a public name, so anyone can
recreate it bit for bit: never use its keys for anything of value.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account as EthAccount
from eth_account.signers.local import LocalAccount

from mpsnode.consensus import crypto
from mpsnode.consensus.genesis import Allocation, Genesis
from mpsnode.consensus.params import Params
from mpsnode.consensus.settlement import L1Config
from mpsnode.node.files import generate_key, save_genesis, save_key, save_l1_key
from mpsnode.node.l1.client import L1
from mpsnode.node.l1.devnet import (
    DEVNET_BOND_WEI,
    DEVNET_CHALLENGE_PERIOD,
    DEVNET_DEPOSIT_WINDOW,
    DEVNET_FUNDING_WEI,
    DEVNET_L1_CHAIN_ID,
    DEVNET_VERIFIER_BOND_WEI,
    DEVNET_VERIFIERS,
    dev_account,
    role_index,
)

DEVNET_CHAIN_ID = "mps-devnet"
DEVNET_GENESIS_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DEVNET_CLIENTS = 10
USER_BALANCE = 1_000_000_000
CLIENT_BALANCE = 1_000_000


MAX_NETWORK_CLIENTS = 10_000  # client keys written by one `mpsnode init`


def devnet_key(name: str) -> crypto.Keypair:
    """The well-known devnet key called ``name`` (public by design)."""
    return crypto.Keypair.from_seed(
        hashlib.blake2b(name.encode(), digest_size=32, person=b"mps-devnet").digest()
    )


@dataclass(frozen=True, slots=True)
class Network:
    home: Path
    genesis: Genesis
    keys: dict[str, crypto.Keypair]

    @property
    def clients(self) -> list[crypto.Keypair]:
        return [
            self.keys[n]
            for n in sorted(
                (k for k in self.keys if k.startswith("client-")), key=lambda n: int(n.split("-")[1])
            )
        ]


def key_names(clients: int) -> list[str]:
    return ["sequencer", "user", "treasury", "fees", *(f"client-{i}" for i in range(clients))]


def make_genesis(
    keys: dict[str, crypto.Keypair],
    *,
    chain_id: str,
    genesis_time_ms: int,
    params: Params | None = None,
    l1: L1Config | None = None,
) -> Genesis:
    """The genesis of ``keys``: the user and every client funded, or, on a chain that settles on
    ``l1``, nobody (every unit there is a deposit)."""
    allocations = [Allocation(keys["user"].address, USER_BALANCE)]
    allocations += [Allocation(k.address, CLIENT_BALANCE) for n, k in keys.items() if n.startswith("client-")]
    if l1 is not None:
        allocations = []
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms,
        params=params or Params(),
        sequencer=keys["sequencer"].address,
        fee_recipient=keys["fees"].address,
        treasury=keys["treasury"].address,
        allocations=tuple(allocations),
        l1=l1,
    )


def devnet(
    clients: int = DEVNET_CLIENTS, params: Params | None = None, l1: L1Config | None = None
) -> tuple[Genesis, dict[str, crypto.Keypair]]:
    keys = {n: devnet_key(n) for n in key_names(clients)}
    return make_genesis(
        keys, chain_id=DEVNET_CHAIN_ID, genesis_time_ms=DEVNET_GENESIS_TIME_MS, params=params, l1=l1
    ), keys


def make_network(
    home: str | Path,
    *,
    clients: int = DEVNET_CLIENTS,
    chain_id: str | None = None,
    devnet_keys: bool = False,
    genesis_time_ms: int | None = None,
    params: Params | None = None,
    listen: str = "127.0.0.1:7070",
    l1: L1Config | None = None,
    l1_url: str = "",
) -> Network:
    """Write a new network into ``home`` (refuses to overwrite an existing genesis)."""
    if not 0 <= clients <= MAX_NETWORK_CLIENTS:
        raise ValueError(f"--clients {clients}: a network has 0..{MAX_NETWORK_CLIENTS} client keys")
    home = Path(home)
    if (home / "genesis.json").exists():
        raise FileExistsError(f"{home / 'genesis.json'} already exists; choose an empty --home")
    if devnet_keys:
        keys = {n: devnet_key(n) for n in key_names(clients)}
    else:
        keys = {n: generate_key() for n in key_names(clients)}
    if genesis_time_ms is None:
        genesis_time_ms = DEVNET_GENESIS_TIME_MS if devnet_keys else int(time.time() * 1000)
    if chain_id is None:  # the devnet's is well known; a network of its own gets an id of its own
        chain_id = DEVNET_CHAIN_ID if devnet_keys else f"mps-{keys['sequencer'].address.hex()[:8]}"
    genesis = make_genesis(keys, chain_id=chain_id, genesis_time_ms=genesis_time_ms, params=params, l1=l1)
    Genesis.from_json(genesis.to_json())  # what we write must be what we accept
    home.mkdir(parents=True, exist_ok=True)
    for name, key in keys.items():
        save_key(home / "keys" / f"{name}.json", key)
    save_genesis(genesis, home / "genesis.json")
    settings = f'# mpsnode node settings\nlisten = "{listen}"\ndata_dir = "data"\nmap_size_gib = 64\n'
    if l1_url:
        settings += f'l1 = "{l1_url}"\n'
    (home / "config.toml").write_text(settings)
    return Network(home, genesis, keys)


@dataclass(frozen=True, slots=True)
class SettlementTerms:
    """What a settled network is deployed with (the devnet's by default)."""

    bond_wei: int = DEVNET_BOND_WEI
    challenge_period: int = DEVNET_CHALLENGE_PERIOD  # seconds
    deposit_window: int = DEVNET_DEPOSIT_WINDOW  # L1 blocks
    verifier_bond_wei: int = DEVNET_VERIFIER_BOND_WEI  # what each committee member bonds
    quorum: int = 1  # attestations that decide a challenge (docs/SETTLEMENT.md)


def make_settled_network(
    home: str | Path,
    l1_url: str,
    *,
    clients: int = DEVNET_CLIENTS,
    chain_id: str | None = None,
    devnet_keys: bool = False,
    params: Params | None = None,
    listen: str = "127.0.0.1:7070",
    deployer: LocalAccount | None = None,
    terms: SettlementTerms | None = None,
) -> Network:
    """Deploy the portal and the oracle on the L1 at ``l1_url``, then write a network that
    settles there. On the devnet L1 (chain 31337) every role gets a development account (funded
    from the deployer if it has no ETH); elsewhere ``deployer`` is required and the sequencer
    gets a new L1 account, which must be funded for gas before it can post outputs. On the devnet
    L1 the deployer (the oracle's admin) also admits ``DEVNET_VERIFIERS`` committee members."""
    terms = terms or SettlementTerms()
    home = Path(home)
    if (home / "genesis.json").exists():
        raise FileExistsError(f"{home / 'genesis.json'} already exists; choose an empty --home")
    l1 = L1(l1_url)
    devnet_l1 = l1.chain_id() == DEVNET_L1_CHAIN_ID
    if deployer is None:
        if not devnet_l1:
            raise ValueError(
                f"{l1_url} is not the devnet L1 (chain {DEVNET_L1_CHAIN_ID}): give --l1-deployer-key FILE"
            )
        deployer = dev_account(role_index("deployer"))
    committee = [f"verifier-{i}" for i in range(DEVNET_VERIFIERS)] if devnet_l1 else []
    names = [
        "sequencer",
        *(["user", *(f"client-{i}" for i in range(clients)), *committee] if devnet_l1 else []),
    ]
    accounts = {n: dev_account(role_index(n)) if devnet_l1 else EthAccount.create() for n in names}
    if devnet_l1:
        for account in accounts.values():
            if l1.balance(account.address) == 0:
                l1.send_eth(deployer, account.address, DEVNET_FUNDING_WEI)
    config = l1.deploy(
        deployer,
        accounts["sequencer"].address,
        terms.bond_wei,
        terms.challenge_period,
        terms.deposit_window,
        terms.verifier_bond_wei,
        terms.quorum,
    )
    for name in committee:  # admitted; each verifier bonds itself when it starts (`--l1-key`)
        l1.admit(deployer, accounts[name].address)
    net = make_network(
        home,
        clients=clients,
        chain_id=chain_id,
        devnet_keys=devnet_keys,
        params=params,
        listen=listen,
        l1=config,
        l1_url=l1_url,
    )
    for name, account in accounts.items():
        save_l1_key(home / "keys" / "l1" / f"{name}.json", account.address, "0x" + account.key.hex())
    return net
