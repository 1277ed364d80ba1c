"""A sequencer with one consensus rule broken on purpose, for divergence tests (never anything else).

    python tests/sabotage.py RULE sequencer --home DIR ...

patches the named rule in ``mpsnode.stf.round`` and then runs ``mpsnode`` with the remaining
arguments, so the real sequencer daemon builds, signs and serves blocks under the broken rule:

* ``no_slash``: a round closes without the slash the rules demand (flagged clients keep their
  stake and their place in the task);
* ``pay_wrong_client``: at task completion the first rewarded client's payment goes to an address
  that earned nothing (a participant without contribution units, else the task's creator).
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


RULES = {"no_slash": _no_slash, "pay_wrong_client": _pay_wrong_client}

if __name__ == "__main__":
    RULES[sys.argv[1]]()
    from mpsnode.cli.main import main

    sys.exit(main(sys.argv[2:]))
