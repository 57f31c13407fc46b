"""What a person may do to a rollout (command line and console alike), and how it is stored."""

from __future__ import annotations

from dataclasses import dataclass

from agent.plant.rollout.model import RolloutState
from agent.plant.rollout.store import RolloutStore

S = RolloutState


@dataclass(frozen=True)
class Action:
    """One operator action: the state it leads to, and the states it is meant for."""

    to: RolloutState
    done: str
    allowed_from: frozenset[RolloutState]


ACTIONS = {
    "approve": Action(S.RUNNING, "approved", frozenset({S.AWAITING_APPROVAL})),
    "pause": Action(S.PAUSED, "paused", frozenset({S.RUNNING})),
    "resume": Action(S.RUNNING, "resumed", frozenset({S.PAUSED})),
    "abort": Action(S.ROLLING_BACK, "aborted: rolling the touched stations back",
                    frozenset({S.AWAITING_APPROVAL, S.RUNNING, S.PAUSED})),
}


async def apply_action(store: RolloutStore, rollout_id: int, name: str, *, by: str) -> str:
    """Store ``name`` (a key of ACTIONS) as ``by``'s decision; IllegalMove if the state forbids."""
    action = ACTIONS[name]
    await store.move(rollout_id, action.to, kind=name, actor=by,
                     summary=f"{action.done} by {by}", expect=action.allowed_from)
    return f"rollout {rollout_id} {action.done}"
