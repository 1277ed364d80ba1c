"""Chain parameters: fixed at genesis, committed in the genesis state, read by the STF."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mpsnode.consensus.encoding import expect_list, expect_uint

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Params:
    min_stake: int = 1000
    task_base_fee: int = 100
    tx_base_fee: int = 1
    fee_per_kib: int = 0
    unbonding_blocks: int = 50
    slash_bps: int = 5000
    # Flagging rules of round closing (docs/PROTOCOL.md, "Closing a round"), calibrated on
    # bench/robustness.py so that no honest client was ever flagged (margins in docs/FL.md).
    exclude_score_ratio_pct: int = 5000  # any round: leave out Krum scores above 50x the median, no slash
    coherence_gate_bps: int = 2500  # coherent: median over the raw selection of m_i >= 0.25
    slash_score_ratio_coherent_pct: int = 3000  # coherent rounds: slash Krum scores above 30x the median
    slash_direction_bps: int = 1500  # coherent rounds: slash m_i < -0.15
    exclude_direction_bps: int = 1000  # any round: leave m_i < -0.10 out of the aggregate, no slash
    max_missed_rounds: int = 3  # a participant silent this many rounds in a row is removed from the task
    reveal_blocks: int = (
        50  # a round's reveal phase lasts at most this many blocks (ends early once all revealed)
    )
    duplicate_cosine_bps: int = 9500  # updates this alike (cosine >= 0.95) share one contribution
    min_gain_cosine_bps: int = 70  # a positive gain counts only if its cosine with the direction is >= 0.007
    protocol_fee_bps: int = 500
    max_tx_bytes: int = 16 * MIB
    max_block_bytes: int = 256 * MIB
    block_time_ms: int = 200

    def encode(self) -> list[int]:
        """Fixed field order (declaration order) for the genesis commitment."""
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def decode(cls, obj: Any) -> Params:
        """Params from their array in declaration order; ``DecodeError`` naming a bad field."""
        items = expect_list(obj, len(fields(cls)), "params")
        values = {f.name: expect_uint(v, f"params.{f.name}") for f, v in zip(fields(cls), items, strict=True)}
        return cls(**values)

    def to_json(self) -> dict[str, int]:
        """The params by name."""
        return asdict(self)

    def validate(self) -> list[tuple[str, str]]:
        """Problems as (field, why); empty when the parameters are usable."""
        problems: list[tuple[str, str]] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if type(v) is not int or v < 0 or v >= 2**63:
                problems.append((f.name, "must be an integer in 0..2^63-1"))
        if problems:
            return problems
        if self.min_stake < 1:
            problems.append(("min_stake", "must be at least 1"))
        for name in (
            "slash_bps",
            "protocol_fee_bps",
            "slash_direction_bps",
            "coherence_gate_bps",
            "exclude_direction_bps",
            "duplicate_cosine_bps",
            "min_gain_cosine_bps",
        ):
            if getattr(self, name) > 10_000:
                problems.append((name, "basis points must be <= 10000"))
        for name in ("exclude_score_ratio_pct", "slash_score_ratio_coherent_pct"):
            if getattr(self, name) < 100:
                problems.append((name, "must be >= 100 (a ratio to the median score)"))
        if self.max_tx_bytes < 1024:
            problems.append(("max_tx_bytes", "must be at least 1024"))
        if self.max_block_bytes < self.max_tx_bytes:
            problems.append(("max_block_bytes", "must be >= max_tx_bytes"))
        if self.block_time_ms < 1:
            problems.append(("block_time_ms", "must be at least 1"))
        if self.max_missed_rounds < 1:
            problems.append(("max_missed_rounds", "must be at least 1"))
        if self.reveal_blocks < 1:
            problems.append(("reveal_blocks", "must be at least 1"))
        if self.unbonding_blocks < 1:
            problems.append(("unbonding_blocks", "must be at least 1"))
        return problems
