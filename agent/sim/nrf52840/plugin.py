"""pyOCD entry point (group ``pyocd.probe``, name ``sim``); deliberately tiny.

pyOCD imports this module while ``import pyocd`` is still running. If this module imported pyOCD
at the top and someone imported it before pyOCD, pyOCD's loader would re-enter it half-initialised.
So the plugin class is resolved lazily (PEP 562): by then pyOCD's plugin machinery is loaded.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "SimProbePlugin":
        from agent.sim.nrf52840.entry import SimProbePlugin

        return SimProbePlugin
    raise AttributeError(name)
