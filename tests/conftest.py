"""Shared test set-up: netns tests skip without root, and fail instead when MESH_REQUIRE_NETNS=1."""

from __future__ import annotations

import os
import shutil

import pytest

# Tests run grpcio servers in-process and also spawn subprocesses (pod apps, ip, iptables). With
# grpc's fork support on, a child forked while grpc's threads run can die in grpc's at-fork handler
# before it execs ("Check failed: next_worker->state == KICKED"), and the app never starts. Nothing
# here uses grpc in a forked child, so fork support is off (read when grpc is first imported).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

_ROOT_MARKERS = ("netns", "e2e")


def netns_unavailable_reason() -> str | None:
    """Why this machine cannot run namespace tests, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths, iptables)"
    for tool in ("ip", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command; run 'make test' to install it"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not any(item.get_closest_marker(m) for m in _ROOT_MARKERS):
        return
    reason = netns_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("MESH_REQUIRE_NETNS") == "1":
        pytest.fail(f"MESH_REQUIRE_NETNS=1 and this root test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)
