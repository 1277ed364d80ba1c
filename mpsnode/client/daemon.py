"""The client daemon: one staked client that follows a task's rounds and submits one trained update each.

``run_client(config)`` is what ``mpsnode client run`` runs (and what the demo runs for each of its
clients, as trio tasks in one process). For one key and one task it:

1. connects to the node (sequencer or verifier that forwards txs) and recovers its nonce;
2. stakes up to ``config.stake`` if its bonded stake is lower, and joins the task while it is joining;
3. follows the chain (a block subscription wakes it; every state read is a proven query): each time
   the task opens a round it has not submitted to, it fetches the global model with its
   sparse-Merkle proof against a sequencer-signed header (``Client.model``), trains
   ``local_epochs`` on its own data (``mpsnode.fl.LocalLearner``), quantizes the change to int16,
   draws a random salt and sends ``COMMIT_UPDATE`` (the commitment alone); once the round's reveal
   phase opens it sends ``REVEAL_UPDATE`` (the delta and the salt) once;
4. stops when the task completes or expires, or when it is no longer a participant (slashed, or
   removed after missing max_missed_rounds rounds in a row).

No double submission, across reconnects and restarts. Before a signed commitment is sent it is
written to a journal file (``state_dir``, fsynced) with the delta and salt it commits to, keyed by
round; the reveal is journaled the same way before it is sent. A round with a journal entry is
never trained or committed again, and its reveal opens the journaled commitment: after a reconnect,
or a restart of the client process, each journaled tx whose fate is unknown is resubmitted (same
bytes, same nonce); the node answers "already known" if it holds it, and the chain refuses a second
use of a nonce in any case. ``Wallet.recover`` does the same for any other
tx signed but not acknowledged. When the node goes away (a sequencer crash or restart), the client
reconnects with a capped backoff for up to ``config.reconnect_for`` seconds.

``config.attacker`` turns the client into an attacker. FOR EVALUATION ONLY (the demo, benchmarks):
an injected ``Attacker`` (``mpsnode.fl.attacks.Attacker``) replaces the honest update. Attacks that need the other
clients' updates (``free_rider_copy``, ``alie``, ``ipm_*``, the adaptive ones) read what is public
when they commit: the previous round's revealed updates, which stay in state (with proofs) until
the reveal phase opens. Nobody can see the current round's updates before committing.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from mpsnode.client.wallet import Wallet
from mpsnode.consensus import crypto
from mpsnode.consensus.errors import MpsError, NonceMismatch
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.hashing import MODEL, H
from mpsnode.consensus.limits import MIN_SCORED_UPDATES
from mpsnode.consensus.state import RoundPhase, Task, TaskStatus, update_key
from mpsnode.consensus.tx import JoinTask, SignedTx, Stake, commit_reveal, decode_signed_tx
from mpsnode.fl import Dataset, LocalLearner, LocalUpdate, TrainConfig, quantize, weights_from_bytes
from mpsnode.fl.data import check_fits
from mpsnode.fl.flower import FlowerLearner, detect_layout
from mpsnode.fl.rounds import Attacker, RoundView
from mpsnode.node.connection import Client, ConnectionLost, connect
from mpsnode.node.errors import Overloaded, ShuttingDown, SlowPeer, TruncatedFrame
from mpsnode.node.lock import ExclusiveLock

# Errors after which the client reconnects: the node went away or asked it to come back later.
TRANSIENT = (
    OSError,
    ConnectionLost,
    TruncatedFrame,  # the node died while sending
    trio.TooSlowError,
    trio.BrokenResourceError,
    ShuttingDown,
    Overloaded,
    SlowPeer,
)


class ClientStopped(MpsError):
    """A client daemon cannot go on with its task (not joinable, a tx of its failed, no node reachable)."""

    code = 800


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything one client needs. ``data`` is its own training shard (never sent anywhere)."""

    node: str  # HOST:PORT of the sequencer
    key: crypto.Keypair
    task_id: int
    data: Dataset | None  # None: a Flower client (``flower``) holds its own data
    genesis: Genesis | None = None  # None: fetched from the node and trusted on first use
    state_dir: Path | None = None  # the submission journal lives here (None: in memory only)
    stake: int | None = None  # bond up to this much before joining (None: the chain's min_stake)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # the learner's minibatch order
    attacker: Attacker | None = None  # EVALUATION ONLY: e.g. mpsnode.fl.attacks.Attacker, injected
    reconnect_for: float = 120.0  # give up after this long without a working connection
    timeout: float = 60.0  # connect / receipt waits
    flower: Any = None  # a Flower NumPyClient that trains instead of the native learner (fl.flower)
    flower_layout: str | None = None  # its parameters' layout (None: read off its parameters)


def _loggable(metrics: dict[str, Any]) -> dict[str, Any]:
    """A client's metrics as JSON can carry them: numbers rounded, anything else as its text."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, (int, float, np.integer, np.floating)):
            number = float(value)
            out[str(key)] = round(number, 6) if math.isfinite(number) else str(number)
        else:
            out[str(key)] = str(value)[:200]
    return out


@dataclass(slots=True)
class RoundRecord:
    """What the client did in one round (the journal holds each tx before it is sent)."""

    round: int
    tx: str  # the signed COMMIT_UPDATE, hex of its canonical bytes
    tx_id: str
    nonce: int
    proven_height: int = 0  # the header whose state root proved the model trained from
    state_root: str = ""
    model_hash: str = ""  # H(mps-model, weights) of that model
    loss: float = 0.0  # NaN when nothing was trained (a free rider)
    clipped: int = 0
    attack: str = ""
    outcome: str = (
        ""  # the commitment's: "" until known; then "ok", the failure's code name, or "dropped: ..."
    )
    delta: str = ""  # hex of the int16 delta committed to
    salt: str = ""  # hex of the 32-byte salt
    reveal_tx: str = ""  # the signed REVEAL_UPDATE once the reveal phase opened
    reveal_tx_id: str = ""
    reveal_nonce: int = -1
    reveal_outcome: str = ""

    def sent(self) -> list[tuple[str, str, str]]:
        """``(what, tx hex, tx id)`` of each tx signed for this round."""
        out = [("commit", self.tx, self.tx_id)]
        if self.reveal_tx:
            out.append(("reveal", self.reveal_tx, self.reveal_tx_id))
        return out

    def outcome_of(self, what: str) -> str:
        return self.outcome if what == "commit" else self.reveal_outcome

    def set_outcome(self, what: str, outcome: str) -> None:
        if what == "commit":
            self.outcome = outcome
        else:
            self.reveal_outcome = outcome

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


@dataclass(slots=True)
class ClientResult:
    address: bytes
    task_id: int
    status: str  # the task's final status, or "removed" when this client left it (slashed or silent)
    rounds: dict[int, RoundRecord]
    reconnects: int
    accuracy_bps: int


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A line of the client's progress: ``kind`` plus its fields (printed by the CLI, shown by the demo)."""

    kind: str
    address: bytes
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "address": self.address.hex(), **self.fields}


# ---------------------------------------------------------------------------------------------
# The journal: signed submissions, on disk before they are sent


class Journal:
    """Round -> the signed COMMIT_UPDATE (with its delta and salt) and REVEAL_UPDATE of one client in
    one task, written atomically (fsync + rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rounds: dict[int, RoundRecord] = {}
        # one client daemon per journal: a second would sign its own updates for the same rounds
        self.lock = ExclusiveLock(path.with_suffix(".lock"), "client daemon").acquire() if path else None
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text())
                self.rounds = {int(r): RoundRecord(**rec) for r, rec in raw["rounds"].items()}
            except (ValueError, KeyError, TypeError) as exc:
                self.close()
                raise ValueError(
                    f"{path}: not a client journal ({exc}); move it away to start afresh"
                ) from None

    @classmethod
    def for_client(cls, state_dir: Path | None, genesis_hash: bytes, address: bytes, task_id: int) -> Journal:
        """The journal of ``address`` in ``task_id`` on the chain of ``genesis_hash`` (a file per all three)."""
        if state_dir is None:
            return cls(None)
        return cls(Path(state_dir) / f"{genesis_hash.hex()[:12]}-{address.hex()[:16]}-task{task_id}.json")

    def close(self) -> None:
        """Let another client daemon take this journal."""
        if self.lock is not None:
            self.lock.release()

    def record(self, rec: RoundRecord) -> None:
        self.rounds[rec.round] = rec
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps(
            {"rounds": {str(r): rec.to_json() for r, rec in sorted(self.rounds.items())}}, indent=1
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # not a network error: never retried as one
            raise ClientStopped(f"cannot write the submission journal {self.path}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The daemon


class _Runner:
    def __init__(
        self,
        config: ClientConfig,
        on_event: Callable[[ClientEvent], None] | None,
        limiter: trio.CapacityLimiter | None,
    ) -> None:
        self.cfg = config
        self.address = config.key.address
        self.on_event = on_event
        self.limiter = limiter
        self.genesis = config.genesis
        self.wallet: Wallet | None = None
        self.journal = Journal(None)  # opened on the first connection, once the chain is known
        self.learner: LocalLearner | FlowerLearner | None = None
        self.joined = False  # seen among the task's participants
        self.reconnects = 0
        self.seen_joined = -1  # participants when "waiting" was last said
        self.seen_closed: tuple[int, int] | None = None  # (rounds_closed, billed_rounds) at the last look

    def emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(ClientEvent(kind, self.address, fields))

    # connection loop ---------------------------------------------------------------------------------
    async def run(self) -> ClientResult:
        delay = 0.2
        lost_since: float | None = None
        while True:
            try:
                async with connect(self.cfg.node, genesis=self.genesis, timeout=self.cfg.timeout) as client:
                    self.genesis = client.genesis
                    if lost_since is not None:
                        self.reconnects += 1
                        self.emit("reconnected", after_s=round(trio.current_time() - lost_since, 2))
                    lost_since, delay = None, 0.2
                    return await self.session(client)
            except TRANSIENT as exc:
                if self.wallet is None and isinstance(exc, OSError):  # never connected: say so at once
                    raise ClientStopped(
                        f"cannot reach the node at {self.cfg.node}: {exc.strerror or exc}; is it running there? "
                        f"(once connected, a lost node is retried for {self.cfg.reconnect_for:.0f} s)"
                    ) from None
                now = trio.current_time()
                if lost_since is None:
                    lost_since = now
                    self.emit("disconnected", reason=f"{type(exc).__name__}: {exc}")
                if now - lost_since > self.cfg.reconnect_for:
                    raise ClientStopped(
                        f"no working connection to {self.cfg.node} for "
                        f"{self.cfg.reconnect_for:.0f} s (last: {exc})"
                    ) from None
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def session(self, client: Client) -> ClientResult:
        if self.wallet is None:
            assert client.genesis is not None
            self.wallet = Wallet(self.cfg.key, client.chain_id, client.params)
            self.journal = Journal.for_client(
                self.cfg.state_dir, client.genesis.hash(), self.address, self.cfg.task_id
            )
        await self.resubmit_journal(client)
        refused = await self.wallet.recover(client)
        for stx, exc in refused:
            self.emit(
                "refused", nonce=stx.tx.nonce, tx_kind=stx.tx.kind.name, code=exc.code, reason=exc.reason
            )
        status = await client.status()
        # lossy: a round's training may outlast the buffer, and this connection's replies must not wait
        # behind pushes nobody reads; _next_block skips to the newest block anyway
        async with client.subscribe(from_height=status.height + 1, lossy=True) as blocks:
            await self.ensure_joined(client, blocks)
            while True:
                result = await self.step(client, blocks)
                if result is not None:
                    return result
                await _next_block(blocks)

    async def resubmit_journal(self, client: Client) -> None:
        """Send again every journaled tx whose fate is unknown: the same tx, so the same nonce."""
        for rec in self.journal.rounds.values():
            for what, tx, tx_id in rec.sent():
                if rec.outcome_of(what):
                    continue
                outcome = await client.receipt(bytes.fromhex(tx_id))
                if outcome.state != "unknown":
                    continue
                nonce = decode_signed_tx(bytes.fromhex(tx)).tx.nonce
                try:
                    await client.submit(bytes.fromhex(tx))
                    self.emit("resubmitted", round=rec.round, tx=what, tx_id=tx_id, nonce=nonce)
                except NonceMismatch as exc:
                    rec.set_outcome(what, f"lost: nonce {nonce} was used by another tx ({exc.reason})")
                    self.journal.save()
                    self.emit("lost", round=rec.round, tx=what, nonce=nonce, reason=exc.reason)

    # joining -------------------------------------------------------------------------------------------
    async def ensure_joined(self, client: Client, blocks: trio.MemoryReceiveChannel[Any]) -> None:
        """Stake (up to ``config.stake``) and join, unless already a participant or the task is past joining."""
        await self.settle(client, blocks)
        task = await self.read_task(client)
        if self.address in task.participants:
            self.joined = True
            return
        if task.status != TaskStatus.JOINING:
            if self.journal.rounds or task.status != TaskStatus.ACTIVE:
                return  # we took part before (removed since) or the task is over: step() reports it
            raise ClientStopped(
                f"task {task.task_id} is {task.status.name} and this client is not a participant"
            )
        try:  # nothing is signed for data or a model that cannot train this task
            if self.cfg.flower is not None:
                detect_layout(self.cfg.flower, task.arch, self.cfg.flower_layout)
            elif self.cfg.data is not None:
                check_fits(self.cfg.data, task.arch, "the client's data")
        except ValueError as exc:
            raise ClientStopped(str(exc)) from None
        params = client.params
        target = max(self.cfg.stake or params.min_stake, params.min_stake)
        account = (await client.account(self.address)).value
        if account.bonded < target:
            await self.send_and_wait(client, Stake(target - account.bonded), "staked")
        await self.send_and_wait(client, JoinTask(self.cfg.task_id), "joined")
        self.joined = True

    async def settle(self, client: Client, blocks: trio.MemoryReceiveChannel[Any]) -> None:
        """Wait until none of this client's txs is pending, so the proven state is the whole story."""
        while (await client.nonce(self.address)).pending:
            await _next_block(blocks)

    async def send_and_wait(self, client: Client, body: Any, what: str) -> None:
        assert self.wallet is not None
        stx = await self.wallet.send(client, body)
        outcome = await client.wait_receipt(stx.tx_id, timeout=self.cfg.timeout)
        if not outcome.ok:
            why = (
                outcome.receipt.status_name
                if outcome.receipt is not None
                else f"{outcome.state}: {outcome.reason}"
            )
            raise ClientStopped(f"{stx.tx.kind.name} for task {self.cfg.task_id} failed: {why}")
        self.emit(what, height=outcome.height, tx_id=stx.tx_id.hex())

    async def read_task(self, client: Client) -> Task:
        task = (await client.task(self.cfg.task_id)).value
        if task is None:
            raise ClientStopped(f"there is no task {self.cfg.task_id} on this chain")
        return task

    # following rounds ----------------------------------------------------------------------------------
    def report_progress(self, task: Task) -> None:
        """Say what changed since the last look: clients joined while joining (with the deadline), and
        each closed round, a void one (fewer than 3 updates: no aggregation) said as such."""
        if task.status == TaskStatus.JOINING:
            joined = len(task.participants)
            if joined != self.seen_joined:
                self.seen_joined = joined
                self.emit(
                    "waiting", joined=joined, min_clients=task.min_clients, join_deadline=task.join_deadline
                )
            return
        closed, billed = task.rounds_closed, task.billed_rounds
        if self.seen_closed is None:
            self.seen_closed = (closed, billed)
            return
        void = (closed - self.seen_closed[0]) - (billed - self.seen_closed[1])
        if closed > self.seen_closed[0]:
            if void > 0:
                self.emit(
                    "round_void",
                    rounds=void,
                    rounds_closed=closed,
                    needs=MIN_SCORED_UPDATES,
                    participants=len(task.participants),
                    accuracy_bps=task.accuracy_bps,
                )
            if billed > self.seen_closed[1]:
                self.emit("round_closed", rounds_closed=closed, accuracy_bps=task.accuracy_bps)
        self.seen_closed = (closed, billed)

    async def step(self, client: Client, blocks: trio.MemoryReceiveChannel[Any]) -> ClientResult | None:
        """Look at the task once; submit if a new round is open. A result ends the run."""
        await self.check_outcomes(client)
        task = await self.read_task(client)
        self.report_progress(task)
        if task.status in (TaskStatus.COMPLETED, TaskStatus.EXPIRED):
            await self.check_outcomes(client)  # the last round's update landed after the check above
            return self.finish(task, task.status.name.lower())
        if task.status != TaskStatus.ACTIVE:
            return None
        if self.address not in task.participants:
            if self.joined or self.journal.rounds:
                await self.check_outcomes(client)
                return self.finish(task, "removed")
            raise ClientStopped(f"task {task.task_id} started without this client")
        self.joined = True
        rec = self.journal.rounds.get(task.round)
        if task.phase == RoundPhase.COMMIT:
            if rec is None and self.address not in task.committed:
                await self.commit_round(client, blocks, task)
        elif (
            rec is not None
            and not rec.reveal_tx
            and self.address in task.committed
            and self.address not in task.submitted
        ):
            await self.reveal_round(client, task, rec)
        return None

    async def check_outcomes(self, client: Client) -> None:
        for rec in self.journal.rounds.values():
            for what, _, tx_id in rec.sent():
                if rec.outcome_of(what):
                    continue
                outcome = await client.receipt(bytes.fromhex(tx_id))
                if outcome.state == "included" and outcome.receipt is not None:
                    rec.set_outcome(what, "ok" if outcome.receipt.ok else outcome.receipt.status_name)
                elif outcome.state == "dropped":
                    rec.set_outcome(what, f"dropped: {outcome.reason}")
                else:
                    continue
                self.journal.save()
                self.emit(
                    outcome.state,
                    round=rec.round,
                    tx=what,
                    height=outcome.height,
                    outcome=rec.outcome_of(what),
                )

    async def commit_round(self, client: Client, blocks: trio.MemoryReceiveChannel[Any], task: Task) -> None:
        proven = await client.model(task.task_id)  # task and model, proven at one signed header
        ptask, blob = proven.value
        if ptask.status != TaskStatus.ACTIVE or ptask.round != task.round or ptask.phase != RoundPhase.COMMIT:
            return  # the round moved on between the two reads: look again at the next block
        weights = weights_from_bytes(blob, ptask.arch)
        started = trio.current_time()
        delta, loss, clipped = await self.compute_delta(client, blocks, ptask, weights)
        if delta is None:
            return
        train_s = round(trio.current_time() - started, 3)
        metrics = getattr(self.learner, "last_metrics", None)  # a Flower client's fit and evaluate metrics
        fresh = await self.read_task(client)
        if (
            fresh.status != TaskStatus.ACTIVE
            or fresh.round != ptask.round
            or fresh.phase != RoundPhase.COMMIT
        ):
            # the commit phase ended while this client trained: a commitment now would fail and cost
            # its fee, so nothing is signed; the next round is trained from its own model
            self.emit("late", round=ptask.round, train_s=train_s, deadline=ptask.round_deadline)
            return
        assert self.wallet is not None
        delta_bytes = delta.astype("<i2").tobytes()
        salt = secrets.token_bytes(32)
        commit, _ = commit_reveal(client.chain_id, task.task_id, ptask.round, self.address, delta_bytes, salt)
        stx = self.wallet.sign(commit)
        rec = RoundRecord(
            ptask.round,
            stx.encode().hex(),
            stx.tx_id.hex(),
            stx.tx.nonce,
            proven.height,
            proven.header.state_root.hex(),
            H(MODEL, blob).hex(),
            float(loss),
            int(clipped),
            self.cfg.attacker.name if self.cfg.attacker is not None else "",
            delta=delta_bytes.hex(),
            salt=salt.hex(),
        )
        self.journal.record(rec)  # on disk before it is sent: this round is never trained or committed again
        await self.wallet.submit(client, stx)
        self.emit(
            "committed",
            round=rec.round,
            tx_id=rec.tx_id,
            nonce=rec.nonce,
            proven_height=rec.proven_height,
            loss=None if math.isnan(rec.loss) else round(rec.loss, 4),
            clipped=rec.clipped,
            train_s=train_s,
            **({"metrics": _loggable(metrics)} if metrics else {}),
            **({"attack": rec.attack} if rec.attack else {}),
        )

    async def reveal_round(self, client: Client, task: Task, rec: RoundRecord) -> None:
        """Open the journaled commitment: sign REVEAL_UPDATE, journal it, send it."""
        assert self.wallet is not None
        _, reveal = commit_reveal(
            client.chain_id,
            task.task_id,
            rec.round,
            self.address,
            bytes.fromhex(rec.delta),
            bytes.fromhex(rec.salt),
        )
        stx = self.wallet.sign(reveal)
        rec.reveal_tx, rec.reveal_tx_id, rec.reveal_nonce = stx.encode().hex(), stx.tx_id.hex(), stx.tx.nonce
        self.journal.save()  # on disk before it is sent
        await self.wallet.submit(client, stx)
        self.emit("revealed", round=rec.round, tx_id=rec.reveal_tx_id, nonce=rec.reveal_nonce)

    async def compute_delta(
        self, client: Client, blocks: trio.MemoryReceiveChannel[Any], task: Task, weights: np.ndarray
    ) -> tuple[np.ndarray | None, float, int]:
        """The int16 delta to submit this round, with the training loss and the clipped count."""
        learner = self.get_learner(task)

        async def train() -> LocalUpdate:
            return await trio.to_thread.run_sync(
                learner.train_round, weights, task.scale_bits, task.local_epochs, limiter=self.limiter
            )

        attacker = self.cfg.attacker
        if attacker is None:
            update = await train()
            return update.delta, update.loss, update.clipped

        async def observe() -> tuple[bool, np.ndarray | None]:
            others = await self.observe_previous(client, task)
            fresh = await self.read_task(client)
            still_open = fresh.status == TaskStatus.ACTIVE and fresh.round == task.round
            return still_open and fresh.phase == RoundPhase.COMMIT, others

        view = RoundView(task, self.address, train, observe, client.params, weights)
        return await attacker.craft(view)

    def get_learner(self, task: Task) -> LocalLearner | FlowerLearner:
        if self.learner is None and self.cfg.flower is not None:
            self.learner = FlowerLearner(self.cfg.flower, task.arch, self.cfg.train, self.cfg.flower_layout)
        if self.learner is None:
            data = self.cfg.data
            if data is None:
                raise ClientStopped("the client has neither data nor a Flower client to train with")
            if self.cfg.attacker is not None:
                data = self.cfg.attacker.poison_data(data)
            self.learner = LocalLearner(data, task.arch, self.cfg.train, seed=self.cfg.seed)
        return self.learner

    async def observe_previous(self, client: Client, task: Task) -> np.ndarray | None:
        """The other participants' updates of the last closed round (public until the reveal phase
        opens; proven), as float changes."""
        rows = []
        for address in task.previous:
            if address == self.address:
                continue
            proven = await client.get_state(update_key(task.task_id, address))
            if proven.value is None:
                continue
            q = np.frombuffer(proven.value[32:], dtype="<i2")  # value = H(mps-update, delta) || delta
            rows.append(quantize.dequantize(q.astype(np.int32), task.scale_bits))
        return np.stack(rows) if rows else None

    # --------------------------------------------------------------------------------------------------
    def finish(self, task: Task, status: str) -> ClientResult:
        self.emit("finished", status=status, accuracy_bps=task.accuracy_bps, rounds=task.rounds_closed)
        return ClientResult(
            self.address, task.task_id, status, dict(self.journal.rounds), self.reconnects, task.accuracy_bps
        )


async def _next_block(blocks: trio.MemoryReceiveChannel[Any]) -> None:
    """Wait for the next pushed block and skip to the newest one; a closed subscription is a lost link."""
    try:
        await blocks.receive()
    except (trio.EndOfChannel, trio.ClosedResourceError):
        raise ConnectionLost("the block subscription ended") from None
    while True:
        try:
            blocks.receive_nowait()
        except trio.WouldBlock:
            return
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionLost("the block subscription ended") from None


async def run_client(
    config: ClientConfig,
    on_event: Callable[[ClientEvent], None] | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> ClientResult:
    """Follow ``config.task_id`` to its end; see the module docstring. ``limiter`` bounds training threads."""
    runner = _Runner(config, on_event, limiter)
    try:
        return await runner.run()
    finally:
        runner.journal.close()


def signed_update(record: RoundRecord) -> SignedTx | None:
    """The journaled REVEAL_UPDATE of a round, decoded (None before the reveal; audits and tests)."""
    return decode_signed_tx(bytes.fromhex(record.reveal_tx)) if record.reveal_tx else None


def signed_commitment(record: RoundRecord) -> SignedTx:
    """The journaled COMMIT_UPDATE of a round, decoded."""
    return decode_signed_tx(bytes.fromhex(record.tx))
