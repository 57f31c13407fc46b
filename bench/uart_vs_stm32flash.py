"""Agent vs stm32flash on the same simulated STM32F4 bootloader, and vs the line-rate floor.

The simulator runs in its own process (as ``fixture-agent sim uart-bootloader`` would) at
115200 baud with 8E1 framing emulated (11 bits a byte); both hosts open the pty 8N1 because a
pty cannot keep parity. Each run gets a fresh blank board. Two images:

- dense: 64 KiB of random bytes;
- sparse: 256 KiB, mostly 0xFF (a 16 KiB head and a 256-byte block every 16 KiB).

Both tools erase, write and verify by reading back (stm32flash ``-w FILE -v``; the agent
``write`` then ``read`` + SHA-256). The floor is the wire time of the agent's own dense exchange
(every command, address, data and ACK byte at 11 bits) plus the configured turnaround per reply.

A third host runs on the dense image: a bare CPython loop (``bare_write_verify``) that sends the
agent's exact exchange from one thread blocked in read() between replies, with no event loop, no
retries and no timeouts but the port's. It is the fastest a Python host reacts here, so
``dense_bare_over_stm32flash`` is what the language costs and the agent's excess over it is the
agent's own. The simulator times every host turnaround (from its reply's last byte entering the
pty to the host's next byte coming out: the host's reaction plus the pty's delivery both ways);
``dense_turnaround_us`` gives each host's median.

Each tool first makes one untimed run of a small image (stm32flash's binary and the agent's code
paths are then warm alike). The dense image is measured ``--rounds`` times, the tool that goes
first rotating from round to round; its figures are medians over the rounds, and its ratios the
medians of the per-round ratios. Figures are ratios within this run; the last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import statistics
import tempfile
import termios
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import serial

from agent.hw.an3155 import ACK, SYNC, Command, address_frame, checksum, command_frame, data_frame
from agent.hw.programmer import ConnectOptions, Region
from agent.hw.stm32_flash import STM32F40X
from agent.hw.stm32_uart import Stm32UartProgrammer
from agent.sim.stm32_bootloader import Stm32BootloaderSim
from agent.sim.stm32_bootloader.cli import precise_timer_loop

FLASH = 0x0800_0000
BAUD = 115200
FRAME_BITS = 11
# AN3155 bytes per 256-byte block: Write = cmd 2 + ACK + address 5 + ACK + N, data, sum 258 + ACK;
# Read = cmd 2 + ACK + address 5 + ACK + count 2 + ACK + data 256. Three replies each.
WRITE_BLOCK_BYTES = 2 + 1 + 5 + 1 + 258 + 1
READ_BLOCK_BYTES = 2 + 1 + 5 + 1 + 2 + 1 + 256
REPLIES_PER_BLOCK = 3
DENSE_TOOLS = ("stm32flash", "agent", "bare")
SPARSE_TOOLS = ("stm32flash", "agent")


def dense_image() -> bytes:
    return os.urandom(64 * 1024)


def sparse_image() -> bytes:
    image = bytearray(b"\xff" * 256 * 1024)
    image[: 16 * 1024] = os.urandom(16 * 1024)
    for offset in range(16 * 1024, len(image), 16 * 1024):
        image[offset : offset + 256] = os.urandom(256)
    return bytes(image)


def serve(link: str, latency_ms: float, control: Connection) -> None:
    """Child process: the simulator, driven by commands on ``control``."""

    async def main() -> None:
        sim = Stm32BootloaderSim(baud=BAUD, parity="even", latency_ms=latency_ms)
        done = asyncio.Event()

        def on_command() -> None:
            command, *args = control.recv()
            if command == "new-board":
                control.send(sim.place_new_board().uid.hex())
            elif command == "sha256":
                control.send(hashlib.sha256(sim.flash(*args)).hexdigest())
            elif command == "turnarounds":
                control.send(list(sim.line.host_turnarounds))
            else:
                done.set()

        async with sim.serving(Path(link)):
            asyncio.get_running_loop().add_reader(control.fileno(), on_command)
            control.send("ready")
            await done.wait()

    with asyncio.Runner(loop_factory=precise_timer_loop) as runner:
        runner.run(main())


async def run_stm32flash(link: str, image_file: Path) -> float:
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "stm32flash", "-m", "8n1", "-b", str(BAUD), "-w", str(image_file), "-v", link,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"stm32flash failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


async def run_agent(link: str, image: bytes) -> float:
    region = Region("image", FLASH, len(image))
    programmer = Stm32UartProgrammer(port=link, baud=BAUD, parity="none")
    start = time.perf_counter()
    await programmer.connect(ConnectOptions(target="stm32f405"))
    await programmer.write(region, image)
    back = await programmer.read(region)
    await programmer.disconnect()
    elapsed = time.perf_counter() - start
    if hashlib.sha256(back).digest() != hashlib.sha256(image).digest():
        raise RuntimeError("agent read-back does not match the image")
    return elapsed


def bare_write_verify(link: str, image: bytes) -> float:
    """The agent's exchange from a plain blocking loop: CPython's floor for reacting to replies.

    Same commands as the agent (sync, Get, Get ID, the UID, Extended Erase of the sectors the
    image touches, then Write Memory and Read Memory per 256-byte block), every reply awaited and
    checked, from one thread that sits in read() between replies. The kernel times reads out
    (VTIME), so nothing in Python runs while waiting. Run it in a worker thread.
    """
    chip = STM32F40X
    start = time.perf_counter()
    with serial.Serial(link, BAUD) as port:
        fd = port.fileno()
        os.set_blocking(fd, True)
        attributes = termios.tcgetattr(fd)
        attributes[6][termios.VMIN], attributes[6][termios.VTIME] = 0, 20  # 2 s per read()
        termios.tcsetattr(fd, termios.TCSANOW, attributes)

        def exchange(frame: bytes, size: int = 1, *, acked: bool = True) -> bytes:
            if frame:
                os.write(fd, frame)
            reply = b""
            while len(reply) < size:
                more = os.read(fd, size - len(reply))
                if not more:
                    raise RuntimeError(f"bare loop: no reply to {frame[:2].hex()}")
                reply += more
            if acked and reply[0] != ACK:
                raise RuntimeError(f"bare loop: 0x{reply[0]:02X} instead of ACK")
            return reply

        exchange(bytes([SYNC]))
        for query in (Command.GET, Command.GET_ID):
            exchange(command_frame(query))
            count = exchange(b"", acked=False)[0] + 1  # bytes that follow, less one
            exchange(b"", count, acked=False)  # version and commands, or the product id
            exchange(b"")
        exchange(command_frame(Command.READ_MEMORY))
        exchange(address_frame(chip.uid_address))
        exchange(bytes([chip.uid_size - 1, (chip.uid_size - 1) ^ 0xFF]), 1 + chip.uid_size)
        sectors = chip.sectors(FLASH, len(image))
        numbers = b"".join(n.to_bytes(2, "big") for n in [len(sectors) - 1, *sectors])
        exchange(command_frame(Command.EXTENDED_ERASE))
        exchange(numbers + bytes([checksum(numbers)]))
        for offset in range(0, len(image), 256):
            exchange(command_frame(Command.WRITE_MEMORY))
            exchange(address_frame(FLASH + offset))
            exchange(data_frame(image[offset : offset + 256]))
        back = bytearray()
        for offset in range(0, len(image), 256):
            exchange(command_frame(Command.READ_MEMORY))
            exchange(address_frame(FLASH + offset))
            back += exchange(bytes([255, 0]), 257)[1:]
    elapsed = time.perf_counter() - start
    if back != image:
        raise RuntimeError("bare loop read-back does not match the image")
    return elapsed


def floor_seconds(image_size: int, latency_ms: float) -> float:
    """Wire time of writing and reading every block of a dense image, plus one turnaround each."""
    blocks = image_size // 256
    wire = blocks * (WRITE_BLOCK_BYTES + READ_BLOCK_BYTES) * FRAME_BITS / BAUD
    return wire + blocks * 2 * REPLIES_PER_BLOCK * latency_ms / 1e3


async def run_on_new_board(
    control: Connection, link: str, tool: str, image: bytes, image_file: Path
) -> tuple[float, list[float]]:
    """One timed write + verify by ``tool`` on a factory-fresh board; checks the flash after.

    Returns the time and the host turnarounds the simulator saw.
    """
    control.send(("new-board",))
    control.recv()
    if tool == "stm32flash":
        elapsed = await run_stm32flash(link, image_file)
    elif tool == "agent":
        elapsed = await run_agent(link, image)
    else:
        elapsed = await asyncio.to_thread(bare_write_verify, link, image)
    control.send(("sha256", FLASH, len(image)))
    if control.recv() != hashlib.sha256(image).hexdigest():
        raise RuntimeError(f"{tool} left the wrong contents in flash ({image_file.stem})")
    control.send(("turnarounds",))
    return elapsed, control.recv()


async def measure(
    control: Connection,
    link: str,
    folder: Path,
    name: str,
    image: bytes,
    tools: tuple[str, ...],
    rounds: int = 1,
) -> dict[str, Any]:
    image_file = folder / f"{name}.bin"
    image_file.write_bytes(image)
    times: dict[str, list[float]] = {tool: [] for tool in tools}
    turnarounds: dict[str, list[float]] = {tool: [] for tool in tools}
    for round_ in range(rounds):
        shift = round_ % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            elapsed, seen = await run_on_new_board(control, link, tool, image, image_file)
            times[tool].append(elapsed)
            turnarounds[tool] += seen
            print(f"{name:6s} {tool:10s} {elapsed:7.2f} s", flush=True)
    figures: dict[str, Any] = {f"{name}_bytes": len(image)}
    for tool in tools:
        figures[f"{name}_{tool}_s"] = round(statistics.median(times[tool]), 3)
    for tool in tools[1:]:
        ratios = [ours / ref for ours, ref in zip(times[tool], times["stm32flash"], strict=True)]
        figures[f"{name}_{tool}_over_stm32flash"] = round(statistics.median(ratios), 3)
        if rounds > 1:
            figures[f"{name}_{tool}_ratios"] = [round(ratio, 3) for ratio in ratios]
    figures[f"{name}_turnaround_us"] = {
        tool: round(statistics.median(turnarounds[tool]) * 1e6) for tool in tools
    }
    return figures


async def warm_up(control: Connection, link: str, folder: Path) -> None:
    """One untimed small run per tool: nothing in the timed runs is a first time."""
    image = os.urandom(1024)
    image_file = folder / "warm-up.bin"
    image_file.write_bytes(image)
    for tool in DENSE_TOOLS:
        await run_on_new_board(control, link, tool, image, image_file)


async def bench(latency_ms: float, rounds: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    with tempfile.TemporaryDirectory() as tmp:
        link = str(Path(tmp) / "tty")
        child = context.Process(target=serve, args=(link, latency_ms, theirs), daemon=True)
        child.start()
        try:
            if ours.recv() != "ready":
                raise RuntimeError("simulator did not start")
            figures: dict[str, Any] = {"baud": BAUD, "frame_bits": FRAME_BITS}
            figures["latency_ms"] = latency_ms
            figures["rounds"] = rounds
            await warm_up(ours, link, Path(tmp))
            dense, sparse = dense_image(), sparse_image()
            figures |= await measure(ours, link, Path(tmp), "dense", dense, DENSE_TOOLS, rounds)
            figures |= await measure(ours, link, Path(tmp), "sparse", sparse, SPARSE_TOOLS)
        finally:
            ours.send(("stop",))
            child.join(10)
    floor = floor_seconds(figures["dense_bytes"], latency_ms)
    figures["dense_floor_s"] = round(floor, 3)
    figures["dense_floor_over_agent"] = round(floor / figures["dense_agent_s"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=0.0, help="turnaround per reply")
    parser.add_argument("--rounds", type=int, default=3, help="dense-image rounds (medians)")
    args = parser.parse_args()
    figures = asyncio.run(bench(args.latency_ms, args.rounds))
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
