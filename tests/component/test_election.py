"""Leader election's shared parts: leader-only jobs run during a term only and start afresh in the
next; the lab's lock-file election picks one leader among electors on one state directory, hands
over as soon as the leader lets go, and notices a replaced lock file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mesh.rt.election import AlwaysLeader, FileLockElector, Leadership, run_while_leading
from mesh.testing.polling import wait_until

pytestmark = pytest.mark.timeout(30)
RETRY = 0.02


def leadership(identity: str) -> Leadership:
    return Leadership(lease="istiod-lite-leader", identity=identity, logger=structlog.get_logger())


async def test_leader_only_jobs_run_during_terms_only_and_restart_fresh() -> None:
    lead = leadership("istiod-a_1")
    started: list[int] = []
    running: set[int] = set()

    async def job() -> None:
        term = lead.terms
        started.append(term)
        running.add(term)
        try:
            await asyncio.Event().wait()
        finally:
            running.discard(term)

    task = asyncio.create_task(run_while_leading(lead, job))
    await asyncio.sleep(0.01)
    assert started == []  # a follower runs none
    with capture_logs() as logs:
        lead.acquired()
        await wait_until(lambda: running == {1}, what="the job runs in term 1")
        lead.lost("test", holder="istiod-b_2")
        await wait_until(lambda: not running, what="the job stops with the term")
        lead.acquired()
        await wait_until(lambda: running == {2}, what="a fresh job runs in term 2")
    assert started == [1, 2]
    assert [(e["event"], e["holder"]) for e in logs] == [
        ("leader.acquired", "istiod-a_1"),
        ("leader.lost", "istiod-b_2"),
        ("leader.acquired", "istiod-a_1"),
    ]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not running


async def test_a_failing_job_is_restarted_and_the_others_go_on() -> None:
    lead = leadership("istiod-a_1")
    attempts: list[int] = []
    steady = asyncio.Event()

    async def flaky() -> None:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError("the API server went away")
        await asyncio.Event().wait()

    async def finishes() -> None:
        return None

    async def keeps_running() -> None:
        steady.set()
        await asyncio.Event().wait()

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    with capture_logs() as logs:
        task = asyncio.create_task(run_while_leading(lead, flaky, finishes, keeps_running, sleep=no_wait))
        lead.acquired()
        await wait_until(lambda: len(attempts) == 3 and steady.is_set(), what="the third try runs")
        await asyncio.sleep(0.01)
        assert len(attempts) == 3 and lead.is_leader  # a job that ended stopped none of the others
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failures = [e for e in logs if e["event"] == "leader.job_failed"]
    assert [e["error"] for e in failures] == ["ConnectionError('the API server went away')"] * 2


async def test_without_election_the_one_replica_leads_until_stopped() -> None:
    lead = leadership("istiod-a_1")
    task = asyncio.create_task(AlwaysLeader(lead).run())
    await wait_until(lambda: lead.is_leader, what="it leads")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not lead.is_leader


async def test_one_lock_file_elects_one_leader_and_hands_over_when_it_goes(tmp_path: Path) -> None:
    lock = tmp_path / "state" / ".istiod-lite-leader.lock"
    electors = [FileLockElector(lock, leadership(f"istiod-{n}_1"), retry_period=RETRY) for n in "abc"]
    tasks = [asyncio.create_task(e.run()) for e in electors]
    await wait_until(lambda: any(e.leadership.is_leader for e in electors), what="someone leads")
    await asyncio.sleep(10 * RETRY)  # the followers keep trying meanwhile
    assert sum(e.leadership.is_leader for e in electors) == 1
    first = next(i for i, e in enumerate(electors) if e.leadership.is_leader)
    assert lock.read_text() == f"{electors[first].leadership.identity}\n"
    tasks[first].cancel()  # the leader stops: the lock is free at once
    await asyncio.gather(tasks[first], return_exceptions=True)
    rest = [e for i, e in enumerate(electors) if i != first]
    await wait_until(lambda: any(e.leadership.is_leader for e in rest), within=20 * RETRY, what="a takeover")
    await asyncio.sleep(5 * RETRY)
    assert sum(e.leadership.is_leader for e in rest) == 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_replaced_lock_file_ends_the_term(tmp_path: Path) -> None:
    lock = tmp_path / ".istiod-lite-leader.lock"
    elector = FileLockElector(lock, leadership("istiod-a_1"), retry_period=RETRY)
    changes: list[bool] = []
    elector.leadership.on_change(changes.append)
    task = asyncio.create_task(elector.run())
    await wait_until(lambda: elector.leadership.is_leader, what="it leads")
    lock.unlink()  # the state directory was recreated under it: the old lock guards nothing
    await wait_until(lambda: changes == [True, False, True], what="a new term on the new file")
    assert lock.read_text() == "istiod-a_1\n"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert lock.read_text() == ""  # unlocked and emptied on the way out
