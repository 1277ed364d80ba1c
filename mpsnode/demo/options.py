"""What a demo run is asked to do (``mpsnode demo``'s flags), and the checks on it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DemoOptions:
    clients: int = 10
    malicious: int = 2
    attack: str = "scaled"
    alpha: float | None = 1.0  # None: IID
    target: float = 0.90
    max_rounds: int = 30
    seed: int = 7
    home: str | None = None
    byzantine_f: int | None = None  # None: max(1, min(malicious, (clients - malicious - 3) // 2))
    plot: bool = True

    def f(self) -> int:
        if self.byzantine_f is not None:
            return self.byzantine_f
        return max(1, min(self.malicious, (self.clients - self.malicious - 3) // 2))

    def check(self, attacks: Collection[str]) -> list[str]:
        """Problems with the options, each a sentence a user can act on; ``attacks``: the attack names."""
        problems = []
        if not 5 <= self.clients <= 256:
            problems.append("--clients must be 5..256 (a scored round needs at least 2f + 3 = 5 updates)")
        if not 0 <= self.malicious < self.clients:
            problems.append("--malicious must be 0 .. clients - 1")
        if self.attack not in attacks:
            problems.append(f"--attack must be one of {', '.join(attacks)}")
        if not 0 < self.target <= 1:
            problems.append("--target is a fraction in (0, 1], e.g. 0.9")
        if not 1 <= self.max_rounds <= 1000:
            problems.append("--max-rounds must be 1..1000")
        if self.alpha is not None and not self.alpha > 0:
            problems.append("--alpha must be positive (or 'iid')")
        f = self.f()
        if f < 1:
            problems.append("--byzantine-f must be at least 1")
        elif self.clients - self.malicious < 2 * f + 3 and not problems:
            problems.append(
                f"with f = {f}, a round is scored only with at least {2 * f + 3} updates, but once the "
                f"{self.malicious} attackers are slashed only {self.clients - self.malicious} clients "
                "remain: add clients or lower --malicious / --byzantine-f"
            )
        return problems
