"""The rollout engine: a long-running plant process that walks every unfinished rollout forward.

Each tick reads every unfinished rollout from the database and takes at most one step per wave:
publish the set to the wave's stations, note who reports it active, judge the wave on its units
once it has enough, then advance, pause or roll back. All state lives in the database, so an
engine restarted mid-rollout carries on from the stored wave; publishing again is harmless (the
set topics are retained and stations recognise a set they hold). A station that does not activate
the set in time, or stays offline mid-wave past the gate's limit, fails the wave: it never counts
as a success.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import aiomqtt

from agent.plant.fleet import FleetWatch
from agent.plant.publish import publish_once, publish_retained
from agent.plant.rollout.lease import EngineLease, LeaseLost, take
from agent.plant.rollout.model import (
    Figures,
    Rollout,
    RolloutState,
    StationStep,
    UnexpectedState,
    WaveState,
)
from agent.plant.rollout.store import RolloutStore, now_utc
from agent.plant.rollout.yields import SetYield, YieldSource, judge
from agent.wire.codec import encode
from agent.wire.messages import Command
from agent.wire.mqtt import BrokerEndpoint, PublishRefused
from agent.wire.topics import StationTopics

log = logging.getLogger(__name__)
RESEND_ROLLBACK_S = 30.0
RUNNING = frozenset({RolloutState.RUNNING})  # what the engine's moves of a running rollout expect


class RolloutEngine:
    """Drives rollouts (see the module doc); ``tick_s`` is how often it looks."""

    def __init__(self, *, store: RolloutStore, yields: YieldSource, fleet: FleetWatch,
                 endpoint: BrokerEndpoint, client_id: str = "plant-rollout",
                 tick_s: float = 1.0, lease: EngineLease | None = None) -> None:
        self._store = store
        self._yields = yields
        self._fleet = fleet
        self._endpoint = endpoint
        self._client_id = client_id
        self._tick_s = tick_s
        self._lease = lease  # None: the caller makes sure this is the only engine
        self._rollback_sent: dict[tuple[int, str], datetime] = {}
        self.changed = asyncio.Event()  # set after every tick that stored something

    async def run(self) -> None:
        """Tick until cancelled, holding the engine lease (standing by while another engine
        holds it); a failed tick is logged and tried again (broker away)."""
        await self._fleet.connected.wait()
        while True:
            if self._lease is not None:
                await take(self._lease)
            try:
                await self._tick_while_leased()
            except LeaseLost as exc:
                log.warning("%s: standing by", exc)
            finally:
                if self._lease is not None:
                    await self._lease.release()

    async def _tick_while_leased(self) -> None:
        while True:
            if self._lease is not None:
                await self._lease.check()
            try:
                await self.tick()
            except (OSError, aiomqtt.MqttError, PublishRefused) as exc:
                # the broker away or refusing (an ACL): nothing is lost, the next tick retries
                log.warning("rollout tick failed, trying again: %s", exc)
            await asyncio.sleep(self._tick_s)

    async def tick(self) -> None:
        """One look at every unfinished rollout."""
        for rollout_id in await self._store.ids(unfinished_only=True):
            rollout = await self._store.load(rollout_id)
            before = len(rollout.decisions)
            try:
                await self._step(rollout)
            except UnexpectedState as exc:  # a command moved it since the load: look again
                log.info("rollout %d changed while the engine looked: %s", rollout_id, exc)
            if len((await self._store.load(rollout_id)).decisions) != before:
                self.changed.set()

    async def _step(self, rollout: Rollout) -> None:
        if rollout.state == RolloutState.ROLLING_BACK:
            await self._roll_back(rollout)
        elif rollout.state == RolloutState.RUNNING:
            wave = rollout.wave(rollout.current_wave)
            if wave.state in (WaveState.PENDING, WaveState.FAILED):
                await self._store.move_wave(rollout.rollout_id, wave.index, WaveState.ACTIVATING,
                                            kind="publish", summary=f"wave {wave.index + 1}: "
                                            f"publishing to {', '.join(wave.stations)}")
            elif wave.state == WaveState.ACTIVATING:
                await self._activating(rollout)
            elif wave.state == WaveState.MEASURING:
                await self._measuring(rollout)
            elif wave.state == WaveState.PASSED:
                await self._advance(rollout)

    async def _activating(self, rollout: Rollout) -> None:
        plan, wave = rollout.plan, rollout.wave(rollout.current_wave)
        steps = {s.station: s for s in rollout.steps}
        waiting = []
        for station in wave.stations:
            step = steps.get(station)
            if step is None or step.published_at is None:
                previous = self._fleet.active_set(station, plan.product)
                await self._store.step(rollout.rollout_id, station, wave=wave.index,
                                       previous_set=previous if previous != plan.set_id else None)
                await publish_retained(self._endpoint, StationTopics(station).firmware_set,
                                       plan.signed_set.encode(), client_id=self._client_id)
                await self._store.step(rollout.rollout_id, station, wave=wave.index,
                                       published=True)
            if self._fleet.active_set(station, plan.product) == plan.set_id:
                if step is None or step.active_at is None:
                    await self._store.step(rollout.rollout_id, station, wave=wave.index,
                                           active=True)
                    await self._store.decide(rollout.rollout_id, wave=wave.index, kind="active",
                                             summary=f"{station} reports {plan.set_id} active")
            else:
                waiting.append(station)
        if not waiting:
            await self._store.move_wave(rollout.rollout_id, wave.index, WaveState.MEASURING,
                                        kind="measure", summary=f"wave {wave.index + 1}: every "
                                        "station runs the set; counting its units")
        elif _older(wave.started_at, plan.gate.activation_timeout_s):
            await self._fail(rollout, kind="timeout", summary=(
                f"wave {wave.index + 1}: {', '.join(waiting)} did not report {plan.set_id} "
                f"active within {plan.gate.activation_timeout_s:g} s"))

    async def _measuring(self, rollout: Rollout) -> None:
        plan, wave, gate = rollout.plan, rollout.wave(rollout.current_wave), rollout.plan.gate
        new = await self._yields.set_yield(stations=wave.stations, set_id=plan.set_id,
                                           failure_code=gate.failure_code,
                                           since=wave.measuring_since)
        offline = [s for s in wave.stations if not self._fleet.online_since(s)[0]]
        gone = [s for s in offline
                if _older(self._fleet.online_since(s)[1], gate.offline_timeout_s)]
        if gone:
            await self._fail(rollout, kind="offline", summary=(
                f"wave {wave.index + 1}: {', '.join(gone)} offline for more than "
                f"{gate.offline_timeout_s:g} s with {new.units} of {gate.min_units} units "
                "counted"))
            return
        if new.units < gate.min_units or offline:
            return  # not judged yet: too few units, or a station away (within its timeout)
        figures = judge(new, await self._baseline(rollout, wave.stations),
                        failure_code=gate.failure_code)
        problems = gate_problems(figures, max_drop=gate.max_fpy_drop_pp,
                                 max_rate=gate.max_failure_rate_pct)
        if problems:
            await self._fail(rollout, kind="gate_fail", figures=figures,
                             summary=f"wave {wave.index + 1} failed the gate: "
                                     f"{'; '.join(problems)}")
            return
        await self._store.move_wave(rollout.rollout_id, wave.index, WaveState.PASSED,
                                    kind="gate_pass", figures=figures,
                                    summary=f"wave {wave.index + 1} passed the gate: "
                                            f"{describe(figures)}")

    async def _baseline(self, rollout: Rollout, stations: tuple[str, ...]) -> SetYield:
        by_set: dict[str, list[str]] = {}
        for step in rollout.steps:
            if step.station in stations and step.previous_set:
                by_set.setdefault(step.previous_set, []).append(step.station)
        units = passed = count = 0
        for set_id, members in by_set.items():
            found = await self._yields.set_yield(stations=tuple(members), set_id=set_id,
                                                 failure_code=rollout.plan.gate.failure_code)
            units, passed, count = (units + found.units, passed + found.passed_first,
                                    count + found.failure_count)
        return SetYield(units, passed, count)

    async def _advance(self, rollout: Rollout) -> None:
        index = rollout.current_wave
        if index + 1 >= len(rollout.waves):
            await self._store.move(rollout.rollout_id, RolloutState.COMPLETED, kind="complete",
                                   summary=f"{rollout.plan.set_id} runs on every station of "
                                           f"{rollout.plan.target}", expect=RUNNING)
            return
        wanted = (RolloutState.AWAITING_APPROVAL if rollout.plan.gate.approve_each_wave
                  else RolloutState.RUNNING)
        await self._store.move(rollout.rollout_id, wanted, kind="advance", next_wave=index + 1,
                               summary=f"next: wave {index + 2}"
                               + (" after approval" if wanted != RolloutState.RUNNING else ""),
                               expect=RUNNING)

    async def _fail(self, rollout: Rollout, *, kind: str, summary: str,
                    figures: Figures | None = None) -> None:
        action = rollout.plan.gate.action
        wanted = RolloutState.PAUSED if action == "pause" else RolloutState.ROLLING_BACK
        await self._store.move(rollout.rollout_id, wanted, kind=kind, figures=figures,
                               wave_to=WaveState.FAILED, expect=RUNNING,
                               summary=f"{summary}; action: {action}")

    async def _roll_back(self, rollout: Rollout) -> None:
        plan, pending = rollout.plan, []
        for step in rollout.touched():
            if step.rolled_back_at is not None:
                continue
            topics = StationTopics(step.station)
            await publish_retained(self._endpoint, topics.firmware_set, b"",
                                   client_id=self._client_id)  # no redelivery of the set
            if self._fleet.active_set(step.station, plan.product) == plan.set_id:
                await self._send_rollback(rollout.rollout_id, step, plan.product)
                pending.append(step.station)
                continue
            await self._store.step(rollout.rollout_id, step.station, wave=step.wave,
                                   rolled_back=True)
            now_on = self._fleet.active_set(step.station, plan.product) or "no set"
            await self._store.decide(rollout.rollout_id, wave=step.wave, kind="rolled_back",
                                     summary=f"{step.station} is off {plan.set_id} "
                                             f"(runs {now_on})")
        if not pending:
            await self._store.move(rollout.rollout_id, RolloutState.ROLLED_BACK,
                                   kind="rolled_back", summary=f"every touched station is off "
                                                               f"{plan.set_id}",
                                   expect=frozenset({RolloutState.ROLLING_BACK}))

    async def _send_rollback(self, rollout_id: int, step: StationStep, product: str) -> None:
        key = (rollout_id, step.station)
        last = self._rollback_sent.get(key)
        if last is not None and not _older(last, RESEND_ROLLBACK_S):
            return
        command = Command(command="rollback", product=product)
        await publish_once(self._endpoint, StationTopics(step.station).command, encode(command),
                           client_id=self._client_id)
        self._rollback_sent[key] = now_utc()
        await self._store.decide(rollout_id, wave=step.wave, kind="rollback",
                                 summary=f"{step.station}: rollback command sent "
                                         f"(back to {step.previous_set or 'its previous set'})")


def gate_problems(figures: Figures, *, max_drop: float, max_rate: float) -> list[str]:
    """Why figures fail a gate (empty: they pass)."""
    problems = []
    if figures.fpy_drop_pp is not None and figures.fpy_drop_pp > max_drop:
        problems.append(f"first-pass yield {figures.fpy_pct}% is {figures.fpy_drop_pp} points "
                        f"below {figures.baseline_fpy_pct}% on the previous set "
                        f"(at most {max_drop:g} allowed)")
    if figures.failure_rate_pct is not None and figures.failure_rate_pct > max_rate:
        problems.append(f"{figures.failure_code} on {figures.failure_count} of {figures.units} "
                        f"units ({figures.failure_rate_pct}%, at most {max_rate:g}% allowed)")
    return problems


def describe(figures: Figures) -> str:
    """The figures in one sentence."""
    base = (f"{figures.baseline_fpy_pct}% on {figures.baseline_units} units of the previous set"
            if figures.baseline_units else "no units on a previous set to compare with")
    return (f"{figures.units} units, first-pass yield {figures.fpy_pct}% ({base}); "
            f"{figures.failure_code or 'failure code'}: {figures.failure_count}")


def _older(moment: datetime | None, seconds: float) -> bool:
    return moment is not None and now_utc() - moment > timedelta(seconds=seconds)
