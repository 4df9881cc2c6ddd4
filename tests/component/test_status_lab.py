"""Status conditions written into a lab state directory (the lab's lock protocol), latest only, no churn."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3

from istiod_lite.status import LabStatusWriter, StatusReporter
from istiod_lite.translate.l7 import translate_waypoint
from istiod_lite.view import view_from_objects
from mesh.rt.labstate import LabState
from mesh.testing.polling import wait_until
from tests.unit.l7_world import virtual_service, world

pytestmark = pytest.mark.timeout(20)


class CountingWriter(LabStatusWriter):
    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.batches: list[int] = []

    def write(self, statuses: Any) -> int:
        self.batches.append(len(statuses))
        return super().write(statuses)


async def test_statuses_land_in_the_object_files_once(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    vs = virtual_service(
        "reviews", [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "reviews"}}]}]
    )
    with state.transaction() as txn:
        txn.put(vs)
    rv_before = state.current_rv()
    writer = CountingWriter(tmp_path)
    reporter = StatusReporter(writer, now=time.time)
    task = asyncio.create_task(reporter.run())
    try:
        view = view_from_objects(world(vs))
        problems = translate_waypoint(view, view.gateways[("demo", "waypoint")]).problems
        reporter.submit(view, problems)
        key = ("VirtualService", "demo", "reviews")

        def written() -> bool:
            return bool((state.read(key) or {}).get("status"))

        await wait_until(written)
        (condition,) = (state.read(key) or {})["status"]["conditions"]
        assert condition["status"] == "False" and "is not a valid RE2" in condition["message"]
        assert state.current_rv() == rv_before + 1  # one write, the counter moved: watchers see it
        reporter.submit(view, problems)  # the next build says the same: nothing is written
        await asyncio.sleep(0.2)
        assert len(writer.batches) == 1  # one batch (the VirtualService and the Services using the waypoint)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class FailingOnce(LabStatusWriter):
    """The first write fails as the kubernetes client does when the API server is unreachable."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.failed = False

    def write(self, statuses: Any) -> int:
        if not self.failed:
            self.failed = True
            raise urllib3.exceptions.MaxRetryError(None, "/apis/security.istio.io/v1", None)  # type: ignore[arg-type]
        return super().write(statuses)


async def test_a_failed_write_is_retried_and_each_term_rewrites_the_statuses(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    vs = virtual_service("reviews", [{"route": [{"destination": {"host": "reviews"}}]}])
    with state.transaction() as txn:
        txn.put(vs)
    key = ("VirtualService", "demo", "reviews")
    reporter = StatusReporter(FailingOnce(tmp_path), now=time.time)
    view = view_from_objects(world(vs))
    reporter.submit(view, translate_waypoint(view, view.gateways[("demo", "waypoint")]).problems)

    def written() -> bool:
        return bool((state.read(key) or {}).get("status"))

    for term in (1, 2):  # a term of leadership each: the second must not trust what the first wrote
        task = asyncio.create_task(reporter.run())
        try:
            await wait_until(written, within=5.0, what=f"the status is written in term {term}")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with state.transaction() as txn:  # another replica (or a user) changes it meanwhile
            txn.put(vs)
        assert not written()
