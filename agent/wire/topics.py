"""The MQTT topic scheme (documented in docs/mqtt.md). One place builds every topic string."""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "fixture/v1"


@dataclass(frozen=True)
class StationTopics:
    """Topics of one station."""

    station_id: str

    @property
    def base(self) -> str:
        """Prefix of every per-station topic."""
        return f"{ROOT}/station/{self.station_id}"

    @property
    def job(self) -> str:
        """Plant -> station, retained: the station's current job."""
        return f"{self.base}/job"

    @property
    def status(self) -> str:
        """Station -> plant, retained: online/offline (last will), job progress, blockers."""
        return f"{self.base}/status"

    @property
    def records(self) -> str:
        """Station -> plant, QoS 1: one traceability record per unit."""
        return f"{self.base}/records"

    @property
    def acks(self) -> str:
        """Recorder -> station, QoS 1: record ids stored durably by the plant."""
        return f"{self.base}/acks"

    @property
    def firmware_set(self) -> str:
        """Plant -> station, retained: a signed firmware set for this station."""
        return f"{self.base}/firmware-set"

    @property
    def command(self) -> str:
        """Plant -> station, QoS 1: operator commands (rollback)."""
        return f"{self.base}/command"

    @property
    def rejects(self) -> str:
        """Station -> plant, QoS 1: why an inbound message was refused."""
        return f"{self.base}/rejects"


def group_firmware_set(group: str) -> str:
    """Plant -> stations of ``group``, retained: a signed firmware set for all of them."""
    return f"{ROOT}/group/{group}/firmware-set"


ALL_RECORDS = f"{ROOT}/station/+/records"
RECORDER_STATES = f"{ROOT}/recorder/+/state"


def shared_records(group: str) -> str:
    """The MQTT v5 shared subscription through which the recorders of ``group`` split records."""
    return f"$share/{group}/{ALL_RECORDS}"


def recorder_state(recorder: str) -> str:
    """Recorder -> stations, QoS 1: online, or gone (its last will)."""
    return f"{ROOT}/recorder/{recorder}/state"
ALL_STATUS = f"{ROOT}/station/+/status"


def station_of(topic: str) -> str | None:
    """The station id in a per-station topic, or None for anything else."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == f"{ROOT}/station":
        return parts[3]
    return None
