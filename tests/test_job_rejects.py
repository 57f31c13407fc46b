"""Every malformed job is rejected on the rejects topic with its reason; the station stays up."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from agent.sim.broker import LocalBroker
from agent.wire.topics import StationTopics
from tests.conftest import PlantRecorder
from tests.helpers import (
    eventually,
    job_payload,
    publish_job,
    running_station,
    start_job,
    station_config,
)


def _with(job: dict[str, Any], path: str, value: Any) -> bytes:
    changed = copy.deepcopy(job)
    *parents, last = path.split(".")
    node: Any = changed
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return json.dumps(changed).encode()


def bad_jobs(job: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """(case, payload, expected reject code): the list from mqtt-durability-security.md."""
    text = json.dumps(job)
    return [
        ("garbage", b"\x00\xffnot json", "not_utf8"),
        ("not json", b"{job: 1}", "not_json"),
        ("array", b"[1, 2]", "not_object"),
        ("duplicate key", text.replace('{"schema"', '{"quantity": 1, "schema"', 1).encode(),
         "duplicate_key"),
        ("NaN", text.replace('"quantity": 3', '"quantity": NaN').encode(), "bad_number"),
        ("Infinity", text.replace('"quantity": 3', '"quantity": Infinity').encode(),
         "bad_number"),
        ("huge integer", text.replace('"quantity": 3', '"quantity": ' + "9" * 5000).encode(),
         "not_json"),
        ("big integer", _with(job, "quantity", 10**30), "invalid"),
        ("deep nesting", ('{"a":' * 100 + "1" + "}" * 100).encode(), "too_deep"),
        ("lone surrogate", text.replace('"sensor-node"', '"sensor\\ud800"', 1).encode(),
         "bad_string"),
        ("wrong type", _with(job, "quantity", "3"), "invalid"),
        ("negative serial", _with(job, "serials.first", -1), "invalid"),
        ("huge quantity", _with(job, "quantity", 2**40), "invalid"),
        ("bad set id", _with(job, "set_id", "../../etc"), "invalid"),
        ("unknown field", _with(job, "priority", "high"), "invalid"),
        ("quantity beyond serials", _with(job, "quantity", 10_000), "invalid"),
        ("for another station", _with(job, "station", "st-other"), "wrong_station"),
        ("oversized", b'{"pad": "' + b"x" * 300_000 + b'"}', "too_large"),
    ]


async def test_each_malformed_job_is_rejected_with_its_reason(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder,
        rejects: list[dict[str, Any]]) -> None:
    config = station_config(tmp_path, broker.port)
    good = job_payload(job_id="wo-3003", station="st-test", units=3)
    cases = bad_jobs(good)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        for case, payload, _ in cases:
            before = len(rejects)
            await publish_job(broker.port, "st-test", payload)
            await eventually(lambda n=before: len(rejects) > n, timeout=10,
                             what=f"reject of {case}")
        assert parts.jobs.current is None  # nothing bad was accepted
        assert "no job" in parts.status.blocked
        # Still up: a good job runs, and reusing its id with other content is refused.
        await start_job(broker.port, "st-test", tmp_path, job_id="wo-3003", units=3)
        await eventually(lambda: parts.jobs.current is not None, what="good job")
        assert await sim.operator.run(1) == ["pass"]
        await publish_job(broker.port, "st-test", _with(good, "quantity", 2))
        await eventually(lambda: len(rejects) > len(cases), what="replay reject")
    codes = [r["code"] for r in rejects]
    assert codes == [code for _, _, code in cases] + ["job_id_reused"]
    for reject, (case, _, _) in zip(rejects, cases, strict=False):
        assert reject["station"] == "st-test", case
        assert reject["reason"], case
        assert reject["topic"] == StationTopics("st-test").job
