"""The node agent's /proc walk finds running pods' network namespaces through their cgroups (real
processes, namespaces and cgroups; see tests/netns/running_pods.py)."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.netns.running_pods import pod_processes
from ztunnel.cni.procscan import find_pod_netns

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd-driver", "cgroupfs-driver"])
def test_a_running_pods_netns_is_found_by_its_cgroup(systemd: bool) -> None:
    pod, host_pod, gone = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    with (
        pod_processes(pod, systemd=systemd) as running,
        pod_processes(host_pod, systemd=systemd, host_network=True),
    ):
        found = find_pod_netns([pod, host_pod, gone])
        # the pod's first process (its sandbox); the host-network pod and the absent one are not found
        assert found == {pod: f"/proc/{running.pause}/ns/net"}
        assert os.stat(found[pod]).st_ino == os.stat(f"/var/run/netns/{running.netns}").st_ino
        assert find_pod_netns([host_pod]) == {} and find_pod_netns([]) == {}
