"""The in-pod capture plan, as data (Istio's default.golden semantics)."""

from __future__ import annotations

import pytest

from ztunnel.cni.rules import plan_capture, plan_probe_snat, plan_release


def _rules(text: str, table: str) -> list[str]:
    block = text.split(f"*{table}\n", 1)[1].split("COMMIT\n", 1)[0]
    return [line for line in block.splitlines() if line.startswith("-A")]


def test_outbound_tcp_goes_to_15001_unless_marked_by_ztunnel() -> None:
    nat = _rules(plan_capture().iptables_restore, "nat")
    assert nat[-1] == (
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"
    )


def test_inbound_tcp_except_hbone_goes_to_15006() -> None:
    nat = _rules(plan_capture().iptables_restore, "nat")
    inbound = [r for r in nat if r.startswith("-A ISTIO_PRERT")]
    assert inbound == [
        "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff "
        "-j REDIRECT --to-ports 15006",
    ]


def test_order_of_output_rules() -> None:
    """Probe answers, connmarked replies and pod-to-self traffic are accepted before the redirect."""
    output = [r for r in _rules(plan_capture().iptables_restore, "nat") if r.startswith("-A ISTIO_OUTPUT")]
    assert [r.split(" -j ")[-1] for r in output] == [
        "ACCEPT",
        "ACCEPT",
        "ACCEPT",
        "REDIRECT --to-ports 15001",
    ]
    assert "169.254.7.127" in output[0]
    assert "--mark 0x111/0xfff" in output[1]
    assert "-o lo" in output[2]


def test_connmark_return_path() -> None:
    plan = plan_capture()
    mangle = _rules(plan.iptables_restore, "mangle")
    assert "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff" in mangle
    assert any("--restore-mark" in r and "connmark --mark 0x111/0xfff" in r for r in mangle)
    assert (plan.ip_rule.fwmark, plan.ip_rule.table, plan.ip_rule.priority) == ("0x111/0xfff", 100, 32764)


def test_bypass_inbound_captures_outbound_only() -> None:
    nat = _rules(plan_capture(bypass_inbound=True).iptables_restore, "nat")
    assert not any(r.startswith("-A ISTIO_PRERT") for r in nat)
    assert any("--to-ports 15001" in r for r in nat)


def test_release_removes_jumps_and_chains() -> None:
    text = plan_release()
    for table in ("mangle", "nat"):
        block = text.split(f"*{table}\n", 1)[1].split("COMMIT\n", 1)[0].splitlines()
        assert block == [
            "-D PREROUTING -j ISTIO_PRERT",
            "-D OUTPUT -j ISTIO_OUTPUT",
            "-F ISTIO_PRERT",
            "-F ISTIO_OUTPUT",
            "-X ISTIO_PRERT",
            "-X ISTIO_OUTPUT",
        ]


def test_probe_snat_is_one_rule_over_the_probe_set() -> None:
    assert _rules(plan_probe_snat(), "nat") == [
        "-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst "
        "-j SNAT --to-source 169.254.7.127"
    ]


@pytest.mark.parametrize("bypass_inbound", [False, True])
def test_every_plan_carries_the_pod_sysctls(bypass_inbound: bool) -> None:
    """tcp_tw_reuse=1 (issue 16) and tcp_migrate_req=1 (issue 17: upgrades) in every enrolled pod, put
    back to a new namespace's defaults on release, each with its reason."""
    sysctls = plan_capture(bypass_inbound=bypass_inbound).sysctls
    assert [(s.key, s.value, s.released) for s in sysctls] == [
        ("net.ipv4.tcp_tw_reuse", "1", "2"),
        ("net.ipv4.tcp_migrate_req", "1", "0"),
    ]
    reasons = {s.key: s.reason for s in sysctls}
    assert "TIME_WAIT" in reasons["net.ipv4.tcp_tw_reuse"]
    assert "SO_REUSEPORT" in reasons["net.ipv4.tcp_migrate_req"]
