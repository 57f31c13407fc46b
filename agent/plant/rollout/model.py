"""A yield-gated rollout: its plan (waves, gate), its states and the decisions taken on the way.

A rollout moves a signed firmware set to stations in waves. Each wave is published, waits until
its stations report the set active, counts the units they program with it, and is judged by the
gate: first-pass yield against the same stations on their previous set, and the rate of one
failure code, once the wave has at least ``min_units``. A failed gate pauses the rollout or rolls
the touched stations back, as the plan says. States are enums with guarded transitions: any other
move is a bug and raises.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.errors import AgentError


class RolloutState(StrEnum):
    """Where a rollout is."""

    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    COMPLETED = "completed"


class WaveState(StrEnum):
    """Where one wave is."""

    PENDING = "pending"
    ACTIVATING = "activating"  # published; waiting for every station to report the set active
    MEASURING = "measuring"  # counting the units of the new set
    PASSED = "passed"
    FAILED = "failed"
    ABORTED = "aborted"


ROLLOUT_MOVES: dict[RolloutState, frozenset[RolloutState]] = {
    RolloutState.AWAITING_APPROVAL: frozenset({RolloutState.RUNNING, RolloutState.ROLLING_BACK}),
    RolloutState.RUNNING: frozenset({RolloutState.PAUSED, RolloutState.ROLLING_BACK,
                                     RolloutState.AWAITING_APPROVAL, RolloutState.COMPLETED}),
    RolloutState.PAUSED: frozenset({RolloutState.RUNNING, RolloutState.ROLLING_BACK}),
    RolloutState.ROLLING_BACK: frozenset({RolloutState.ROLLED_BACK}),
    RolloutState.ROLLED_BACK: frozenset(),
    RolloutState.COMPLETED: frozenset(),
}
WAVE_MOVES: dict[WaveState, frozenset[WaveState]] = {
    WaveState.PENDING: frozenset({WaveState.ACTIVATING, WaveState.ABORTED}),
    WaveState.ACTIVATING: frozenset({WaveState.MEASURING, WaveState.FAILED, WaveState.ABORTED}),
    WaveState.MEASURING: frozenset({WaveState.PASSED, WaveState.FAILED, WaveState.ABORTED}),
    WaveState.PASSED: frozenset(),
    WaveState.FAILED: frozenset({WaveState.ACTIVATING, WaveState.ABORTED}),  # resume retries it
    WaveState.ABORTED: frozenset(),
}
FINISHED = frozenset({RolloutState.ROLLED_BACK, RolloutState.COMPLETED})


class IllegalMove(AgentError):
    """A rollout or wave transition the state machine does not allow."""

    def __init__(self, what: str, current: str, wanted: str) -> None:
        self.what, self.current, self.wanted = what, current, wanted
        super().__init__(f"{what} is {current} and cannot become {wanted}")


class UnexpectedState(IllegalMove):
    """The rollout is in a state the move was not meant for: a person's action on the wrong
    state (resume is not approve), or an engine step after someone else moved the rollout
    since the engine looked."""


def check_rollout_move(current: RolloutState, wanted: RolloutState, *, what: str) -> None:
    """Raise IllegalMove unless ``current`` -> ``wanted`` is allowed."""
    if wanted not in ROLLOUT_MOVES[current]:
        raise IllegalMove(what, current, wanted)


def check_wave_move(current: WaveState, wanted: WaveState, *, what: str) -> None:
    """Raise IllegalMove unless ``current`` -> ``wanted`` is allowed."""
    if wanted not in WAVE_MOVES[current]:
        raise IllegalMove(what, current, wanted)


class Frozen(BaseModel):
    """Frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


GateAction = Literal["pause", "rollback"]
StationName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")]


class Gate(Frozen):
    """When a wave is judged and what makes it fail."""

    min_units: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    max_fpy_drop_pp: Annotated[float, Field(ge=0, le=100)] = 2.0
    failure_code: str | None = "verify_mismatch"
    max_failure_rate_pct: Annotated[float, Field(ge=0, le=100)] = 5.0
    action: GateAction = "pause"
    activation_timeout_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 600.0
    offline_timeout_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 300.0
    approve_each_wave: bool = False


class RolloutPlan(Frozen):
    """What an engineer asked for: a set, its stations in wave order, the wave sizes, the gate."""

    set_id: str
    product: str
    signed_set: str  # the signed set's bytes (JSON text), published unchanged
    stations: Annotated[tuple[StationName, ...], Field(min_length=1, max_length=10_000)]
    waves: Annotated[tuple[str, ...], Field(min_length=1, max_length=32)]
    gate: Gate = Gate()
    target: str = Field(description="how the stations were named: 'group G' or 'stations'")

    @model_validator(mode="after")
    def _sizes(self) -> RolloutPlan:
        if len(set(self.stations)) != len(self.stations):
            raise ValueError("a station is named twice")
        wave_members(self.stations, self.waves)  # raises on a bad size
        return self


WAVE_SIZE = re.compile(r"^(\d{1,6})(%?)$")


def parse_waves(text: str) -> tuple[str, ...]:
    """``1,25%,100%`` -> ('1', '25%', '100%'); ValueError names the bad part."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts:
        raise ValueError("--waves: give wave sizes such as 1,25%,100%")
    for part in parts:
        match = WAVE_SIZE.match(part)
        if match is None or int(match[1]) == 0 or (match[2] and int(match[1]) > 100):
            raise ValueError(f"--waves: {part!r} is neither a station count nor a percentage "
                             "from 1% to 100%")
    return parts


def wave_members(stations: tuple[str, ...], waves: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The stations new in each wave: sizes are cumulative; the last wave takes every station."""
    total, done, out = len(stations), 0, []
    for index, size in enumerate(waves):
        match = WAVE_SIZE.match(size)
        if match is None:
            raise ValueError(f"wave size {size!r} is not understood")
        count = -(-int(match[1]) * total // 100) if match[2] else int(match[1])
        upto = total if index == len(waves) - 1 else max(done, min(total, count))
        if upto > done:
            out.append(stations[done:upto])
        done = upto
    return out


class Figures(Frozen):
    """The numbers a wave was judged on."""

    units: int
    passed_first: int
    fpy_pct: float | None
    baseline_units: int
    baseline_fpy_pct: float | None
    fpy_drop_pp: float | None
    failure_code: str | None
    failure_count: int
    failure_rate_pct: float | None


class Decision(Frozen):
    """One thing the engine (or a person) decided, with the figures behind it."""

    rollout_id: int
    wave: int | None
    at: datetime
    kind: str  # e.g. publish, active, gate_pass, gate_fail, timeout, offline, pause, rollback
    actor: str  # 'engine' or who ran the command
    summary: str
    figures: Figures | None = None


class StationStep(Frozen):
    """One station's part in a rollout."""

    station: str
    wave: int
    previous_set: str | None
    published_at: datetime | None = None
    active_at: datetime | None = None
    rolled_back_at: datetime | None = None


class Wave(Frozen):
    """One wave as stored."""

    index: int
    state: WaveState
    stations: tuple[str, ...]
    started_at: datetime | None = None
    measuring_since: datetime | None = None
    ended_at: datetime | None = None


class Rollout(Frozen):
    """One rollout as stored: plan, state, waves, stations, decisions."""

    rollout_id: int
    plan: RolloutPlan
    state: RolloutState
    current_wave: int
    created_at: datetime
    created_by: str
    waves: tuple[Wave, ...] = ()
    steps: tuple[StationStep, ...] = ()
    decisions: tuple[Decision, ...] = ()

    def wave(self, index: int) -> Wave:
        """Wave ``index`` (0-based)."""
        return self.waves[index]

    def touched(self) -> list[StationStep]:
        """Stations the set was published to."""
        return [s for s in self.steps if s.published_at is not None]
