"""What the agent feeds iptables-restore given what iptables-save shows: nothing when the capture
is in place, a rebuild without duplicate jumps when it is not, plan_release for a clean removal."""

from __future__ import annotations

from collections.abc import Sequence

from ztunnel.cni.apply import HostProbeSnat, ProbeSet, RulesError
from ztunnel.cni.rules import plan_capture, plan_release
from ztunnel.cni.ruleset import capture_input, parse_save, probe_snat_input, release_input

PLAN = plan_capture().iptables_restore
EMPTY = (
    "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
)


FULL = (  # what iptables-save (1.8.9, nf_tables) prints after plan_capture in an empty namespace
    "*mangle\n"
    ":PREROUTING ACCEPT [0:0]\n"
    ":INPUT ACCEPT [0:0]\n"
    ":FORWARD ACCEPT [0:0]\n"
    ":OUTPUT ACCEPT [0:0]\n"
    ":POSTROUTING ACCEPT [0:0]\n"
    ":ISTIO_OUTPUT - [0:0]\n"
    ":ISTIO_PRERT - [0:0]\n"
    "-A PREROUTING -j ISTIO_PRERT\n"
    "-A OUTPUT -j ISTIO_OUTPUT\n"
    "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n"  # noqa: E501
    "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff\n"
    "COMMIT\n"
    "*nat\n"
    ":PREROUTING ACCEPT [0:0]\n"
    ":INPUT ACCEPT [0:0]\n"
    ":OUTPUT ACCEPT [0:0]\n"
    ":POSTROUTING ACCEPT [0:0]\n"
    ":ISTIO_OUTPUT - [0:0]\n"
    ":ISTIO_PRERT - [0:0]\n"
    "-A PREROUTING -j ISTIO_PRERT\n"
    "-A OUTPUT -j ISTIO_OUTPUT\n"
    "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT\n"
    "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT\n"
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT\n"
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001\n"
    "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT\n"
    "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006\n"  # noqa: E501
    "COMMIT\n"
)


def test_empty_namespace_gets_the_whole_plan() -> None:
    assert capture_input(PLAN, EMPTY) == PLAN


def test_complete_capture_is_left_alone() -> None:
    """iptables-save lists chains in its own order (ISTIO_OUTPUT before ISTIO_PRERT): still in place."""
    assert capture_input(PLAN, FULL) is None


def test_rules_in_the_wrong_order_within_a_chain_are_rebuilt() -> None:
    first = "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT\n"
    last = (
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001\n"
    )
    swapped = FULL.replace(first, "@").replace(last, first).replace("@", last)
    assert swapped != FULL
    restore = capture_input(PLAN, swapped)
    assert restore is not None and "*nat" in restore and "*mangle" not in restore


def test_duplicated_jump_is_removed_and_chains_rebuilt() -> None:
    doubled = FULL.replace("-A PREROUTING -j ISTIO_PRERT\n", "-A PREROUTING -j ISTIO_PRERT\n" * 2, 1)
    restore = capture_input(PLAN, doubled)
    assert restore is not None
    mangle = restore.split("*nat")[0]
    assert "-D PREROUTING -j ISTIO_PRERT" in mangle
    assert "-A PREROUTING -j ISTIO_PRERT" not in mangle
    assert "*nat" not in restore  # the nat table was already right


def test_changed_chain_is_rebuilt_without_adding_jumps_again() -> None:
    tampered = FULL.replace("--to-ports 15001", "--to-ports 15999")
    restore = capture_input(PLAN, tampered)
    assert restore is not None and "*mangle" not in restore
    nat = parse_save(restore)
    assert ":ISTIO_OUTPUT - [0:0]" in restore  # declaring flushes the chain: rebuilt whole
    assert not [r for r in nat.table_rules("nat") if r.split()[1] in ("PREROUTING", "OUTPUT")]
    assert any(r.endswith("--to-ports 15001") for r in nat.table_rules("nat"))


def test_missing_jump_is_added() -> None:
    restore = capture_input(PLAN, FULL.replace("-A OUTPUT -j ISTIO_OUTPUT\n", "", 1))
    assert restore is not None
    assert "-A OUTPUT -j ISTIO_OUTPUT" in restore.split("*nat")[0]


def test_bypass_plan_differs_from_full_capture() -> None:
    assert capture_input(plan_capture(bypass_inbound=True).iptables_restore, FULL) is not None


def test_release_of_a_complete_capture_is_plan_release() -> None:
    assert release_input(PLAN, FULL) == plan_release()


def test_release_of_nothing_is_nothing() -> None:
    assert release_input(PLAN, EMPTY) is None


def test_release_of_a_damaged_capture_removes_what_is_there() -> None:
    damaged = FULL.replace("-A OUTPUT -j ISTIO_OUTPUT\n", "", 1)
    damaged = damaged.replace("-A PREROUTING -j ISTIO_PRERT\n", "-A PREROUTING -j ISTIO_PRERT\n" * 2)
    restore = release_input(PLAN, damaged)
    assert restore is not None
    mangle = restore.split("*nat")[0]
    assert mangle.count("-D PREROUTING -j ISTIO_PRERT") == 2
    assert "-D OUTPUT" not in mangle
    assert "-X ISTIO_OUTPUT" in mangle and "-X ISTIO_PRERT" in mangle


RULE = (
    "-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst "
    "-j SNAT --to-source 169.254.7.127"
)
PROBE_SAVED = (  # what iptables-save (1.8.9, nf_tables) prints after probe_snat_input on a fresh node
    "*nat\n"
    ":PREROUTING ACCEPT [0:0]\n"
    ":INPUT ACCEPT [0:0]\n"
    ":OUTPUT ACCEPT [0:0]\n"
    ":POSTROUTING ACCEPT [0:0]\n"
    ":ISTIO_POSTRT - [0:0]\n"
    "-A POSTROUTING -j ISTIO_POSTRT\n"
    "-A POSTROUTING -s 10.244.1.0/24 -j MASQUERADE\n"
    f"{RULE}\n"
    "COMMIT\n"
)


def _lines(restore: str | None) -> list[str]:
    assert restore is not None
    return [line for line in restore.splitlines() if line not in ("*nat", "COMMIT")]


def test_probe_snat_on_a_fresh_node_builds_the_chain_and_jumps_to_it_first() -> None:
    fresh = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.244.1.0/24 -j MASQUERADE\nCOMMIT\n"
    assert _lines(probe_snat_input(fresh)) == [
        ":ISTIO_POSTRT - [0:0]",
        RULE,
        "-I POSTROUTING 1 -j ISTIO_POSTRT",
    ]


def test_probe_snat_in_place_changes_nothing() -> None:
    assert probe_snat_input(PROBE_SAVED) is None


def test_a_changed_rule_rebuilds_the_chain_but_leaves_the_jump() -> None:
    lines = _lines(probe_snat_input(PROBE_SAVED.replace("169.254.7.127", "169.254.7.1")))
    assert lines == [":ISTIO_POSTRT - [0:0]", RULE]


def test_a_jump_that_is_not_first_or_twice_is_moved_to_the_front() -> None:
    late = PROBE_SAVED.replace(
        "-A POSTROUTING -j ISTIO_POSTRT\n-A POSTROUTING -s 10.244.1.0/24 -j MASQUERADE\n",
        "-A POSTROUTING -s 10.244.1.0/24 -j MASQUERADE\n-A POSTROUTING -j ISTIO_POSTRT\n"
        "-A POSTROUTING -j ISTIO_POSTRT\n",
    )
    assert _lines(probe_snat_input(late))[-3:] == [
        "-D POSTROUTING -j ISTIO_POSTRT",
        "-D POSTROUTING -j ISTIO_POSTRT",
        "-I POSTROUTING 1 -j ISTIO_POSTRT",
    ]


class _Iptables:
    """A command runner holding a node's nat POSTROUTING and probe chain (a test double of the
    iptables binaries: it answers ``-S`` and records restores)."""

    def __init__(self, postrouting: list[str], chain: list[str] | None) -> None:
        self.postrouting, self.chain = postrouting, chain
        self.restores: list[str] = []

    async def __call__(self, argv: Sequence[str], stdin: str | None) -> str:
        if argv[:4] == ["iptables", "-t", "nat", "-S"]:
            if argv[4] == "POSTROUTING":
                return "-P POSTROUTING ACCEPT\n" + "".join(f"{r}\n" for r in self.postrouting)
            if self.chain is None:
                raise RulesError("iptables -t nat -S ISTIO_POSTRT failed (exit 1): chain is incompatible")
            return "-N ISTIO_POSTRT\n" + "".join(f"{r}\n" for r in self.chain)
        assert argv == ["iptables-restore", "--noflush"] and stdin is not None, argv
        self.restores.append(stdin)
        return ""


class _Members(ProbeSet):
    """The probe set without the kernel (a test double of its netlink calls): records the members."""

    def __init__(self, members: set[str]) -> None:
        super().__init__()
        self.members, self.created = set(members), 0

    async def create(self) -> None:
        self.created += 1

    async def sync(self, wanted: frozenset[str]) -> bool:
        changed = wanted != self.members
        self.members = set(wanted)
        return changed


async def test_host_probe_snat_builds_the_chain_on_a_fresh_node_then_only_changes_the_set() -> None:
    masquerade = "-A POSTROUTING -s 10.244.1.0/24 -j MASQUERADE"
    fresh, members = _Iptables([masquerade], None), _Members(set())
    snat = HostProbeSnat(run=fresh, members=members)
    assert await snat.ensure(["10.244.1.3", "fd00::3"])
    (restore,) = fresh.restores
    assert "-I POSTROUTING 1 -j ISTIO_POSTRT" in restore and RULE in restore
    assert members.members == {"10.244.1.3"} and members.created == 1  # IPv4 only
    assert await snat.ensure(["10.244.1.3", "10.244.1.7"])
    assert not await snat.ensure(["10.244.1.7", "10.244.1.3"])
    assert len(fresh.restores) == 1 and members.created == 1  # the rule is written once


async def test_host_probe_snat_in_place_touches_nothing() -> None:
    in_place = _Iptables(
        ["-A POSTROUTING -j ISTIO_POSTRT", "-A POSTROUTING -s 10.244.1.0/24 -j MASQUERADE"], [RULE]
    )
    assert not await HostProbeSnat(run=in_place, members=_Members({"10.244.1.3"})).ensure(["10.244.1.3"])
    assert in_place.restores == []
