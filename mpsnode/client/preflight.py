"""What a tx would do, found out before it is sent: the chain's own rules on proven state.

``preflight(client, stx)`` fetches, each with its proof against a signed header, the state the tx
reads (its sender's and recipient's accounts, the fee recipient and treasury, the tasks it names
or the sender takes part in, the globals, the round's duplicate index entry), and runs the tx on
them with the state transition's own ``process_transaction``. So a CLI can say "this would fail:
InsufficientBalance, needs 600, the balance is 500" before a fee is spent, without restating a
rule. The head may move before the tx is included; the answer is a forecast, never a promise.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsnode.consensus.errors import InvalidTransaction, NonceMismatch, TxFailure
from mpsnode.consensus.hashing import UPDATE, H
from mpsnode.consensus.receipt import Receipt
from mpsnode.consensus.state import (
    GLOBALS_KEY,
    Account,
    State,
    account_key,
    commitment_key,
    duplicate_key,
    task_key,
    update_key,
)
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.stf.transition import run_transaction
from mpsnode.consensus.tx import CommitUpdate, JoinTask, RevealUpdate, SignedTx, Transfer
from mpsnode.node.connection import Client


class _Unread(Exception):
    """The tx read a key that was not fetched: no forecast."""


@dataclass(frozen=True, slots=True)
class Forecast:
    """What the tx would get at the next block: its receipt, and ``failure`` when its effect would
    fail; or ``invalid``, the reason the node would refuse it (nonce, fee, fields)."""

    receipt: Receipt | None = None
    failure: TxFailure | None = None
    invalid: InvalidTransaction | None = None


def _keys(client: Client, stx: SignedTx, sender_tasks: tuple[int, ...]) -> list[bytes]:
    assert client.genesis is not None
    body = stx.tx.body
    keys = {
        GLOBALS_KEY,
        account_key(stx.tx.sender),
        account_key(client.genesis.fee_recipient),
        account_key(client.genesis.treasury),
    }
    keys.update(task_key(t) for t in sender_tasks)
    if isinstance(body, Transfer):
        keys.add(account_key(body.to))
    if isinstance(body, (JoinTask, CommitUpdate, RevealUpdate)):
        keys.add(task_key(body.task_id))
    if isinstance(body, (CommitUpdate, RevealUpdate)):
        keys.add(commitment_key(body.task_id, stx.tx.sender))
    if isinstance(body, RevealUpdate):
        keys.update(
            (
                update_key(body.task_id, stx.tx.sender),
                duplicate_key(body.task_id, H(UPDATE, body.delta)),
            )
        )
    return sorted(keys)


async def preflight(client: Client, stx: SignedTx) -> Forecast | None:
    """Run ``stx`` on the node's proven head state; None when it reads state this cannot foresee."""
    assert client.genesis is not None
    sender = await client.get_state(account_key(stx.tx.sender))
    tasks = Account.decode(sender.value).tasks if sender.value is not None else ()
    values: dict[bytes, bytes | None] = {}
    for key in _keys(client, stx, tasks):
        values[key] = (await client.get_state(key)).value

    def read(key: bytes) -> bytes | None:
        if key not in values:
            raise _Unread(key)
        return values[key]

    status = await client.status()
    env = BlockEnv(client.genesis.config(), status.height + 1, status.timestamp_ms + 1)
    try:
        receipt, failure = run_transaction(State(read), env, stx)
        return Forecast(receipt, failure)
    except NonceMismatch as exc:
        if exc.got > exc.expected:
            return None  # it waits behind the sender's pending txs, which the head state does not show
        return Forecast(invalid=exc)
    except InvalidTransaction as exc:
        return Forecast(invalid=exc)
    except _Unread:
        return None
