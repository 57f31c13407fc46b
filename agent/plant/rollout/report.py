"""A rollout as people read it: `plant rollout status` text and the console's JSON."""

from __future__ import annotations

from typing import Any

from agent.plant.rollout.model import Figures, Rollout


def format_figures(figures: Figures) -> str:
    """The numbers behind a decision, on one line."""
    parts = [f"units {figures.units}", f"first-pass {figures.passed_first}",
             f"FPY {_pct(figures.fpy_pct)}",
             f"previous set FPY {_pct(figures.baseline_fpy_pct)} on {figures.baseline_units} units",
             f"drop {'-' if figures.fpy_drop_pp is None else f'{figures.fpy_drop_pp} pp'}"]
    if figures.failure_code:
        parts.append(f"{figures.failure_code} {figures.failure_count} "
                     f"({_pct(figures.failure_rate_pct)})")
    return ", ".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value}%"


def format_rollout(rollout: Rollout) -> str:
    """Plan, waves, stations and every decision with its figures."""
    plan, gate = rollout.plan, rollout.plan.gate
    lines = [
        f"rollout {rollout.rollout_id}: {plan.set_id} ({plan.product}) to {plan.target}: "
        f"{rollout.state.upper()}",
        f"  created {rollout.created_at:%Y-%m-%d %H:%M:%S} by {rollout.created_by}; waves "
        f"{','.join(plan.waves)}; gate: min {gate.min_units} units, FPY drop <= "
        f"{gate.max_fpy_drop_pp:g} pp, {gate.failure_code or 'any code'} <= "
        f"{gate.max_failure_rate_pct:g}%, on fail {gate.action}",
    ]
    steps = {s.station: s for s in rollout.steps}
    for wave in rollout.waves:
        marker = "*" if wave.index == rollout.current_wave else " "
        lines.append(f" {marker}wave {wave.index + 1}: {wave.state:<10} "
                     f"{', '.join(wave.stations)}")
        for station in wave.stations:
            step = steps.get(station)
            if step is None:
                continue
            lines.append(f"      {station}: from {step.previous_set or '-'}"
                         f"{'; published' if step.published_at else ''}"
                         f"{'; active' if step.active_at else ''}"
                         f"{'; rolled back' if step.rolled_back_at else ''}")
    lines.append("  decisions:")
    for d in rollout.decisions:
        where = f"wave {d.wave + 1}" if d.wave is not None else "plan"
        lines.append(f"    {d.at:%H:%M:%S} {where:<7} {d.kind:<11} {d.actor:<8} {d.summary}")
        if d.figures is not None:
            lines.append(f"{'':<33}[{format_figures(d.figures)}]")
    return "\n".join(lines)


def rollout_json(rollout: Rollout) -> dict[str, Any]:
    """For the console: everything but the signed set's bytes."""
    body = rollout.model_dump(mode="json")
    body["plan"].pop("signed_set", None)
    return body
