"""Plant tools running at the same time never share a client id by default.

A broker closes the older of two connections with one client id. The recorder keeps a fixed id
(its persistent session must survive a restart); the short-lived tools take a fresh one per run.
On the secured broker the certificate's name replaces any id, so there the rule is one
certificate per program that runs at the same time as another (docs/mqtt.md).
"""

from __future__ import annotations

from agent.cli import build_parser

TOOLS = (["plant", "publish-set", "set.json", "--station", "st-1", "--trust-store", "t.toml"],
         ["plant", "publish-job", "--station", "st-1"],
         ["plant", "rollout-status"],
         ["plant", "rollout-status"])


def test_short_lived_tools_take_a_fresh_client_id_each_run() -> None:
    ids = [build_parser().parse_args(argv).client_id for argv in TOOLS]
    assert len(set(ids)) == len(TOOLS), ids
    assert all(client_id.startswith("plant-") for client_id in ids)


def test_the_recorder_keeps_its_client_id_and_any_id_can_be_given() -> None:
    assert build_parser().parse_args(["recorder", "--db", "r.db"]).client_id == "plant-recorder"
    assert build_parser().parse_args([*TOOLS[2], "--client-id", "mine"]).client_id == "mine"
