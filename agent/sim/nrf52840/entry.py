"""The pyOCD plugin record for the ``sim`` probe type (kept apart from the probe itself).

pyOCD instantiates every probe plugin on ``import pyocd``; importing the probe (and Unicorn) only
when pyOCD asks for the class keeps ``import pyocd`` cheap for everyone.
"""

from __future__ import annotations

from typing import Any

from pyocd.core.plugin import Plugin


class SimProbePlugin(Plugin):  # type: ignore[misc]
    """Registers :class:`agent.sim.nrf52840.probe.SimProbe` as ``sim:<uid>``."""

    def load(self) -> Any:
        """The probe class."""
        from agent.sim.nrf52840.probe import SimProbe

        return SimProbe

    @property
    def name(self) -> str:
        """Probe type prefix: ``sim:<uid>``."""
        return "sim"

    @property
    def description(self) -> str:
        """One line for ``pyocd list --plugins``."""
        return "fixture-agent simulated probe with a virtual nRF52840"
