"""The process's own gauges: the event loop's task count, memory and open files."""

from __future__ import annotations

import asyncio
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import BridgeMetrics

HELD_TASKS = 5


async def scrape(metrics: BridgeMetrics) -> dict[str, float]:
    """Every unlabelled sample, collected on a worker thread as ``/metrics`` does."""
    text = (await asyncio.to_thread(metrics.exposition)).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def test_task_gauge_counts_unfinished_tasks_at_each_scrape() -> None:
    metrics = BridgeMetrics(event_loop=asyncio.get_running_loop())
    before = (await scrape(metrics))["bridge_asyncio_tasks"]
    assert before >= 1  # the test's own task, at least

    release = asyncio.Event()
    held = [asyncio.create_task(release.wait()) for _ in range(HELD_TASKS)]
    await asyncio.sleep(0)  # let them start waiting
    during = (await scrape(metrics))["bridge_asyncio_tasks"]
    release.set()
    await asyncio.gather(*held)
    after = (await scrape(metrics))["bridge_asyncio_tasks"]

    assert during == before + HELD_TASKS
    assert after == before


async def test_task_gauge_reads_zero_until_a_loop_is_observed() -> None:
    metrics = BridgeMetrics()
    assert (await scrape(metrics))["bridge_asyncio_tasks"] == 0
    metrics.observe_event_loop(asyncio.get_running_loop())
    assert (await scrape(metrics))["bridge_asyncio_tasks"] >= 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from /proc on Linux")
async def test_resident_memory_and_open_files_are_exported() -> None:
    samples = await scrape(BridgeMetrics())
    assert samples["process_resident_memory_bytes"] > 0
    assert samples["process_open_fds"] > 0
