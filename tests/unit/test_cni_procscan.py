"""Reading a pod's uid from a process's cgroup paths (the node agent's /proc walk for pods that were
running before it started)."""

from __future__ import annotations

import pytest

from ztunnel.cni.procscan import pod_uid_from_cgroup

UID = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
SYSTEMD_UID = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("cgroup", "uid"),
    [
        # cgroup v2, systemd driver, containerd (burstable, besteffort, guaranteed QoS)
        (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice/"
         "cri-containerd-4f1e.scope", UID),
        (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice/"
         "crio-77aa.scope", UID),
        (f"0::/kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice/cri-containerd-4f1e.scope", UID),
        # cgroup v1, cgroupfs driver: one line per hierarchy
        (f"12:pids:/kubepods/burstable/pod{UID}/4f1e\n11:memory:/kubepods/burstable/pod{UID}/4f1e", UID),
        (f"0::/kubepods/pod{UID}", UID),  # a process in the pod's own cgroup
        # not a pod
        ("0::/system.slice/containerd.service", None),
        ("0::/user.slice/user-0.slice/session-3.scope", None),
        ("0::/", None),
        ("", None),
        (f"0::/kubepods/burstable/podnot-{UID}", None),
        (f"0::/kubepods/burstable/pod{UID}x/4f1e", None),  # not a uid on its own
    ],
)  # fmt: skip
def test_the_pod_uid_of_a_cgroup_file(cgroup: str, uid: str | None) -> None:
    assert pod_uid_from_cgroup(cgroup) == uid
