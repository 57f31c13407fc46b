"""The plant console in a real headless Chromium, against a simulated fleet on a real broker.

Every Selenium call runs in a thread: the console, the stations and the broker's clients live on
this test's event loop and must keep running while the browser waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from agent.demo.fleet import FleetDemo, FleetOptions
from agent.plant.rollout.model import Gate, RolloutPlan, RolloutState
from agent.plant.rollout.store import RolloutStore
from tests.browser import chromium

TOKEN = "operator-secret-1"
T = TypeVar("T")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[FleetDemo]:
    """Two stations producing units, the plant service with engine and console."""
    demo = FleetDemo(workdir=tmp_path, out=io.StringIO(),
                     options=FleetOptions(stations=2, min_units=3, operator_token=TOKEN))
    task = asyncio.create_task(demo.run(scenario=False, stay=True))
    try:
        await asyncio.wait_for(demo.baseline_done.wait(), 120)
        yield demo
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def url_of(demo: FleetDemo) -> str:
    assert demo.plant is not None
    assert demo.plant.console is not None
    return demo.plant.console.url


async def in_thread(work: Callable[[], T]) -> T:
    return await asyncio.to_thread(work)


def text(driver: Any, css: str) -> str | None:
    """The element's visible text, read in one step (the page re-renders rows as events come)."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css)
    return None if value is None else str(value).strip()


def wait_text(driver: Any, css: str, predicate: Callable[[str], bool], timeout: float = 30) -> str:
    found: list[str] = []

    def check(d: Any) -> bool:
        value = text(d, css)
        found[:] = [] if value is None else [value]
        return value is not None and predicate(value)

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)
    return found[0]


def click(driver: Any, css: str) -> None:
    """A real click on the element; found again if a re-render replaced it meanwhile."""
    for _ in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css} kept being replaced")


def passed_count(job_text: str) -> int:
    return int(job_text.split(": ")[1].split("/")[0])


async def test_station_list_updates_when_a_unit_finishes_without_a_reload(
        fleet: FleetDemo) -> None:
    with chromium() as driver:
        await in_thread(lambda: driver.get(url_of(fleet)))
        row = 'tr[data-station="fleet-01"]'
        first = await in_thread(lambda: wait_text(driver, f"{row} td.job", lambda t: "/" in t))
        await in_thread(lambda: driver.execute_script("window.notReloaded = true"))
        later = await in_thread(lambda: wait_text(
            driver, f"{row} td.job", lambda t: passed_count(t) > passed_count(first)))
        assert passed_count(later) > passed_count(first)
        verdict = await in_thread(lambda: wait_text(driver, f"{row} td.last .verdict",
                                                    lambda t: t in ("PASS", "FAIL")))
        assert verdict == "PASS"  # set A has no fault
        assert await in_thread(lambda: driver.execute_script("return window.notReloaded"))
        assert "online since" in (await in_thread(lambda: text(driver, f"{row} td.link")) or "")
        live = await in_thread(lambda: driver.find_element(By.ID, "live").text)
        assert live == "live"


async def test_actions_need_the_token_and_a_rollout_is_shown_advancing(
        fleet: FleetDemo, tmp_path: Path) -> None:
    signed, _ = fleet.signed("sensor-node-2026.12.1", 9, "c")
    store = await RolloutStore.open(str(tmp_path / "plant" / "records.db"))
    try:
        rollout_id = await store.create(RolloutPlan(
            set_id="sensor-node-2026.12.1", product="sensor-node", signed_set=signed.decode(),
            stations=("fleet-01", "fleet-02"), waves=("1", "100%"), gate=Gate(min_units=3),
            target="group line-1"), by="test", approved=False)
        box = f'div.rollout[data-rollout="{rollout_id}"]'
        with chromium() as driver:
            await in_thread(lambda: driver.get(url_of(fleet)))
            state = await in_thread(lambda: wait_text(driver, f"{box} .state", bool))
            assert state == "AWAITING_APPROVAL"
            approve = f'{box} button[data-action="approve"]'
            await in_thread(lambda: click(driver, approve))
            refused = await in_thread(lambda: wait_text(driver, "#message", bool))
            assert refused == "an operator token is needed for rollout actions"
            assert (await store.load(rollout_id)).state == RolloutState.AWAITING_APPROVAL

            await in_thread(lambda: driver.find_element(By.ID, "token").send_keys(TOKEN))
            await in_thread(lambda: click(driver, approve))
            done = await in_thread(lambda: wait_text(driver, "#message", lambda t: t != refused))
            assert done == f"rollout {rollout_id} approved"
            wave1 = await in_thread(lambda: wait_text(
                driver, f'{box} .wave[data-wave="1"]', lambda t: "passed" in t, timeout=60))
            assert wave1 == "wave 1: passed (1)"
            final = await in_thread(lambda: wait_text(
                driver, f"{box} .state", lambda t: t == "COMPLETED", timeout=60))
            assert final == "COMPLETED"
            wave2 = await in_thread(lambda: text(driver, f'{box} .wave[data-wave="2"]'))
            assert wave2 == "wave 2: passed (1)"
            assert "gate_pass" in (await in_thread(lambda: text(driver, f"{box} .decisions")) or "")
    finally:
        await store.close()


async def test_console_reads_without_a_token_and_refuses_a_wrong_one(fleet: FleetDemo) -> None:
    async with httpx.AsyncClient(base_url=url_of(fleet), timeout=10) as client:
        state = (await client.get("/api/state")).json()
        assert [s["station"] for s in state["stations"]] == ["fleet-01", "fleet-02"]
        assert state["yields"]["fleet-01"]["fpy_pct"] == 100.0
        serial = state["units"][0]["serial"]
        trace = (await client.get("/api/trace", params={"serial": serial})).json()
        assert trace["records"][0]["serial"] == serial
        wrong = await client.post("/api/rollouts/1/pause",
                                  headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["message"]) == (
            401, "an operator token is needed for rollout actions")
        unknown = await client.post("/api/rollouts/99/pause",
                                    headers={"Authorization": f"Bearer {TOKEN}"})
        assert (unknown.status_code, unknown.json()["message"]) == (409, "there is no rollout 99")
