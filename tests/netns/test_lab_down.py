"""Tearing down: ``down`` leaves nothing behind and is idempotent; ``up`` after a crash cleans what the
crashed lab left; Ctrl-C while coming up tears everything down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshctl.lab import builders as b
from meshctl.lab.api import Lab, load_objects
from meshctl.lab.errors import LabError
from meshctl.lab.supervisor import read_pid_file
from meshctl.lab.testkit import SystemSnapshot, pid_alive, unique_lab_id

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "cluster.yaml"
MESHCTL = str(Path(sys.executable).with_name("meshctl"))


def root_iptables() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout


def lab_pids(lab: Lab) -> list[int]:
    pids = [read_pid_file(p) for p in lab.paths.pids.glob("*.pid")]
    return [p for p in [*pids, lab.daemon_pid()] if p is not None]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_down_leaves_nothing_behind_and_is_idempotent(tmp_path: Path) -> None:
    lab_id = unique_lab_id()
    before = SystemSnapshot.take(lab_id)
    iptables_before = root_iptables()
    lab = Lab(tmp_path / "state", lab_id=lab_id)
    lab.up(load_objects(SAMPLE), timeout=60)
    try:
        running = SystemSnapshot.take(lab_id)
        pids = lab_pids(lab)
    finally:
        report = lab.down()
    assert len(running.namespaces) == 3 + 6 and len(running.etc_netns) == 6 and len(pids) == 7
    assert len(running.leftovers(before, lab_id=lab_id)) >= 15  # the comparison sees what a lab creates
    assert report.daemon_stopped

    after = SystemSnapshot.take(lab_id)
    assert after.leftovers(before, lab_id=lab_id) == []
    assert not [p for p in pids if pid_alive(p)]
    assert root_iptables() == iptables_before
    assert not (lab.paths.objects.exists() or lab.paths.run.exists() or lab.paths.settings_file.exists())
    assert not lab.down().found_anything


def test_up_after_a_crash_cleans_the_leftovers(tmp_path: Path) -> None:
    lab_id = unique_lab_id()
    before = SystemSnapshot.take(lab_id)
    objects = [b.namespace("apps"), b.deployment("sleepy", "apps", command=b.SLEEPER, replicas=2)]
    lab = Lab(tmp_path / "state", lab_id=lab_id)
    lab.up(objects, timeout=30)
    try:
        daemon = lab.daemon_pid()
        assert daemon is not None
        orphans = [p for p in lab_pids(lab) if p != daemon]
        old_netns = [lab.pod_netns(p) for p in lab.pods()]
        os.kill(daemon, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(daemon))
        assert all(pid_alive(p) for p in orphans) and all(
            os.path.exists(f"/var/run/netns/{n}") for n in old_netns
        )

        again = Lab(tmp_path / "state", lab_id=lab_id)
        again.up(objects, timeout=30)
        assert not [p for p in orphans if pid_alive(p)]
        assert not [n for n in old_netns if os.path.exists(f"/var/run/netns/{n}")]
        assert len(again.pods()) == 2
    finally:
        lab.down()
    assert SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id) == []


def test_a_lab_id_in_use_by_another_running_lab_is_refused(tmp_path: Path) -> None:
    lab_id = unique_lab_id()
    first = Lab(tmp_path / "first", lab_id=lab_id)
    first.up([], timeout=30)
    try:
        with pytest.raises(LabError, match="is used by the running lab"):
            Lab(tmp_path / "second", lab_id=lab_id).up([], timeout=30)
        assert first.is_running() and len(SystemSnapshot.take(lab_id).namespaces) == 3
    finally:
        first.down()


def test_ctrl_c_while_coming_up_tears_everything_down(tmp_path: Path) -> None:
    lab_id = unique_lab_id()
    before = SystemSnapshot.take(lab_id)
    state = tmp_path / "state"
    argv = [MESHCTL, "lab", "up", "--no-mesh", "--state", str(state), "--lab-id", lab_id, "-f", str(SAMPLE)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = wait_for(lambda: len(SystemSnapshot.take(lab_id).namespaces) > 3, timeout=20)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        leftovers = SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        Lab(state, lab_id=lab_id).down()  # only a safety net: the check above ran before it
    assert started, "the lab never got as far as creating pods"
    assert proc.returncode == 130, err
    assert "tearing down" in err
    assert leftovers == []
