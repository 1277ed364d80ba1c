"""A sequencer with one consensus rule broken on purpose, for divergence tests (never anything else).

    python tests/sabotage.py RULE sequencer --home DIR ...

patches the named rule in ``mpsnode.stf.round`` and then runs ``mpsnode`` with the remaining
arguments, so the real sequencer daemon builds, signs and serves blocks under the broken rule:

* ``no_slash``: a round closes without the slash the rules demand (flagged clients keep their
  stake and their place in the task);
* ``pay_wrong_client``: at task completion the first rewarded client's payment goes to an address
  that earned nothing (a participant without contribution units, else the task's creator);
* ``ignore_deposits``: (settlement mode) the sequencer follows L1 and names fresh L1 origins but
  never credits a deposit, so its blocks pass a deposit's window without it;
* ``wrong_output``: (settlement mode) the blocks are honest, but every output root posted to L1 is
  not the blocks' own.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any


def _no_slash() -> None:
    import mpsnode.consensus.stf.round as rules

    def slash_participant(*args: Any, **kwargs: Any) -> list:
        return []

    rules.slash_participant = slash_participant


def _pay_wrong_client() -> None:
    import mpsnode.consensus.stf.round as rules

    honest = rules.complete_task

    def complete_task(state: Any, env: Any, task: Any) -> list:
        rewarded = {a for a, _ in task.reward_units}
        others = [a for a in task.participants if a not in rewarded] or [task.creator]
        if task.reward_units:
            (_, n), *rest = task.reward_units
            task = replace(task, reward_units=((others[0], n), *rest))
        return honest(state, env, task)

    rules.complete_task = complete_task


def _ignore_deposits() -> None:
    import sequencer.settlement as settlement
    from mpsnode.consensus.settlement import L1Facts

    honest = settlement.Settler.facts

    def facts(self: Any, credited: int) -> L1Facts:
        return replace(honest(self, credited), deposits=())

    settlement.Settler.facts = facts  # type: ignore[method-assign]
    settlement.Settler.has_work = lambda self, credited: (
        self.follower.head - (self.hooks.head_header().l1_origin or 0) >= 1
    )  # keep naming the newest origin


def _wrong_output() -> None:
    import sequencer.daemon as daemon
    from mpsnode.consensus.settlement import keccak256

    honest = daemon.Sequencer.output_at_head

    async def output_at_head(self: Any) -> Any:
        out = await honest(self)
        return replace(out, root=keccak256(b"forged" + out.root))

    daemon.Sequencer.output_at_head = output_at_head  # type: ignore[method-assign]


RULES = {
    "no_slash": _no_slash,
    "pay_wrong_client": _pay_wrong_client,
    "ignore_deposits": _ignore_deposits,
    "wrong_output": _wrong_output,
}

if __name__ == "__main__":
    RULES[sys.argv[1]]()
    from mpsnode.cli.main import main

    sys.exit(main(sys.argv[2:]))
