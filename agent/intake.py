"""Inbound jobs: decode strictly, check against this station, verify images, then accept.

Anything wrong is raised as BadMessage / FirmwareSetError with a specific code; the link publishes
it on the rejects topic and the station carries on with what it had.
"""

from __future__ import annotations

import logging

from agent.images import LocalImages
from agent.jobs import JobBook
from agent.messages import Job
from agent.wire import parse_inbound

log = logging.getLogger(__name__)


class JobIntake:
    """Turns job payloads into accepted jobs."""

    def __init__(self, *, jobs: JobBook, images: LocalImages, max_bytes: int) -> None:
        self._jobs = jobs
        self._images = images
        self._max_bytes = max_bytes

    async def handle(self, payload: bytes) -> str:
        """Process one job payload; returns 'accepted', 'duplicate' or 'cleared'.

        An empty retained payload is how the plant clears a station's job topic: nothing to do.
        """
        if not payload:
            return "cleared"
        job = parse_inbound(Job, payload, max_bytes=self._max_bytes)
        await self._images.load(job.firmware_set)  # before the job counts as accepted
        if not await self._jobs.accept(job):
            log.info("job %s redelivered; already known", job.job_id)
            return "duplicate"
        log.info("job %s accepted: %d x %s with set %s", job.job_id, job.quantity, job.product,
                 job.firmware_set.set_id)
        return "accepted"
