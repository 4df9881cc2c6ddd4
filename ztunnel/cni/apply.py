"""Applying a capture plan inside a pod's network namespace (``nsenter --net=<path>``).

One ``iptables-save`` reads what is there, then (only when something differs) one
``iptables-restore --noflush`` makes the ISTIO chains match the plan (see ``ruleset``); the policy
rule ``fwmark 0x111/0xfff lookup 100`` (priority 32764) is added when missing and the route
``local 0.0.0.0/0 dev lo table 100`` is replaced (both idempotent), and the plan's sysctls are
written where they differ. Release removes all of it and puts the sysctls back to their defaults.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from mesh.errors import MeshError
from ztunnel.cni.rules import PROBE_CHAIN, CapturePlan, IpRule, plan_capture
from ztunnel.cni.ruleset import capture_input, ip_rule_present, probe_snat_input, release_input

__all__ = ["CommandRunner", "HostProbeSnat", "NetnsRules", "RuleChange", "RulesError", "run_command"]

CommandRunner = Callable[[Sequence[str], str | None], Awaitable[str]]
"""Runs argv with optional stdin, returns stdout; raises RulesError on failure."""

_TIMEOUT = 15.0
_GONE = ("No such file or directory", "No such process", "Cannot find", "does not exist")


class RulesError(MeshError):
    """Installing or removing rules in a pod's network namespace failed."""


@dataclass(frozen=True, slots=True)
class RuleChange:
    """What an apply or release did (False fields: already as wanted, nothing touched)."""

    iptables: bool
    ip_rule: bool
    sysctls: bool = False


async def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Runs ``argv`` and returns its stdout; a non-zero exit raises RulesError with stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise RulesError(
            f"cannot run {argv[0]}: {exc}", hint="install iptables, iproute2 and util-linux"
        ) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), _TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RulesError(f"{' '.join(argv)} did not finish within {_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise RulesError(f"{' '.join(argv)} failed (exit {proc.returncode}): {text[-400:]}")
    return out.decode(errors="replace")


class NetnsRules:
    """Installs and removes the capture in the namespace at a path (e.g. ``/var/run/netns/x``)."""

    def __init__(self, *, run: CommandRunner = run_command, nsenter: str = "nsenter") -> None:
        self._run = run
        self._nsenter = nsenter

    async def _in(self, netns: str, argv: Sequence[str], stdin: str | None = None) -> str:
        return await self._run([self._nsenter, f"--net={netns}", *argv], stdin)

    async def _saved(self, netns: str) -> str:
        mangle = await self._in(netns, ["iptables-save", "-t", "mangle"])
        return mangle + await self._in(netns, ["iptables-save", "-t", "nat"])

    async def ensure_capture(self, netns: str, plan: CapturePlan | None = None) -> RuleChange:
        """Makes the namespace's capture match ``plan``; touches nothing that already does."""
        plan = plan or plan_capture()
        saved = await self._saved(netns)
        restore = capture_input(plan.iptables_restore, saved)
        if restore is not None:
            await self._in(netns, ["iptables-restore", "--noflush"], restore)
        rule = plan.ip_rule
        shown = await self._in(netns, ["ip", "rule", "show", "pref", str(rule.priority)])
        added = not ip_rule_present(shown, fwmark=rule.fwmark, table=rule.table, priority=rule.priority)
        if added:
            await self._in(netns, _rule_argv("add", rule))
        await self._in(netns, ["ip", "route", "replace", *rule.route.split(), "table", str(rule.table)])
        written = await self._set_sysctls(netns, {s.key: s.value for s in plan.sysctls})
        return RuleChange(iptables=restore is not None, ip_rule=added, sysctls=written)

    async def _set_sysctls(self, netns: str, wanted: dict[str, str]) -> bool:
        """Writes each sysctl whose value in the namespace differs; True when any was written."""
        written = False
        for key, value in wanted.items():
            if (await self._in(netns, ["sysctl", "-n", key])).strip() != value:
                await self._in(netns, ["sysctl", "-q", "-w", f"{key}={value}"])
                written = True
        return written

    async def has_capture(self, netns: str, plan: CapturePlan | None = None) -> bool:
        """Whether the namespace holds exactly the plan's chains and jumps."""
        plan = plan or plan_capture()
        saved = await self._saved(netns)
        return capture_input(plan.iptables_restore, saved) is None

    async def release(self, netns: str) -> RuleChange:
        """Removes the ISTIO chains, the jumps into them, the policy rule and the table-100 route."""
        plan = plan_capture()
        saved = await self._saved(netns)
        restore = release_input(plan.iptables_restore, saved)
        if restore is not None:
            await self._in(netns, ["iptables-restore", "--noflush"], restore)
        rule = plan.ip_rule
        removed = False
        for _ in range(8):  # bounded: duplicates are removed one by one
            shown = await self._in(netns, ["ip", "rule", "show", "pref", str(rule.priority)])
            if not ip_rule_present(shown, fwmark=rule.fwmark, table=rule.table, priority=rule.priority):
                break
            await self._in(netns, _rule_argv("del", rule))
            removed = True
        try:
            await self._in(netns, ["ip", "route", "del", *rule.route.split(), "table", str(rule.table)])
        except RulesError as exc:
            if not any(marker in exc.message for marker in _GONE):
                raise
        reset = await self._set_sysctls(netns, {s.key: s.released for s in plan.sysctls})
        return RuleChange(iptables=restore is not None, ip_rule=removed, sysctls=reset)


class HostProbeSnat:
    """The node side of the probe exemption, in the agent's own network namespace (the host's; a
    node's in the lab): local traffic to captured pods leaves with 169.254.7.127 as its source, which
    the pods' rules let past ztunnel, so kubelet probes work under STRICT mTLS (Istio's hostprobe)."""

    def __init__(self, *, run: CommandRunner = run_command) -> None:
        self._run = run

    async def ensure(self, pod_ips: Iterable[str]) -> bool:
        """Makes the SNAT cover exactly ``pod_ips``; False when it already did (nothing touched)."""
        restore = probe_snat_input(pod_ips, await self._saved())
        if restore is None:
            return False
        await self._run(["iptables-restore", "--noflush"], restore)
        return True

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


def _rule_argv(verb: str, rule: IpRule) -> list[str]:
    return ["ip", "rule", verb, "fwmark", rule.fwmark, "pref", str(rule.priority), "lookup", str(rule.table)]
