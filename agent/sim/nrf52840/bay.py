"""A slot of the simulated fixture with a virtual nRF52840 behind a ``sim:<uid>`` probe.

The simulated operator places boards through it; the slot's programmer is the real pyOCD backend
(in the station's process or a slot worker), which finds the board through the probe plugin. The
fixture's DUT power relay reaches the board through the probe folder's power file, so any process
sees the part lose power or start afresh.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from agent.config import PyOcdSlot, SimulationSection
from agent.errors import ConfigError
from agent.sim.nrf52840 import boards, power, settings


class Nrf52840Bay:
    """One slot: a probe folder in the board directory, tied to the slot's DUT power."""

    def __init__(self, *, board_dir: Path, probe_uid: str) -> None:
        self.board_dir = board_dir
        self.probe_uid = probe_uid

    def switch_power(self, on: bool) -> None:
        """The fixture's DUT power relay for this slot (wired to the relay pin's changes)."""
        power.switch_power(self.board_dir, self.probe_uid, on)

    @classmethod
    def for_slot(
        cls,
        slot: PyOcdSlot,
        simulation: SimulationSection,
    ) -> Nrf52840Bay:
        """The bay for a ``pyocd`` slot whose probe is ``sim:<uid>``.

        Uses ``simulation.board_dir`` (else ``FIXTURE_AGENT_SIM_DIR``, else a fresh temporary
        folder) and ``simulation.timing``, and makes them the process-wide settings so that the
        probe plugin and child processes agree.
        """
        kind, _, uid = slot.probe.partition(":")
        if kind.lower() != "sim" or not uid:
            raise ConfigError("slots", [f"slot {slot.name}: simulated probe must be sim:<uid>"])
        root = simulation.board_dir or settings.board_dir()
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="fixture-agent-boards-"))
        settings.set_board_dir(root)
        settings.set_timing(simulation.timing)
        return cls(board_dir=root, probe_uid=uid)

    def place_new_board(self, *, locked: bool = False) -> str:
        """Put a fresh blank board in the slot; returns its DEVICEID as 16 lowercase hex digits."""
        device_id = boards.place_new_board(self.board_dir, self.probe_uid, locked=locked)
        return f"{device_id:016x}"
