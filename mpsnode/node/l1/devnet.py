"""The devnet L1's well-known accounts and the settlement parameters of a devnet.

anvil funds the accounts of a public development mnemonic; the devnet gives each role one of
them, by index, so that anyone can recreate it. Never use these keys for anything of value.
"""

from __future__ import annotations

from eth_account import Account as EthAccount
from eth_account.signers.local import LocalAccount

DEV_MNEMONIC = "test test test test test test test test test test test junk"  # anvil's and hardhat's
DEVNET_L1_CHAIN_ID = 31337
ROLE_INDEX = {"deployer": 0, "sequencer": 1, "user": 2}  # client-i: 3 + i, verifier-i: 1000 + i
DEVNET_VERIFIERS = 2  # committee members a devnet admits (keys/l1/verifier-N.json)
DEVNET_BOND_WEI = 10**18  # the sequencer's bond in the oracle: 1 ETH
DEVNET_VERIFIER_BOND_WEI = 10**17  # each verifier's bond in the committee: 0.1 ETH
DEVNET_CHALLENGE_PERIOD = 5  # seconds an output waits before it finalizes (mainnet rollups: 7 days)
DEVNET_DEPOSIT_WINDOW = 32  # L1 blocks a deposit may wait for L2
DEVNET_FUNDING_WEI = 100 * 10**18  # what a role account without ETH is sent by the deployer

EthAccount.enable_unaudited_hdwallet_features()  # BIP-39 derivation of the public mnemonic above


def role_index(name: str) -> int:
    """The mnemonic index of a devnet role (``deployer``, ``sequencer``, ``user``, ``client-N``)."""
    if name in ROLE_INDEX:
        return ROLE_INDEX[name]
    if name.startswith("client-") and name[7:].isdigit():
        return 3 + int(name[7:])
    if name.startswith("verifier-") and name[9:].isdigit():
        return 1000 + int(name[9:])  # past any client; funded by the deployer
    raise ValueError(f"no devnet L1 account for {name!r}")


def dev_account(index: int) -> LocalAccount:
    """Account ``index`` of the development mnemonic (m/44'/60'/0'/0/index)."""
    return EthAccount.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
