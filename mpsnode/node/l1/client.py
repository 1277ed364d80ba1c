"""Talking to the L1 over JSON-RPC with web3.py: deploy the contracts, deposit, read deposits,
post outputs, prove withdrawals, read balances.

Every call is synchronous (the daemons run it on a worker thread). A revert surfaces as
``L1Revert`` carrying the contract's reason ("portal: withdrawal already paid"); a node that does
not answer as ``L1Unavailable``. Nothing else escapes these methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import requests
import rlp
from eth_account import Account as EthAccount
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

__all__ = ["L1", "L1Error", "L1Revert", "L1Unavailable", "Output", "account", "create_address"]

from mpsnode.consensus.settlement import WEI_PER_UNIT, Deposit, L1Config
from mpsnode.node.errors import L1Error, L1Revert, L1Unavailable
from mpsnode.node.l1.artifacts import artifact

T = TypeVar("T")
RECEIPT_TIMEOUT = 120.0
LOG_CHUNK = 5000  # L1 blocks per eth_getLogs call


def _reason(exc: ContractLogicError) -> str:
    message = str(exc.message or exc)
    for prefix in ("execution reverted: ", "execution reverted"):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message.strip() or "reverted without a reason"


def create_address(sender: str, nonce: int) -> str:
    """The address a contract deployed by ``sender`` with ``nonce`` gets (CREATE)."""
    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


def account(private_key: str) -> LocalAccount:
    """The L1 account of a hex private key."""
    try:
        return EthAccount.from_key(private_key)
    except (ValueError, TypeError) as exc:
        raise L1Error(f"not an L1 private key: {exc}") from None


@dataclass(frozen=True, slots=True)
class Output:
    """One posted output as the oracle holds it."""

    index: int
    root: bytes
    l2_height: int
    l1_origin: int
    deposits: int
    posted_at: int  # L1 timestamp, seconds


class L1:
    """A JSON-RPC endpoint and, once known, the chain's contracts on it."""

    def __init__(self, url: str, config: L1Config | None = None, timeout: float = 10.0):
        self.url = url
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
        self.config = config
        self._contracts: dict[str, Any] = {}

    # -- plumbing ---------------------------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Run one web3 call, turning its failures into ``L1Error``s."""
        try:
            return fn()
        except ContractLogicError as exc:
            raise L1Revert(_reason(exc)) from None
        except (requests.exceptions.RequestException, ConnectionError, OSError) as exc:
            raise L1Unavailable(f"L1 node at {self.url} did not answer: {type(exc).__name__}") from None
        except TimeExhausted:
            raise L1Unavailable(f"L1 node at {self.url} did not mine the transaction in time") from None
        except Web3Exception as exc:
            raise L1Error(f"L1: {exc}") from None

    def contract(self, name: str) -> Any:
        """The web3 contract object of ``Portal`` or ``OutputOracle``."""
        if self.config is None:
            raise L1Error("this chain has no L1 contracts")
        if name not in self._contracts:
            address = self.config.portal if name == "Portal" else self.config.oracle
            abi = artifact(name).abi
            self._contracts[name] = self.w3.eth.contract(address=to_checksum_address(address), abi=abi)
        return self._contracts[name]

    def transact(
        self, key: LocalAccount, build: Callable[[dict[str, Any]], dict[str, Any]], value: int = 0
    ) -> Any:
        """Sign and send the transaction ``build(params)`` returns, wait for its receipt, and
        raise ``L1Revert`` if it reverted (the gas estimate reverts first, with the reason)."""

        def send() -> Any:
            params: dict[str, Any] = {"from": key.address, "value": value}
            params["nonce"] = self.w3.eth.get_transaction_count(key.address, "pending")
            tx = build(params)
            signed = key.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=0.05
            )
            if receipt["status"] != 1:
                raise L1Revert(f"transaction {tx_hash.hex()} reverted")
            return receipt

        return self.call(send)

    # -- chain facts ------------------------------------------------------------------------

    def chain_id(self) -> int:
        return int(self.call(lambda: self.w3.eth.chain_id))

    def head(self) -> int:
        return int(self.call(lambda: self.w3.eth.block_number))

    def block_timestamp(self, number: int) -> int:
        return int(self.call(lambda: self.w3.eth.get_block(number)["timestamp"]))

    def balance(self, address: str) -> int:
        """Wei held by ``address``."""
        return int(self.call(lambda: self.w3.eth.get_balance(to_checksum_address(address))))

    def send_eth(self, key: LocalAccount, to: str, wei: int) -> Any:
        """A plain ETH transfer; the receipt."""
        chain_id = self.chain_id()
        gas_price = int(self.call(lambda: self.w3.eth.gas_price))

        def build(p: dict[str, Any]) -> dict[str, Any]:
            return {
                **p,
                "to": to_checksum_address(to),
                "gas": 21_000,
                "chainId": chain_id,
                "gasPrice": gas_price,
            }

        return self.transact(key, build, wei)

    # -- deployment -------------------------------------------------------------------------

    def deploy(
        self,
        deployer: LocalAccount,
        sequencer: str,
        bond_wei: int,
        challenge_period: int,
        deposit_window: int,
        verifier_bond_wei: int = 10**17,
        quorum: int = 1,
    ) -> L1Config:
        """Deploy the oracle and the portal (each names the other, so the portal's address is
        computed ahead from the deployer's nonce) and return the config genesis records. The
        deployer is the oracle's admin: it admits the verifier committee (``admit``), whose
        members bond ``verifier_bond_wei`` each; ``quorum`` attestations decide a challenge."""
        nonce = self.call(lambda: self.w3.eth.get_transaction_count(deployer.address, "pending"))
        portal_address = create_address(deployer.address, nonce + 1)
        oracle_art, portal_art = artifact("OutputOracle"), artifact("Portal")
        oracle_factory = self.w3.eth.contract(abi=oracle_art.abi, bytecode=oracle_art.bytecode)
        receipt = self.transact(
            deployer,
            lambda p: oracle_factory.constructor(
                to_checksum_address(sequencer), portal_address, challenge_period, verifier_bond_wei, quorum
            ).build_transaction(p),
            value=bond_wei,
        )
        oracle_address = receipt["contractAddress"]
        portal_factory = self.w3.eth.contract(abi=portal_art.abi, bytecode=portal_art.bytecode)
        receipt = self.transact(
            deployer,
            lambda p: portal_factory.constructor(oracle_address, deposit_window).build_transaction(p),
        )
        if receipt["contractAddress"] != portal_address:
            raise L1Error(f"the portal was deployed at {receipt['contractAddress']}, not {portal_address}")
        self.config = L1Config(
            chain_id=self.chain_id(),
            portal=bytes.fromhex(portal_address[2:]),
            oracle=bytes.fromhex(oracle_address[2:]),
            start_block=int(receipt["blockNumber"]),
            deposit_window=deposit_window,
        )
        self._contracts.clear()
        return self.config

    # -- deposits ---------------------------------------------------------------------------

    def deposit(self, key: LocalAccount, recipient: bytes, units: int) -> Any:
        """Lock ``units`` (gwei) on L1 for L2 address ``recipient``; the receipt."""
        portal = self.contract("Portal")
        return self.transact(
            key,
            lambda p: portal.functions.deposit(recipient).build_transaction(p),
            value=units * WEI_PER_UNIT,
        )

    def deposit_logs(self, from_block: int, to_block: int) -> list[Deposit]:
        """Every deposit made in L1 blocks ``from_block..to_block``, in index order."""
        portal = self.contract("Portal")
        found: list[Deposit] = []
        for low in range(from_block, to_block + 1, LOG_CHUNK):
            high = min(to_block, low + LOG_CHUNK - 1)
            logs = self.call(partial(portal.events.Deposited().get_logs, from_block=low, to_block=high))
            for log in logs:
                args = log["args"]
                found.append(
                    Deposit(
                        int(args["index"]),
                        int(log["blockNumber"]),
                        bytes(args["recipient"]),
                        int(args["amount"]),
                    )
                )
        found.sort(key=lambda d: d.index)
        return found

    def deposits(self, first_index: int, to_block: int) -> list[Deposit]:
        """The portal's deposits with index ``>= first_index`` made at or before ``to_block``,
        in index order."""
        assert self.config is not None
        start = self.config.start_block
        if first_index > 0:  # start at the first wanted deposit's block, which the portal keeps
            portal = self.contract("Portal")
            if first_index >= int(self.call(portal.functions.deposit_count().call)):
                return []
            start = int(self.call(portal.functions.deposit_block(first_index).call))
        return [d for d in self.deposit_logs(start, to_block) if d.index >= first_index]

    def portal_totals(self) -> dict[str, int]:
        """The portal's balance (wei) and its counters: deposits, units deposited and paid."""
        portal = self.contract("Portal")
        assert self.config is not None
        return {
            "balance_wei": self.balance("0x" + self.config.portal.hex()),
            "deposit_count": int(self.call(portal.functions.deposit_count().call)),
            "deposited": int(self.call(portal.functions.deposited().call)),
            "paid": int(self.call(portal.functions.paid().call)),
        }

    # -- outputs ----------------------------------------------------------------------------

    def post_output(
        self, key: LocalAccount, l2_height: int, root: bytes, l1_origin: int, deposits: int
    ) -> Any:
        oracle = self.contract("OutputOracle")
        return self.transact(
            key,
            lambda p: oracle.functions.post_output(l2_height, root, l1_origin, deposits).build_transaction(p),
        )

    def output_count(self) -> int:
        return int(self.call(self.contract("OutputOracle").functions.output_count().call))

    def output(self, index: int) -> Output:
        root, height, origin, deposits, posted_at = self.call(
            self.contract("OutputOracle").functions.outputs(index).call
        )
        return Output(index, bytes(root), int(height), int(origin), int(deposits), int(posted_at))

    def is_finalized(self, index: int) -> bool:
        return bool(self.call(self.contract("OutputOracle").functions.is_finalized(index).call))

    # -- the verifier committee (settlement part 2) ------------------------------------------------

    def admit(self, admin: LocalAccount, verifier: str) -> Any:
        oracle = self.contract("OutputOracle")
        return self.transact(
            admin, lambda p: oracle.functions.admit(to_checksum_address(verifier)).build_transaction(p)
        )

    def register_verifier(self, key: LocalAccount) -> Any:
        oracle = self.contract("OutputOracle")
        bond = int(self.call(oracle.functions.VERIFIER_BOND().call))
        return self.transact(key, lambda p: oracle.functions.register().build_transaction(p), bond)

    def challenge(self, key: LocalAccount, index: int, root: bytes, report: bytes) -> Any:
        oracle = self.contract("OutputOracle")
        return self.transact(
            key, lambda p: oracle.functions.challenge(index, root, report).build_transaction(p)
        )

    def attest(self, key: LocalAccount, index: int, root: bytes) -> Any:
        oracle = self.contract("OutputOracle")
        return self.transact(key, lambda p: oracle.functions.attest(index, root).build_transaction(p))

    def challenge_of(self, index: int) -> tuple[str, bytes, int, int]:
        """(challenger, report hash, opened at, status: 0 none, 1 open, 2 upheld, 3 rejected)."""
        challenger, report, opened, status = self.call(
            self.contract("OutputOracle").functions.challenges(index).call
        )
        return str(challenger), bytes(report), int(opened), int(status)

    # -- withdrawals ------------------------------------------------------------------------

    def prove_withdrawal(
        self,
        key: LocalAccount,
        output_index: int,
        preimage: tuple[bytes, bytes, bytes],
        index: int,
        recipient: bytes,
        amount: int,
        sender: bytes,
        proof: tuple[bytes, ...],
    ) -> Any:
        """Prove withdrawal ``index`` against output ``output_index`` (``preimage``: state root,
        withdrawals root, block hash) and have the portal pay ``recipient``."""
        portal = self.contract("Portal")
        return self.transact(
            key,
            lambda p: portal.functions.prove_withdrawal(
                output_index, *preimage, index, to_checksum_address(recipient), amount, sender, list(proof)
            ).build_transaction(p),
        )

    def withdrawal_paid(self, index: int) -> bool:
        return bool(self.call(self.contract("Portal").functions.withdrawal_paid(index).call))
