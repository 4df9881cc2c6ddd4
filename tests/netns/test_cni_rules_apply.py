"""The capture plan applies in a real network namespace with one iptables-restore and releases cleanly."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from ztunnel.cni.apply import NetnsRules, RuleChange
from ztunnel.cni.rules import plan_capture, plan_release

pytestmark = pytest.mark.netns


def _in_ns(ns: str, *argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    return result.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mtest-rules-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _saved(ns: str) -> str:
    text = _in_ns(ns, "iptables-save")
    return "\n".join(line for line in text.splitlines() if line.startswith("-"))


def test_apply_then_release_leaves_nothing(netns: str) -> None:
    before = _saved(netns)
    _in_ns(netns, "iptables-restore", "--noflush", stdin=plan_capture().iptables_restore)
    applied = _in_ns(netns, "iptables-save")
    assert (
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"
        in applied
    )
    assert "-A PREROUTING -j ISTIO_PRERT" in applied
    _in_ns(netns, "iptables-restore", "--noflush", stdin=plan_release())
    after = _in_ns(netns, "iptables-save")
    assert "ISTIO" not in after
    assert _saved(netns) == before


async def test_node_agent_rules_set_the_pod_sysctls_and_put_them_back(netns: str) -> None:
    rules, path = NetnsRules(), f"/var/run/netns/{netns}"

    def values() -> list[str]:
        keys = ("net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_migrate_req")
        return _in_ns(netns, "sysctl", "-n", *keys).split()

    assert values() == ["2", "0"]
    assert await rules.ensure_capture(path) == RuleChange(iptables=True, ip_rule=True, sysctls=True)
    assert values() == ["1", "1"]
    assert await rules.ensure_capture(path) == RuleChange(iptables=False, ip_rule=False, sysctls=False)
    assert await rules.release(path) == RuleChange(iptables=True, ip_rule=True, sysctls=True)
    assert values() == ["2", "0"]
