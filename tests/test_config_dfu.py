"""usb-dfu slots in the station configuration: defaults, the shipped example, slots told apart."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.config import DfuSlot, parse_config
from agent.errors import ConfigError
from tests.helpers import station_raw

ROOT = Path(__file__).resolve().parent.parent


def config_with(tmp_path: Path, *slots: dict[str, Any]) -> Any:
    return parse_config(station_raw(tmp_path, 1883, slots=list(slots)), source="test",
                        base=tmp_path)


def test_the_commented_example_in_station_example_toml_is_a_valid_slot(tmp_path: Path) -> None:
    text = (ROOT / "config" / "station.example.toml").read_text()
    block = re.search(r"# \[\[slots\]\]\n# name = \"c\"\n((?:# .*\n)+)", text)
    assert block is not None, "the usb-dfu example is gone from station.example.toml"
    body = "\n".join(line[2:].split("  #")[0] for line in block.group(0).splitlines()[1:])
    slot = tomllib.loads(body)
    config = config_with(tmp_path, slot)
    (parsed,) = config.slots
    assert isinstance(parsed, DfuSlot)
    assert (parsed.vid, parsed.pid, parsed.usb_path) == (0x0483, 0xDF11, "1-1.3")


def test_defaults_are_st_s_bootloader(tmp_path: Path) -> None:
    (slot,) = config_with(tmp_path, {"name": "d", "backend": "usb-dfu"}).slots
    assert (slot.vid, slot.pid, slot.serial, slot.usb_path) == (0x0483, 0xDF11, None, None)


def test_two_slots_that_could_pick_the_same_device_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, {"name": "d", "backend": "usb-dfu", "usb_path": "1-1.2"},
                    {"name": "e", "backend": "usb-dfu"})
    assert any("usb-dfu slots d and e could pick the same 0483:df11 device" in problem
               for problem in caught.value.problems)
    config_with(tmp_path, {"name": "d", "backend": "usb-dfu", "usb_path": "1-1.2"},
                {"name": "e", "backend": "usb-dfu", "usb_path": "1-1.3"})
    config_with(tmp_path, {"name": "d", "backend": "usb-dfu", "serial": "A"},
                {"name": "e", "backend": "usb-dfu", "serial": "B"})


@pytest.mark.parametrize(("slot", "said"), [
    ({"usb_path": "usb1/port3"}, "slots.0.usb-dfu.usb_path"),
    ({"vid": 0x10000}, "slots.0.usb-dfu.vid"),
    ({"boot0_pin": 17}, "slot d boot0_pin 17 is a fixture pin"),
])
def test_bad_slots_name_the_key(tmp_path: Path, slot: dict[str, Any], said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, {"name": "d", "backend": "usb-dfu", **slot})
    assert any(said in problem for problem in caught.value.problems), caught.value.problems
