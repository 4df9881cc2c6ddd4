"""Planning the in-pod capture rules (pure): what Istio's istio-cni installs, as data.

The rules follow istio-ambient-facts.md section 3b (Istio's ``default.golden``): outbound TCP is
redirected to ztunnel's 15001, inbound TCP except 15008 to 15006, everything ztunnel itself sends
carries the socket mark 0x539 and is skipped, and connections ztunnel opened with a spoofed source
are connmarked 0x111 so replies route back locally through table 100. Node-local probes arrive
from 169.254.7.127 and are not captured. A plan also carries the pod's network sysctls that the
mesh needs (``POD_SYSCTLS``), each with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.ports import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, MESH_MARK, MESH_MARK_MASK, OUTBOUND_PORT

__all__ = [
    "CONNMARK",
    "PROBE_CHAIN",
    "PROBE_SET",
    "PROBE_HOOK",
    "PROBE_SOURCE",
    "ROUTE_TABLE",
    "RULE_PRIORITY",
    "ZTUNNEL_MARK",
    "POD_SYSCTLS",
    "CapturePlan",
    "IpRule",
    "PodSysctl",
    "plan_capture",
    "plan_release",
    "plan_probe_snat",
]

ZTUNNEL_MARK = f"{MESH_MARK:#x}/{MESH_MARK_MASK:#x}"
CONNMARK = "0x111/0xfff"
ROUTE_TABLE = 100
RULE_PRIORITY = 32764
PROBE_SOURCE = "169.254.7.127"
PROBE_CHAIN = "ISTIO_POSTRT"
PROBE_SET = "istio-inpod-probes-v4"
"""The node's ipset of captured pods' IPv4 addresses (the capture rules are IPv4 only)."""
PROBE_HOOK = f"-A POSTROUTING -j {PROBE_CHAIN}"
"""The node's jump into the probe chain; it must be the first POSTROUTING rule, ahead of any
masquerading, or a probe would leave with another source."""

_CHAINS = {"mangle": ("ISTIO_PRERT", "ISTIO_OUTPUT"), "nat": ("ISTIO_PRERT", "ISTIO_OUTPUT")}
_HOOKS = {"ISTIO_PRERT": "PREROUTING", "ISTIO_OUTPUT": "OUTPUT"}


@dataclass(frozen=True, slots=True)
class IpRule:
    """An ``ip rule``: replies marked ``fwmark`` look up ``table``, whose one route
    (``local 0.0.0.0/0 dev lo``) makes them local, so they reach ztunnel's transparent sockets."""

    fwmark: str
    table: int
    priority: int


@dataclass(frozen=True, slots=True)
class PodSysctl:
    """A per-namespace sysctl the node agent sets in an enrolled pod, and puts back on release."""

    key: str
    """Dotted name, as ``sysctl`` takes it (``net.ipv4.tcp_tw_reuse``)."""
    value: str
    released: str
    """The kernel's default for a new network namespace, written back when the pod leaves the mesh."""
    reason: str


POD_SYSCTLS = (
    PodSysctl(
        key="net.ipv4.tcp_tw_reuse",
        value="1",
        released="2",
        reason="Every connection ztunnel delivers into the pod comes from the client's IP (a transparent "
        "source), so sustained new connections from one client leave that IP's 4-tuples to the "
        "server port in TIME_WAIT; with the kernel default (2: loopback only) each new source port "
        "is a longer search and finally EADDRNOTAVAIL. With 1, an outgoing connect() may take over "
        "a TIME_WAIT 4-tuple whose last timestamp is over 1 s old (TCP timestamps and PAWS keep "
        "old segments out). It affects only connections opened from the pod, as loopback has by "
        "default.",
    ),
    PodSysctl(
        key="net.ipv4.tcp_migrate_req",
        value="1",
        released="0",
        reason="ztunnel's in-pod listeners are SO_REUSEPORT so that a new ztunnel binds next to the old "
        "one during an upgrade; when the old one closes its listeners, connections still waiting in "
        "their accept queues (and handshakes in progress) would be reset. With 1 the kernel moves "
        "them to another listener of the same port (the new ztunnel's). It changes nothing while "
        "only one listener has the port.",
    ),
)
"""Sysctls of every enrolled pod's network namespace (issue 16: without tw_reuse a server pod's
new-connection rate fell 5x after about 15,000 connections from one client; issue 17: without
migrate_req a ztunnel upgrade reset the connections queued on the old ztunnel's listeners)."""


@dataclass(frozen=True, slots=True)
class CapturePlan:
    """Everything to install in a pod's network namespace."""

    iptables_restore: str
    """Input for ``iptables-restore --noflush`` (one atomic transaction)."""
    ip_rule: IpRule
    sysctls: tuple[PodSysctl, ...] = POD_SYSCTLS


def plan_capture(*, bypass_inbound: bool = False) -> CapturePlan:
    """The rules that enrol a pod (``bypass_inbound`` captures outbound only)."""
    mangle = [
        f"-A ISTIO_PRERT -m mark --mark {ZTUNNEL_MARK} -j CONNMARK --set-xmark {CONNMARK}",
        f"-A ISTIO_OUTPUT -m connmark --mark {CONNMARK} "
        "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    ]
    nat = []
    if not bypass_inbound:
        nat += [
            f"-A ISTIO_PRERT -s {PROBE_SOURCE}/32 -p tcp -m tcp -j ACCEPT",
            f"-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport {INBOUND_HBONE_PORT} "
            f"-m mark ! --mark {ZTUNNEL_MARK} -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}",
        ]
    nat += [
        f"-A ISTIO_OUTPUT -d {PROBE_SOURCE}/32 -p tcp -m tcp -j ACCEPT",
        f"-A ISTIO_OUTPUT -p tcp -m mark --mark {CONNMARK} -j ACCEPT",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
        f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {ZTUNNEL_MARK} "
        f"-j REDIRECT --to-ports {OUTBOUND_PORT}",
    ]
    text = _table("mangle", _declare("mangle") + _jumps("mangle", "-A") + mangle)
    text += _table("nat", _declare("nat") + _jumps("nat", "-A") + nat)
    return CapturePlan(text, IpRule(CONNMARK, ROUTE_TABLE, RULE_PRIORITY))


def plan_release() -> str:
    """``iptables-restore --noflush`` input that removes exactly what ``plan_capture`` added."""
    text = ""
    for table in ("mangle", "nat"):
        lines = _jumps(table, "-D")
        lines += [f"-F {chain}" for chain in _CHAINS[table]]
        lines += [f"-X {chain}" for chain in _CHAINS[table]]
        text += _table(table, lines)
    return text


def plan_probe_snat() -> str:
    """Node-side rules (``iptables-restore --noflush`` input) that SNAT node-local TCP to the
    addresses in the ipset ``PROBE_SET`` to 169.254.7.127, so kubelet probes bypass ztunnel (Istio's
    ``hostprobe``, with its set name). The rule is written once; enrolling or releasing a pod adds
    or removes its address in the set (one netlink message, however many pods the node runs).
    Rules are written as ``iptables-save`` prints them, so what is in place compares equal."""
    rule = (
        f"-A {PROBE_CHAIN} -p tcp -m owner --socket-exists -m set --match-set {PROBE_SET} dst "
        f"-j SNAT --to-source {PROBE_SOURCE}"
    )
    return _table("nat", [f":{PROBE_CHAIN} - [0:0]", rule])


def _declare(table: str) -> list[str]:
    return [f":{chain} - [0:0]" for chain in _CHAINS[table]]


def _jumps(table: str, verb: str) -> list[str]:
    return [f"{verb} {_HOOKS[chain]} -j {chain}" for chain in _CHAINS[table]]


def _table(name: str, lines: list[str]) -> str:
    return f"*{name}\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
