"""The one place that builds the station from its configuration and runs it.

Real hardware is built here from the config; simulated hardware comes from :mod:`agent.sim` and is
imported only when the config asks for it, so a real station never loads a simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.config import DfuSlot, PyOcdSlot, StationConfig, UartSlot
from agent.errors import FailureCode, HardwareUnavailable
from agent.firmware.antirollback import AntiRollbackStore
from agent.firmware.fetch import FetchPolicy
from agent.firmware.imagestore import ImageStore
from agent.firmware.manager import RolloutManager
from agent.firmware.rollout import SetStatus
from agent.hw.fixture import Fixture, GpioFixture
from agent.hw.programmer import Programmer
from agent.station.console import StationConsole
from agent.station.intake import JobIntake, SetIntake
from agent.station.jobs import JobBook
from agent.station.link import Link
from agent.station.outbox import Outbox
from agent.station.signing import SignerClient
from agent.station.station import Station, StationLimits
from agent.station.status import StatusBoard
from agent.station.store import StationStore
from agent.station.systemd import Notifier
from agent.wire.mqtt import Backoff, BrokerEndpoint
from agent.wire.topics import StationTopics, group_firmware_set

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0
OPERATOR_ACK_WAIT_S = 30.0  # --operator-units: how long to wait for the plant's acks at the end


@dataclass
class Hardware:
    """The fixture and one programmer per slot; ``sim`` holds the simulated devices, if any."""

    fixture: Fixture
    programmers: dict[str, Programmer]
    sim: Any = None
    closers: list[Callable[[], Any]] = field(default_factory=list)


def build_programmer(slot: PyOcdSlot | UartSlot | DfuSlot, *, pin_factory: Any,
                     usb_backend: Any = None,
                     workers: Literal["process", "thread"] = "process") -> Programmer:
    """The real backend for a slot; ``usb_backend`` is pyusb's (None: libusb).

    pyOCD and UART slots run in a worker process of their own (``workers="process"``); their
    BOOT0/NRESET lines stay here, where the fixture's pin factory is. USB-DFU slots stay
    in-process: a pyusb backend object cannot follow its slot into another process.
    """
    if isinstance(slot, DfuSlot):
        from agent.hw.stm32_dfu import Stm32DfuProgrammer

        return Stm32DfuProgrammer(vid=slot.vid, pid=slot.pid, serial=slot.serial,
                                  usb_path=slot.usb_path, boot0_pin=slot.boot0_pin,
                                  nreset_pin=slot.nreset_pin, pin_factory=pin_factory,
                                  usb_backend=usb_backend)
    boot = _boot_lines(slot, pin_factory) if isinstance(slot, UartSlot) else None
    if workers == "process":
        from agent.station.workers.proxy import WorkerProgrammer

        return WorkerProgrammer(slot=slot, boot=boot)
    if isinstance(slot, PyOcdSlot):
        from agent.hw.pyocd_programmer import PyOcdProgrammer

        return PyOcdProgrammer(probe_id=slot.probe, frequency_hz=slot.frequency_hz)
    from agent.hw.stm32_uart import Stm32UartProgrammer

    return Stm32UartProgrammer(port=slot.port, baud=slot.baud, parity=slot.parity, boot=boot)


def _boot_lines(slot: UartSlot, pin_factory: Any) -> Any:
    from agent.hw.boot_control import BootControl

    if slot.boot0_pin is None and slot.nreset_pin is None:
        return None
    return BootControl(boot0_pin=slot.boot0_pin, nreset_pin=slot.nreset_pin,
                       pin_factory=pin_factory)


def programmer_closers(programmers: dict[str, Programmer]) -> list[Callable[[], Any]]:
    """What stops each backend at station exit: a worker process, or a backend's thread."""
    closers: list[Callable[[], Any]] = []
    for programmer in programmers.values():
        for name in ("close", "shutdown"):
            method = getattr(programmer, name, None)
            if callable(method):
                closers.append(method)
                break
    return closers


async def build_hardware(config: StationConfig) -> Hardware:
    """Real GPIO and probes, or the simulated fixture when ``fixture.backend = "sim"``."""
    if config.fixture.backend == "sim":
        from agent.sim.hardware import build_simulated_hardware

        sim_fixture, sim_programmers, sim = await build_simulated_hardware(config,
                                                                           build_programmer)
        return Hardware(fixture=sim_fixture, programmers=sim_programmers, sim=sim,
                        closers=[*programmer_closers(sim_programmers), sim.close])
    fixture = _gpio_fixture(config)
    programmers: dict[str, Programmer] = {}
    for slot in config.slots:
        if not isinstance(slot, PyOcdSlot | UartSlot | DfuSlot):
            raise TypeError(f"slot {slot.name}: backend {slot.backend} needs fixture.backend "
                             "= 'sim'")
        programmers[slot.name] = build_programmer(slot, pin_factory=None,
                                                  workers=config.fixture.slot_workers)
    return Hardware(fixture=fixture, programmers=programmers,
                    closers=programmer_closers(programmers))


def _gpio_fixture(config: StationConfig) -> GpioFixture:
    """The real fixture on gpiozero's default pin factory, or a sentence saying what is missing."""
    from gpiozero.exc import BadPinFactory, PinFactoryFallback

    with warnings.catch_warnings(record=True) as tried:
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            return GpioFixture(pins=config.fixture.pins, pin_factory=None,
                               bounce_ms=config.fixture.clamp_bounce_ms,
                               settle_ms=config.fixture.clamp_settle_ms,
                               slot_lamps=config.slot_lamps())
        except BadPinFactory:
            reasons = "; ".join(str(w.message).removeprefix("Falling back from ") for w in tried)
    raise HardwareUnavailable(
        f"no usable GPIO on this machine: gpiozero found no pin factory ({reasons}). On a "
        "Raspberry Pi install the GPIO library with pip install 'fixture-agent[pi]' (lgpio); to "
        "run without fixture hardware set fixture.backend = \"sim\" in the configuration")


@dataclass
class StationParts:
    """The running station's parts, exposed for the demo and the tests."""

    station: Station
    link: Link
    jobs: JobBook
    outbox: Outbox
    status: StatusBoard
    rollout: RolloutManager
    store: StationStore
    programmers: dict[str, Programmer]


def broker_endpoint(config: StationConfig) -> BrokerEndpoint:
    """Where the station's broker is and how to authenticate to it."""
    broker = config.broker
    tls = broker.tls
    return BrokerEndpoint(host=broker.host, port=broker.port, keepalive_s=broker.keepalive_s,
                          ca=tls.ca if tls else None, cert=tls.cert if tls else None,
                          key=tls.key if tls else None)


def assemble(config: StationConfig, hardware: Hardware, store: StationStore,
             rollout: RolloutManager, status: StatusBoard,
             sets_changed: asyncio.Event, signer: SignerClient | None = None) -> StationParts:
    """Wire the station's parts together (no I/O)."""
    station_id = config.station.id
    limits = config.limits
    outbox = Outbox(store)
    jobs = JobBook(store, station_id=station_id)
    station = Station(
        station_id=station_id, fixture=hardware.fixture, programmers=hardware.programmers,
        store=store, jobs=jobs, outbox=outbox, status=status, rollout=rollout,
        sets_changed=sets_changed, signer=signer,
        limits=StationLimits(outbox_max_records=limits.outbox_max_records,
                             min_free_disk_mb=limits.min_free_disk_mb,
                             unit_timeout_s=limits.unit_timeout_s,
                             power_settle_s=config.fixture.power_settle_ms / 1000,
                             disk_path=config.storage.dir))
    broker = config.broker
    intake = JobIntake(jobs=jobs, max_bytes=limits.max_message_bytes)
    link = Link(endpoint=broker_endpoint(config), station_id=station_id, outbox=outbox,
                status=status, on_job=intake.handle,
                ack_timeout_s=limits.record_ack_timeout_s,
                session_expiry_s=broker.session_expiry_s,
                max_message_bytes=limits.max_message_bytes,
                backoff=Backoff(base=broker.reconnect_min_s, cap=broker.reconnect_max_s))
    sets = SetIntake(rollout=rollout, max_bytes=limits.max_message_bytes, report=link.reject)
    topics = StationTopics(station_id)
    link.add_handler(topics.firmware_set, sets.handle_set)
    if broker.group is not None:
        link.add_handler(group_firmware_set(broker.group), sets.handle_set)
    link.add_handler(topics.command, sets.handle_command)
    return StationParts(station=station, link=link, jobs=jobs, outbox=outbox, status=status,
                        rollout=rollout, store=store, programmers=hardware.programmers)


@contextlib.asynccontextmanager
async def firmware_sets(config: StationConfig, status: StatusBoard,
                        sets_changed: asyncio.Event) -> AsyncIterator[RolloutManager]:
    """The image cache and the rollout manager; every change shows on the status."""
    firmware_dir = config.storage.dir / "firmware"
    antirollback = await asyncio.to_thread(AntiRollbackStore.load,
                                           firmware_dir / "anti-rollback.json")
    managers: list[RolloutManager] = []

    def changed(_: SetStatus | None = None) -> None:
        if managers:
            status.update(rollout=managers[0].summary().model_dump(mode="json"))
        sets_changed.set()

    policy = FetchPolicy(ca_bundle=config.images.ca_bundle, attempts=config.images.attempts)
    async with ImageStore(config.storage.images, policy=policy) as images, RolloutManager(
            trust=config.trust, images=images, antirollback=antirollback,
            state_dir=firmware_dir, on_change=changed) as rollout:
        managers.append(rollout)
        changed()
        yield rollout


async def serve(config: StationConfig, hardware: Hardware, *, notifier: Notifier | None = None,
                started: Callable[[StationParts], None] | None = None) -> None:
    """Run the station until cancelled; the fixture ends in its safe state.

    Teardown runs every step even when one fails (the fixture's safe state, the backends, the
    database), so a stopping station never leaves its database open behind a raised error.
    """
    notifier = notifier or Notifier()
    async with contextlib.AsyncExitStack() as teardown:
        store = await StationStore.open(config.storage.database)
        teardown.push_async_callback(store.close)
        for close in reversed(hardware.closers):
            teardown.push_async_callback(_call, close)
        teardown.callback(hardware.fixture.close)
        teardown.callback(notifier.send, "STOPPING=1")
        status = StatusBoard(config.station.id, group=config.broker.group)
        sets_changed = asyncio.Event()
        rollout = await teardown.enter_async_context(
            firmware_sets(config, status, sets_changed))
        signer = SignerClient.from_config(config)
        if signer is not None:
            teardown.push_async_callback(signer.aclose)
        parts = assemble(config, hardware, store, rollout, status, sets_changed, signer)
        await parts.jobs.load()
        async with asyncio.TaskGroup() as group:
            station_task = group.create_task(parts.station.run(), name="station")
            group.create_task(parts.link.run(), name="link")
            group.create_task(notifier.watchdog(lambda: not station_task.done()),
                              name="watchdog")
            notifier.send("READY=1")
            if started is not None:
                started(parts)


async def _call(close: Callable[[], Any]) -> None:
    result = close()
    if asyncio.iscoroutine(result):
        await result


async def run_until_signalled(config: StationConfig, *, operator_units: int | None = None,
                              console: StationConsole | None = None) -> None:
    """The service's main: serve until SIGTERM/SIGINT, letting a unit in progress finish as FAIL.

    ``operator_units`` (simulated fixture only) has the simulated operator cycle that many boards,
    waits (bounded) until the plant has acknowledged their records, and then stops the station.
    ``console`` is told about every unit and every change in what the station waits for.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    parts_box: list[StationParts] = []
    background: set[asyncio.Task[None]] = set()

    async def shutdown() -> None:
        if parts_box:
            await parts_box[0].station.stop(FailureCode.ABORTED, grace_s=SHUTDOWN_GRACE_S)
        task.cancel()

    def request_stop() -> None:
        if not any(t.get_name() == "shutdown" for t in background):  # once, however asked
            background.add(loop.create_task(shutdown(), name="shutdown"))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    with contextlib.suppress(asyncio.CancelledError):
        hardware = await build_hardware(config)

        async def operate(parts: StationParts, units: int) -> None:
            await hardware.sim.operator.run(units)
            left = await _wait_until_acknowledged(parts.outbox, OPERATOR_ACK_WAIT_S)
            if console is not None:
                console.say(f"simulated operator: {units} units done; " + (
                    "every record acknowledged by the plant" if not left else
                    f"{left} records still wait for the plant's acknowledgement (they stay in "
                    "the outbox and go out at the next start)"))
            request_stop()

        def started(parts: StationParts) -> None:
            parts_box.append(parts)
            if console is not None:
                parts.station.record_listeners.append(console.unit)
                parts.status.listeners.append(console.status)
                parts.link.listeners.append(console.link)
            if operator_units:
                background.add(loop.create_task(operate(parts, operator_units),
                                                name="simulated-operator"))

        await serve(config, hardware, started=started)


def _log_tasks() -> None:
    """SIGUSR1: log what every task of the station is waiting for (a station that seems stuck)."""
    for task in asyncio.all_tasks():
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 32:  # follow the awaits to the innermost
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        log.warning("task %s%s: %s", task.get_name(), " (cancelling)" * bool(task.cancelling()),
                    " -> ".join(chain) or "not started")


async def _wait_until_acknowledged(outbox: Outbox, timeout_s: float) -> int:
    """Wait until the outbox is empty or ``timeout_s`` passed; returns the records left."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while await outbox.depth():  # noqa: ASYNC110 (a row count; acks raise no event here)
                await asyncio.sleep(0.1)
    return await outbox.depth()
