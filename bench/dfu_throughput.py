"""The USB-DFU programmer against the transfer floor of the simulated device's timing model.

The simulated STM32F4 keeps real time (``DfuTiming`` on): every control transfer takes its USB
full-speed time (64-byte packets, 13 transactions a 1 ms frame, SETUP and status stages
included), and every erase and block write keeps the device busy for the ``bwPollTimeout`` it
reports (RM0090 typical times: 1 s per 128 KiB sector, 16 us a word). The floor is the least a
DfuSe host must exchange for the same work, computed from that model: per erased sector a DNLOAD
and two GETSTATUS around the erase time; one address pointer per region (a DNLOAD, two
GETSTATUS); per written 2 KiB block a DNLOAD, a GETSTATUS, the program time and a GETSTATUS; for
the read-back an address pointer, one ABORT and one UPLOAD per block. Nothing the client adds
(its own status checks, Python, the worker thread hop) is in the floor.

Images, each at 0x08040000 (two 128 KiB sectors) and 256 KiB long:

- dense: random bytes, every block written;
- sparse: a 16 KiB head and one 2 KiB block every 32 KiB, the rest 0xFF (the client sends only
  the blocks holding data; the device's blocks are erased already).

Each round places a fresh board, connects (not timed), then times write and read-back. Figures
are medians over ``--rounds``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from agent.hw.programmer import ConnectOptions, Region
from agent.hw.stm32_dfu import Stm32DfuProgrammer
from agent.sim.stm32_dfu import DfuBoard, DfuTiming, SimDfuDevice, SimUsbBus
from agent.sim.stm32_dfu.descriptors import TRANSFER_SIZE
from agent.sim.stm32_dfu.timing import erase_s, poll_ms, program_s, transfer_s

BASE = 0x0804_0000
SECTOR = 128 * 1024
SIZE = 2 * SECTOR
STATUS = 6  # GETSTATUS answers six bytes


def dense_image() -> bytes:
    return os.urandom(SIZE)


def sparse_image() -> bytes:
    image = bytearray(b"\xff" * SIZE)
    image[: 16 * 1024] = os.urandom(16 * 1024)
    for offset in range(16 * 1024, SIZE, 32 * 1024):
        image[offset : offset + TRANSFER_SIZE] = os.urandom(TRANSFER_SIZE)
    return bytes(image)


def blocks(image: bytes, *, every: bool = False) -> list[int]:
    """Sizes of the blocks a host sends (all of them, or those not all 0xFF)."""
    sizes = []
    for offset in range(0, len(image), TRANSFER_SIZE):
        block = image[offset : offset + TRANSFER_SIZE]
        if every or block != b"\xff" * len(block):
            sizes.append(len(block))
    return sizes


def write_floor(image: bytes, *, every: bool = False) -> float:
    """Least time to erase the image's sectors and send its blocks, in the device's model."""
    exchange = transfer_s(5) + 2 * transfer_s(STATUS)  # a DfuSe command and its two polls
    erase = (len(image) // SECTOR) * (exchange + poll_ms(erase_s(SECTOR)) / 1000)
    pointer = exchange
    sent = sum(transfer_s(size) + 2 * transfer_s(STATUS) + poll_ms(program_s(size)) / 1000
               for size in blocks(image, every=every))
    return erase + pointer + sent


def read_floor(size: int) -> float:
    """Least time to read ``size`` bytes back: pointer, ABORT to dfuIDLE, one UPLOAD a block."""
    pointer = transfer_s(5) + 2 * transfer_s(STATUS)
    uploads = sum(transfer_s(min(TRANSFER_SIZE, size - offset))
                  for offset in range(0, size, TRANSFER_SIZE))
    return pointer + transfer_s(0) + uploads


@dataclass
class Round:
    write_s: float
    read_s: float
    blocks_sent: int

    @property
    def total_s(self) -> float:
        return self.write_s + self.read_s


async def one_round(device: SimDfuDevice, bus: SimUsbBus, image: bytes) -> Round:
    device.place_new_board(DfuBoard.blank())
    programmer = Stm32DfuProgrammer(usb_path=bus.path(device), usb_backend=bus)
    region = Region("image", BASE, len(image))
    await programmer.connect(ConnectOptions(target="stm32f405"))
    start = time.perf_counter()
    await programmer.write(region, image)
    written = time.perf_counter()
    back = await programmer.read(region)
    done = time.perf_counter()
    await programmer.disconnect()
    programmer.shutdown()
    if back != image:
        raise RuntimeError("read-back does not match the image")
    sent = sum(1 for op in device.history if op.kind == "write")
    return Round(write_s=written - start, read_s=done - written, blocks_sent=sent)


def summary(name: str, rounds: list[Round], image: bytes) -> dict[str, Any]:
    write_s = statistics.median(r.write_s for r in rounds)
    read_s = statistics.median(r.read_s for r in rounds)
    total_s = statistics.median(r.total_s for r in rounds)
    floor_w, floor_r = write_floor(image), read_floor(len(image))
    every_block = write_floor(image, every=True) + floor_r
    figures = {
        "blocks_sent": rounds[0].blocks_sent,
        "write_s": round(write_s, 3), "read_s": round(read_s, 3), "total_s": round(total_s, 3),
        "floor_write_s": round(floor_w, 3), "floor_read_s": round(floor_r, 3),
        "floor_over_agent": round((floor_w + floor_r) / total_s, 3),
        "floor_over_agent_write": round(floor_w / write_s, 3),
        "floor_over_agent_read": round(floor_r / read_s, 3),
        "agent_over_every_block_floor": round(total_s / every_block, 3),
        "excess_ms_per_block": round((total_s - floor_w - floor_r) * 1000
                                     / len(blocks(image, every=True)), 3),
        "rounds_floor_over_agent": [round((floor_w + floor_r) / r.total_s, 3) for r in rounds],
    }
    print(f"{name}: {figures['blocks_sent']} of {len(blocks(image, every=True))} blocks sent; "
          f"write {write_s:.3f} s (floor {floor_w:.3f}), read {read_s:.3f} s "
          f"(floor {floor_r:.3f}); floor/agent {figures['floor_over_agent']} "
          f"(rounds {figures['rounds_floor_over_agent']}), {figures['excess_ms_per_block']} ms "
          "over the floor per 2 KiB block; agent / floor of writing every block "
          f"{figures['agent_over_every_block_floor']}")
    return figures


async def main(rounds: int) -> dict[str, Any]:
    bus = SimUsbBus()
    device = bus.attach(SimDfuDevice(port_numbers=(1, 1), board=DfuBoard.blank(),
                                     timing=DfuTiming(enabled=True)))
    images = {"dense": dense_image(), "sparse": sparse_image()}
    results: dict[str, list[Round]] = {name: [] for name in images}
    for _ in range(rounds):
        for name, image in images.items():
            results[name].append(await one_round(device, bus, image))
    figures = {name: summary(name, results[name], images[name]) for name in images}
    dense_total = figures["dense"]["total_s"]
    figures["sparse_over_dense_agent"] = round(figures["sparse"]["total_s"] / dense_total, 3)
    print(f"sparse / dense, both the agent: {figures['sparse_over_dense_agent']}; "
          f"early polls (a host asking before bwPollTimeout): {device.timing.early_polls}")
    figures["early_polls"] = device.timing.early_polls
    figures["rounds"] = rounds
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments.rounds))
    targets = {"dense_floor_over_agent_min": 0.9, "sparse_over_every_block_floor_max": "< 1"}
    print(json.dumps({"benchmark": "dfu_throughput", "targets": targets, **result}))
