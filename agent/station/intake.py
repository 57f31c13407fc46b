"""Inbound plant messages: jobs, signed firmware sets, commands.

Anything wrong is raised as BadMessage / FirmwareSetError with a specific code; the link publishes
it on the rejects topic and the station carries on with what it had. A job's firmware set is
resolved by the station from the verified sets the rollout manager holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agent.errors import FirmwareSetError
from agent.firmware.manager import RolloutManager
from agent.firmware.rollout import SetState
from agent.station.jobs import JobBook
from agent.wire.codec import parse_inbound
from agent.wire.messages import Command, Job

log = logging.getLogger(__name__)


class JobIntake:
    """Turns job payloads into accepted jobs."""

    def __init__(self, *, jobs: JobBook, max_bytes: int) -> None:
        self._jobs = jobs
        self._max_bytes = max_bytes

    async def handle(self, payload: bytes, topic: str) -> str:
        """Process one job payload; returns 'accepted', 'duplicate' or 'cleared'.

        An empty retained payload is how the plant clears a station's job topic: nothing to do.
        """
        if not payload:
            return "cleared"
        job = parse_inbound(Job, payload, max_bytes=self._max_bytes)
        if not await self._jobs.accept(job):
            log.info("job %s redelivered; already known", job.job_id)
            return "duplicate"
        log.info("job %s accepted: %d x %s with set %s", job.job_id, job.quantity, job.product,
                 job.set_id)
        return "accepted"


class SetIntake:
    """Signed firmware sets (station and group topics) and rollout commands."""

    def __init__(self, *, rollout: RolloutManager, max_bytes: int,
                 report: Callable[[str, FirmwareSetError], Awaitable[None]]) -> None:
        self._rollout = rollout
        self._max_bytes = max_bytes
        self._report = report
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle_set(self, payload: bytes, topic: str) -> None:
        """Verify and take a signed set; a refused one is raised so the link rejects it."""
        if not payload:
            return  # a cleared retained topic
        status = await self._rollout.submit(payload, topic)
        if status.state == SetState.FAILED:
            raise FirmwareSetError(status.code or "failed", status.reason or "refused",
                                   set_id=status.set_id)

    async def handle_command(self, payload: bytes, topic: str) -> None:
        """Start a command; a rollback waits for the unit in progress, so it runs on its own."""
        command = parse_inbound(Command, payload, max_bytes=self._max_bytes)
        task = asyncio.create_task(self._rollback(command.product, topic), name="rollback")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rollback(self, product: str | None, topic: str) -> None:
        try:
            status = await self._rollout.rollback(product)
        except FirmwareSetError as exc:
            await self._report(topic, exc)
            return
        log.warning("rolled back to firmware set %s", status.set_id)
