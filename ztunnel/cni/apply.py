"""Applying a capture plan inside a pod's network namespace.

One ``iptables-save`` reads what is there, then (only when something differs) one
``iptables-restore --noflush`` makes the ISTIO chains match the plan (see ``ruleset``); both run
through ``nsenter --net=<path>``. The policy rule ``fwmark 0x111/0xfff lookup 100`` (priority 32764)
is added when missing and the route ``local 0.0.0.0/0 dev lo table 100`` replaced over netlink
(pyroute2), and the plan's sysctls written through /proc/sys where they differ, both from inside the
namespace without a process per step (forking ``ip`` and ``sysctl`` cost five processes per
enrolment: perf/README.md, bench_enrol). Release removes all of it and puts the sysctls back.

The netlink socket is made in the pod's namespace: this thread enters it (setns, as ztunnel makes its
in-pod sockets), makes the socket and returns at once; a socket stays in the namespace it was made
in, so its requests then run on the event loop as any other I/O. /proc/sys/net shows the namespace
of the thread that opens a file, so sysctls are read and written inside ``in_netns``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pyroute2 import IPSet
from pyroute2.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELROUTE, RTM_DELRULE, RTM_NEWROUTE, RTM_NEWRULE
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL, fibmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from mesh.errors import MeshError
from mesh.rt.net.netns import in_netns
from ztunnel.cni.rules import PROBE_CHAIN, PROBE_SET, CapturePlan, IpRule, plan_capture
from ztunnel.cni.ruleset import capture_input, probe_snat_input, release_input

__all__ = [
    "CommandRunner",
    "HostProbeSnat",
    "NetnsRules",
    "ProbeSet",
    "RuleChange",
    "RulesError",
    "StepClock",
    "ensure_routing",
    "run_command",
    "write_sysctls",
]

CommandRunner = Callable[[Sequence[str], str | None], Awaitable[str]]
"""Runs argv with optional stdin, returns stdout; raises RulesError on failure."""

_TIMEOUT = 15.0
_LOOPBACK_INDEX = 1  # lo is interface 1 in every network namespace
_NETLINK_TIMEOUT = 2.0  # the kernel answers within send(); this only bounds a broken socket
RTN_LOCAL, RT_SCOPE_HOST = 2, 254
RTPROT_BOOT = 3  # what `ip route` writes when not told: routes look as they did when `ip` made them


class RulesError(MeshError):
    """Installing or removing rules in a pod's network namespace failed."""


@dataclass(frozen=True, slots=True)
class RuleChange:
    """What an apply or release did (False fields: already as wanted, nothing touched)."""

    iptables: bool
    ip_rule: bool
    sysctls: bool = False
    steps_ms: Mapping[str, float] = field(default_factory=dict, compare=False)
    """How long each step took (``iptables``, ``routes``, ``sysctls``), for the enrolment log."""


async def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Runs ``argv`` and returns its stdout; a non-zero exit raises RulesError with stderr.

    It runs from a worker thread with ``subprocess`` (vfork: 0.26 ms of this process's CPU per
    command, against 1.1 ms for the event loop's fork of the whole agent), and waits there."""
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            list(argv),
            input=stdin.encode() if stdin is not None else None,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RulesError(f"{' '.join(argv)} did not finish within {_TIMEOUT:g} s") from None
    except OSError as exc:
        raise RulesError(
            f"cannot run {argv[0]}: {exc}", hint="install iptables, iproute2 and util-linux"
        ) from None
    if done.returncode != 0:
        text = done.stderr.decode(errors="replace").strip() or done.stdout.decode(errors="replace").strip()
        raise RulesError(f"{' '.join(argv)} failed (exit {done.returncode}): {text[-400:]}")
    return done.stdout.decode(errors="replace")


class NetnsRules:
    """Installs and removes the capture in the namespace at a path (e.g. ``/var/run/netns/x``)."""

    def __init__(self, *, run: CommandRunner = run_command, nsenter: str = "nsenter") -> None:
        self._run = run
        self._nsenter = nsenter

    async def _in(self, netns: str, argv: Sequence[str], stdin: str | None = None) -> str:
        return await self._run([self._nsenter, f"--net={netns}", *argv], stdin)

    async def _saved(self, netns: str) -> str:
        tables = [self._in(netns, ["iptables-save", "-t", table]) for table in ("mangle", "nat")]
        return "".join(await asyncio.gather(*tables))  # by name: unnamed, a table not yet used is not listed

    async def ensure_capture(
        self, netns: str, plan: CapturePlan | None = None, *, fresh: bool = False
    ) -> RuleChange:
        """Makes the namespace's capture match ``plan``; touches nothing that already does.
        ``fresh``: the namespace never had rules from this agent (a new sandbox), so they are written
        without reading them first (two ``iptables-save`` processes fewer per new pod)."""
        plan = plan or plan_capture()
        clock = StepClock()
        restore = capture_input(plan.iptables_restore, "" if fresh else await self._saved(netns))
        rule, sysctls = plan.ip_rule, {s.key: s.value for s in plan.sysctls}
        return await self._converge(netns, clock, restore, lambda: ensure_routing(netns, rule), sysctls)

    async def has_capture(self, netns: str, plan: CapturePlan | None = None) -> bool:
        """Whether the namespace holds exactly the plan's chains and jumps."""
        plan = plan or plan_capture()
        saved = await self._saved(netns)
        return capture_input(plan.iptables_restore, saved) is None

    async def release(self, netns: str) -> RuleChange:
        """Removes the ISTIO chains, the jumps into them, the policy rule and the table-100 route."""
        plan = plan_capture()
        clock = StepClock()
        restore = release_input(plan.iptables_restore, await self._saved(netns))
        rule, sysctls = plan.ip_rule, {s.key: s.released for s in plan.sysctls}
        return await self._converge(netns, clock, restore, lambda: _remove_routing(netns, rule), sysctls)

    async def _converge(
        self,
        netns: str,
        clock: StepClock,
        restore: str | None,
        routing: Callable[[], bool],
        sysctls: Mapping[str, str],
    ) -> RuleChange:
        """Applies the iptables change (None: none needed), then the routing, then the sysctls."""
        if restore is not None:
            await self._in(netns, ["iptables-restore", "--noflush"], restore)
        clock.done("iptables")
        routed = routing()
        clock.done("routes")
        written = write_sysctls(netns, sysctls)
        clock.done("sysctls")
        changed = restore is not None
        return RuleChange(iptables=changed, ip_rule=routed, sysctls=written, steps_ms=clock.steps_ms)


class StepClock:
    """Milliseconds per named step of one operation, each from the end of the one before."""

    def __init__(self) -> None:
        self.steps_ms: dict[str, float] = {}
        self._started = self._last = time.perf_counter()

    def done(self, step: str) -> None:
        """Ends ``step`` now."""
        now = time.perf_counter()
        self.steps_ms[step], self._last = round((now - self._last) * 1e3, 3), now

    def restart(self) -> None:
        """The next step starts now (time since the last one belongs to none)."""
        self._last = time.perf_counter()

    def total(self) -> float:
        """Milliseconds since the clock started."""
        return round((time.perf_counter() - self._started) * 1e3, 3)


@contextlib.contextmanager
def _inside(netns: str) -> Iterator[None]:
    """This thread inside the namespace at ``netns`` for the body (microseconds: no blocking I/O)."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RulesError(f"cannot open the network namespace {netns}: {exc.strerror}") from None
    try:
        with in_netns(fd):
            yield
    finally:
        os.close(fd)


_EEXIST, _ENOENT, _ESRCH = 17, 2, 3


class _Rtnetlink:
    """A route-netlink socket made inside a pod's namespace, for one request/ack at a time. The
    kernel handles a request within ``send`` and queues its answer, so ``recv`` returns at once: it
    runs on the event loop (pyroute2's own asyncio transport needs a datagram-capable loop, and
    uvloop has none for netlink; its message classes encode and decode here)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        with _inside(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.settimeout(_NETLINK_TIMEOUT)
        self._seq = 0
        self._marshal = MarshalRtnl()

    def __enter__(self) -> _Rtnetlink:
        return self

    def __exit__(self, *_: object) -> None:
        self._sock.close()

    def request(self, msg: nlmsg, kind: int, flags: int) -> None:
        """Sends ``msg`` and waits for its ack; a refusal raises NetlinkError (its ``code``)."""
        self._seq += 1
        msg["header"].update(
            {"type": kind, "flags": NLM_F_REQUEST | NLM_F_ACK | flags, "sequence_number": self._seq}
        )
        msg.encode()
        try:
            self._sock.send(msg.data)
            while True:
                for reply in self._marshal.parse(self._sock.recv(65536)):
                    if (
                        reply["header"]["sequence_number"] != self._seq
                        or reply["header"]["type"] != NLMSG_ERROR
                    ):
                        continue
                    error = reply["header"].get("error")
                    if error is not None:
                        raise error
                    return
        except OSError as exc:
            raise RulesError(f"netlink in {self.netns}: {exc}") from None


def _rule(rule: IpRule) -> fibmsg:
    mark, _, mask = rule.fwmark.partition("/")
    msg = fibmsg()
    msg["family"], msg["action"] = socket.AF_INET, FR_ACT_TO_TBL
    msg["attrs"] = [
        ("FRA_PRIORITY", rule.priority),
        ("FRA_FWMARK", int(mark, 0)),
        ("FRA_FWMASK", int(mask or "0xffffffff", 0)),
        ("FRA_TABLE", rule.table),
    ]
    return msg


def _local_route(table: int) -> rtmsg:
    """``local 0.0.0.0/0 dev lo table <table>``, as ``ip route`` writes it."""
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["type"] = socket.AF_INET, 0, RTN_LOCAL
    msg["scope"], msg["proto"] = RT_SCOPE_HOST, RTPROT_BOOT
    msg["attrs"] = [("RTA_TABLE", table), ("RTA_OIF", _LOOPBACK_INDEX)]
    return msg


def ensure_routing(netns: str, rule: IpRule) -> bool:
    """Adds the policy rule when missing and replaces its table's local route; True when added."""
    try:
        with _Rtnetlink(netns) as rtnl:
            try:
                rtnl.request(_rule(rule), RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL)
                added = True
            except NetlinkError as exc:
                if exc.code != _EEXIST:  # EXCL: an identical rule is there already
                    raise
                added = False
            rtnl.request(_local_route(rule.table), RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)
    except NetlinkError as exc:
        raise RulesError(f"netlink in {netns}: {exc}", hint="the node agent needs CAP_NET_ADMIN") from None
    return added


def _remove_routing(netns: str, rule: IpRule) -> bool:
    """Deletes every copy of the policy rule and its table's route; True when a rule was there."""
    removed = False
    try:
        with _Rtnetlink(netns) as rtnl:
            for _ in range(8):  # bounded: duplicates are removed one by one
                try:
                    rtnl.request(_rule(rule), RTM_DELRULE, 0)
                except NetlinkError as exc:
                    if exc.code != _ENOENT:
                        raise
                    break
                removed = True
            try:
                rtnl.request(_local_route(rule.table), RTM_DELROUTE, 0)
            except NetlinkError as exc:
                if exc.code not in (_ENOENT, _ESRCH):  # no such route, or no such table: gone
                    raise
    except NetlinkError as exc:
        raise RulesError(f"netlink in {netns}: {exc}", hint="the node agent needs CAP_NET_ADMIN") from None
    return removed


def write_sysctls(netns: str, wanted: Mapping[str, str]) -> bool:
    """Writes each sysctl (dotted name) whose value in the namespace differs; True when any was."""
    written = False
    with _inside(netns):
        for key, value in wanted.items():
            path = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(path) as current:
                    if current.read().strip() == value:
                        continue
                with open(path, "w") as target:
                    target.write(value)
            except OSError as exc:
                raise RulesError(f"cannot set {key} in {netns}: {exc.strerror}") from None
            written = True
    return written


class HostProbeSnat:
    """The node side of the probe exemption, in the agent's own network namespace (the host's; a
    node's in the lab): local traffic to captured pods leaves with 169.254.7.127 as its source, which
    the pods' rules let past ztunnel, so kubelet probes work under STRICT mTLS (Istio's hostprobe).

    One SNAT rule matches the ipset ``PROBE_SET``; pods come and go as set members, over netlink.
    The rule and the jump into it are checked (and repaired) on the first call; the members are
    read once, then kept in step by adding and removing the difference."""

    def __init__(self, *, run: CommandRunner = run_command, members: ProbeSet | None = None) -> None:
        self._run = run
        self._set = members or ProbeSet()
        self._hooked = False

    async def ensure(self, pod_ips: Iterable[str]) -> bool:
        """Makes the SNAT cover exactly ``pod_ips`` (IPv4); False when it already did (nothing
        touched)."""
        wanted = frozenset(ip for ip in pod_ips if ":" not in ip)
        hooked_now = False
        if not self._hooked:
            await self._set.create()  # the rule refers to the set: it comes first
            restore = probe_snat_input(await self._saved())
            if restore is not None:
                await self._run(["iptables-restore", "--noflush"], restore)
            self._hooked, hooked_now = True, restore is not None
        changed = await self._set.sync(wanted)
        return hooked_now or changed

    async def _saved(self) -> str:
        """POSTROUTING and the probe chain, as ``iptables-save`` would show them: listing two chains
        stays cheap on nodes whose nat table holds thousands of kube-proxy rules."""
        hooks = await self._run(["iptables", "-t", "nat", "-S", "POSTROUTING"], None)
        try:
            ours = await self._run(["iptables", "-t", "nat", "-S", PROBE_CHAIN], None)
        except RulesError:
            ours = ""  # the chain does not exist yet (iptables-nft says "incompatible")
        lines = [f":{PROBE_CHAIN} - [0:0]"] if ours else []
        lines += [line for line in (hooks + ours).splitlines() if line.startswith("-A ")]
        return "*nat\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"


class ProbeSet:
    """The ipset of captured pods' addresses, over netlink (pyroute2's ``IPSet``). pyroute2's
    synchronous API runs an asyncio loop of its own, which the agent's loop thread cannot host, so
    one worker thread keeps the netlink socket and makes every call (about a millisecond each)."""

    def __init__(self, name: str = PROBE_SET) -> None:
        self.name = name
        self._members: set[str] | None = None
        self._ipset: IPSet | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-set")

    async def create(self) -> None:
        """Creates the set (``hash:ip``) unless it exists."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._create)

    async def sync(self, wanted: frozenset[str]) -> bool:
        """Adds and removes members until the set is ``wanted``; True when any was."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._sync, wanted)

    def _socket(self) -> IPSet:
        if self._ipset is None:
            self._ipset = IPSet()
        return self._ipset

    def _failed(self, exc: NetlinkError) -> RulesError:
        """Forgets the socket and the members (both are made and read again next time)."""
        if self._ipset is not None:
            self._ipset.close()
        self._ipset, self._members = None, None
        hint = "the node needs the ip_set and xt_set kernel modules, and CAP_NET_ADMIN"
        return RulesError(f"ipset {self.name}: {exc}", hint=hint)

    def _create(self) -> None:
        try:
            self._socket().create(self.name, stype="hash:ip")
        except NetlinkError as exc:
            if exc.code != _EEXIST:
                raise self._failed(exc) from None

    def _sync(self, wanted: frozenset[str]) -> bool:
        try:
            ipset = self._socket()
            members = self._members if self._members is not None else self._read(ipset)
            for ip in sorted(wanted - members):
                ipset.add(self.name, ip)
            for ip in sorted(members - wanted):
                ipset.delete(self.name, ip)
        except NetlinkError as exc:
            raise self._failed(exc) from None
        self._members = set(wanted)
        return wanted != members

    def _read(self, ipset: IPSet) -> set[str]:
        members = set()
        for msg in ipset.list(self.name):
            adt = msg.get_attr("IPSET_ATTR_ADT")
            for entry in adt.get_attrs("IPSET_ATTR_DATA") if adt else ():
                members.add(entry.get_attr("IPSET_ATTR_IP_FROM").get_attr("IPSET_ATTR_IPADDR_IPV4"))
        return members
