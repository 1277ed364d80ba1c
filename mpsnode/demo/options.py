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
    byzantine_f: int | None = None  # None: max(1, min(malicious, (clients - 3) // 2))
    plot: bool = True
    dishonest_sequencer: bool = False  # EVALUATION ONLY: the sequencer forges an output after the task
    keep: bool = False  # leave the network (and its explorer) up after the task, until Ctrl-C

    def f(self) -> int:
        if self.byzantine_f is not None:
            return self.byzantine_f
        return max(1, min(self.malicious, (self.clients - 3) // 2))

    def check(self, attacks: Collection[str]) -> list[str]:
        """Problems with the options, each a sentence a user can act on; ``attacks``: the attack names."""
        problems = []
        if not 5 <= self.clients <= 256:
            problems.append("--clients must be 5..256 (a task with f >= 1 needs at least 2f + 3 = 5 clients)")
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
        most = (self.clients - 3) // 2
        if self.byzantine_f is None and self.malicious > most and not problems:
            problems.append(
                f"{self.clients} clients tolerate at most f = {most} faulty ones (2f + 3 <= clients), "
                f"but --malicious is {self.malicious}: add clients, lower --malicious, or give "
                "--byzantine-f to run with attackers beyond f"
            )
        elif f < 1:
            problems.append("--byzantine-f must be at least 1")
        elif self.clients < 2 * f + 3 and not problems:
            problems.append(
                f"with f = {f} the task needs at least 2f + 3 = {2 * f + 3} clients: add clients or lower "
                "--byzantine-f"
            )
        return problems
