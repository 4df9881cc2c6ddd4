"""What to feed ``iptables-restore`` given what ``iptables-save`` shows (pure).

``iptables-restore --noflush`` flushes a user chain it declares (``:ISTIO_OUTPUT - [0:0]``), so the
ISTIO chains of a capture plan are rebuilt whole on every apply; the jumps into them from the
built-in chains (``-A PREROUTING -j ISTIO_PRERT``) would pile up instead. So the node agent reads
the namespace's rules first: when they already match the plan it changes nothing (a restarted agent
disturbs no pod); otherwise it rebuilds the ISTIO chains and adds only the missing jumps (removing
duplicates), all in one restore transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from ztunnel.cni.rules import PROBE_CHAIN, PROBE_HOOK, plan_probe_snat, plan_release

__all__ = [
    "SavedRules",
    "capture_input",
    "parse_save",
    "probe_snat_input",
    "release_input",
]


@dataclass(frozen=True, slots=True)
class SavedRules:
    """The rules of a few tables: chain declarations and ``-A`` lines, in order, per table."""

    chains: dict[str, tuple[str, ...]]
    rules: dict[str, tuple[str, ...]]

    def table_rules(self, table: str) -> tuple[str, ...]:
        """The ``-A`` lines of ``table`` (empty when the table is absent)."""
        return self.rules.get(table, ())

    def table_chains(self, table: str) -> tuple[str, ...]:
        """The chain names declared in ``table``."""
        return self.chains.get(table, ())


def parse_save(text: str) -> SavedRules:
    """Parses ``iptables-save`` output (or ``iptables-restore`` input)."""
    chains: dict[str, list[str]] = {}
    rules: dict[str, list[str]] = {}
    table = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
            chains.setdefault(table, [])
            rules.setdefault(table, [])
        elif line.startswith(":") and table:
            chains[table].append(line[1:].split()[0])
        elif line.startswith("-A ") and table:
            rules[table].append(line)
    return SavedRules(
        chains={t: tuple(c) for t, c in chains.items()}, rules={t: tuple(r) for t, r in rules.items()}
    )


def _chain_of(rule: str) -> str:
    return rule.split()[1]


def _user_rules(rules: tuple[str, ...], chains: tuple[str, ...]) -> list[str]:
    return [rule for rule in rules if _chain_of(rule) in chains]


def _by_chain(rules: tuple[str, ...], chains: tuple[str, ...]) -> dict[str, list[str]]:
    """The rules of each of ``chains`` in order (iptables-save groups chains in its own order)."""
    return {chain: [rule for rule in rules if _chain_of(rule) == chain] for chain in chains}


def _hook_rules(rules: tuple[str, ...], chains: tuple[str, ...]) -> list[str]:
    return [rule for rule in rules if _chain_of(rule) not in chains]


def capture_input(plan_text: str, saved_text: str) -> str | None:
    """The ``iptables-restore --noflush`` input that makes the namespace match ``plan_text``, or
    None when it already does (then nothing must be touched)."""
    plan, saved = parse_save(plan_text), parse_save(saved_text)
    out = ""
    for table, own in plan.chains.items():
        wanted_user = _user_rules(plan.table_rules(table), own)
        wanted_hooks = _hook_rules(plan.table_rules(table), own)
        have = saved.table_rules(table)
        same = _by_chain(have, own) == _by_chain(plan.table_rules(table), own)
        in_place = same and all(have.count(h) == 1 for h in wanted_hooks)
        if in_place and set(own) <= set(saved.table_chains(table)):
            continue
        lines = [f":{chain} - [0:0]" for chain in own]
        for hook in wanted_hooks:
            extra = have.count(hook) - 1
            lines += ["-D" + hook[2:]] * extra if extra > 0 else []
            lines += [hook] if extra < 0 else []
        lines += wanted_user
        out += f"*{table}\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
    return out or None


def release_input(plan_text: str, saved_text: str) -> str | None:
    """The ``iptables-restore --noflush`` input that removes the plan's chains and every jump into
    them, or None when none is there. When the capture is complete this is exactly
    :func:`plan_release`."""
    plan, saved = parse_save(plan_text), parse_save(saved_text)
    complete = capture_input(plan_text, saved_text) is None
    if complete:
        return plan_release()
    out = ""
    for table, own in plan.chains.items():
        present = [chain for chain in own if chain in saved.table_chains(table)]
        jumps = [
            rule
            for rule in saved.table_rules(table)
            if _jump_target(rule) in own and rule.split()[1] not in own
        ]
        if not present and not jumps:
            continue
        lines = ["-D" + rule[2:] for rule in jumps]
        lines += [f"-F {chain}" for chain in present] + [f"-X {chain}" for chain in present]
        out += f"*{table}\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
    return out or None


def probe_snat_input(saved_nat: str) -> str | None:
    """The ``iptables-restore --noflush`` input that puts the node's probe SNAT rule
    (:func:`~ztunnel.cni.rules.plan_probe_snat`) in place with the jump into its chain first in
    POSTROUTING, or None when it already is."""
    plan, saved = parse_save(plan_probe_snat()), parse_save(saved_nat)
    have = saved.table_rules("nat")
    chain = PROBE_CHAIN
    postrouting = [rule for rule in have if _chain_of(rule) == "POSTROUTING"]
    hook_ok = postrouting[:1] == [PROBE_HOOK] and postrouting.count(PROBE_HOOK) == 1
    chain_ok = chain in saved.table_chains("nat") and _by_chain(have, (chain,)) == _by_chain(
        plan.table_rules("nat"), (chain,)
    )
    if hook_ok and chain_ok:
        return None
    lines = [f":{chain} - [0:0]", *plan.table_rules("nat")]
    if not hook_ok:
        lines += ["-D" + PROBE_HOOK[2:]] * postrouting.count(PROBE_HOOK)
        lines.append("-I POSTROUTING 1 -j " + chain)
    return "*nat\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"


def _jump_target(rule: str) -> str:
    words = rule.split()
    return words[words.index("-j") + 1] if "-j" in words[:-1] else ""
