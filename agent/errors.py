"""One root exception; subclasses carry the data that ends up in a unit record or a reject.

Hardware errors carry a :class:`FailureCode` (and a region or an address where one applies). The
unit cycle turns them into the record's failure at one boundary (``agent.station.cycle``); nothing
else catches broadly.
"""

from __future__ import annotations

from enum import StrEnum


class FailureCode(StrEnum):
    """Why a unit failed; stable strings, the plant's dashboards group on them."""

    FIXTURE_FAULT = "fixture_fault"
    INTERLOCK_OPEN = "interlock_open"
    PROBE_NOT_FOUND = "probe_not_found"
    PROBE_LOST = "probe_lost"
    TARGET_LOCKED = "target_locked"
    TARGET_MISMATCH = "target_mismatch"
    ERASE_FAILED = "erase_failed"
    WRITE_FAILED = "write_failed"
    VERIFY_MISMATCH = "verify_mismatch"
    VALID_FLAG_FAILED = "valid_flag_failed"
    LOCK_FAILED = "lock_failed"
    PROTOCOL_ERROR = "protocol_error"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
    SERIALS_EXHAUSTED = "serials_exhausted"
    UID_INVALID = "uid_invalid"
    SIGNING_REFUSED = "signing_refused"
    SIGNER_UNREACHABLE = "signer_unreachable"
    DEVICE_KEY_MISSING = "device_key_missing"
    WORKER_CRASHED = "worker_crashed"
    STATION_RESTART = "station_restart"
    INTERNAL = "internal_error"


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The station configuration is unusable; ``problems`` holds one line per defect."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s): " + "; ".join(problems))


class HardwareUnavailable(AgentError):
    """The station's configured hardware cannot be reached on this machine (no GPIO, no probe)."""


class ProgrammerError(AgentError):
    """A programmer backend failed. ``code`` lands in the unit record."""

    code: FailureCode = FailureCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        region: str | None = None,
        address: int | None = None,
        code: FailureCode | None = None,
    ) -> None:
        self.detail = message  # without the location suffix (a worker sends it across as is)
        self.region = region
        self.address = address
        if code is not None:
            self.code = code
        where = []
        if region is not None:
            where.append(f"region {region}")
        if address is not None:
            where.append(f"address 0x{address:08X}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class ProbeNotFound(ProgrammerError):
    code = FailureCode.PROBE_NOT_FOUND


class ProbeLost(ProgrammerError):
    code = FailureCode.PROBE_LOST


class TargetLocked(ProgrammerError):
    code = FailureCode.TARGET_LOCKED


class EraseFailed(ProgrammerError):
    code = FailureCode.ERASE_FAILED


class WriteFailed(ProgrammerError):
    code = FailureCode.WRITE_FAILED


class ProtocolError(ProgrammerError):
    code = FailureCode.PROTOCOL_ERROR


class ProgrammerAborted(ProgrammerError):
    code = FailureCode.ABORTED


class WorkerCrashed(ProgrammerError):
    """The slot's worker process died (killed, crashed in native code, out of memory)."""

    code = FailureCode.WORKER_CRASHED


class UnitFailure(AgentError):
    """A unit failed at ``stage`` with ``code``; raised inside the cycle, turned into the record."""

    def __init__(
        self, *, code: FailureCode, stage: str, detail: str, region: str | None = None
    ) -> None:
        self.code = code
        self.stage = stage
        self.detail = detail
        self.region = region
        super().__init__(f"{stage}: {code}: {detail}")


class BadMessage(AgentError):
    """An inbound message (job, manifest, command) is malformed or not acceptable.

    ``code`` is a short machine-readable reason, ``reason`` the sentence an operator reads.
    """

    def __init__(self, code: str, reason: str, *, ref: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.ref = ref
        super().__init__(f"{code}: {reason}")


class FirmwareSetError(AgentError):
    """A firmware set or one of its images cannot be used; ``code`` says why."""

    def __init__(self, code: str, reason: str, *, set_id: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.set_id = set_id
        super().__init__(f"{code}: {reason}")
