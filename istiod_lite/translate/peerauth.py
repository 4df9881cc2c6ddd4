"""PeerAuthentication -> the deny-when-no-principal policies ztunnel enforces, as Istio compiles them.

Precedence: a workload policy (selector, in the workload's namespace) over the namespace policy
over the root-namespace (mesh) policy; UNSET inherits; DISABLE acts like PERMISSIVE; when two
policies compete at one level, the oldest (``creationTimestamp``, then name) wins. Root-namespace
policies with a selector are ignored, as in Istio ambient.

* When any PeerAuthentication exists, ``<root>/istio_converted_static_strict`` is sent: a DENY of
  connections without a principal (``notPrincipals: [presence]``). A workload whose effective
  mode is STRICT without port exceptions lists that key in ``authorization_policies``.
* A workload policy whose ``portLevelMtls`` (keyed by target port) departs from its effective
  mode becomes ``<ns>/converted_peer_authentication_<name>`` (WORKLOAD_SELECTOR, DENY), which its
  workloads list instead: STRICT with permissive ports denies no-principal connections except to
  those ports (``notDestinationPorts``); PERMISSIVE with strict ports denies no-principal
  connections to those ports only.

Istio computes the referenced key and the converted policy in two places that disagree in
corner cases (a DISABLE port under an inherited STRICT; a STRICT port under a PERMISSIVE workload
with a STRICT root); here both come from one function, so a key is referenced exactly when its
policy is sent. An invalid PeerAuthentication is skipped with a warning.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import empty_pb2

from istiod_lite.translate._fields import (
    FieldError,
    check_fields,
    mapping,
    match_labels,
    port,
    selector_matches,
    string,
)
from istiod_lite.view import Json, KubeObject
from mesh.api.istio.security import authorization_pb2 as pb

__all__ = [
    "CONVERTED_PREFIX",
    "STATIC_STRICT_NAME",
    "Mode",
    "PeerAuthIndex",
    "PeerAuthn",
    "parse_peer_authentication",
]

STATIC_STRICT_NAME = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"


class Mode(enum.Enum):
    """mTLS mode of a PeerAuthentication or one of its ports."""

    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@dataclass(frozen=True, slots=True)
class PeerAuthn:
    """A validated PeerAuthentication."""

    namespace: str
    name: str
    created: str
    selector: Mapping[str, str] | None
    mode: Mode
    port_modes: tuple[tuple[int, Mode], ...] = ()

    @property
    def age_key(self) -> tuple[str, str]:
        """Sorts oldest first; ties (or missing timestamps) by name."""
        return (self.created, self.name)


def _mode(value: Json, field: str) -> Mode:
    mtls = mapping(value, field)
    check_fields(mtls, frozenset({"mode"}), field)
    text = string(mtls.get("mode"), f"{field}.mode") or "UNSET"
    try:
        return Mode(text)
    except ValueError:
        raise FieldError(
            f"{field}.mode", f"{text!r} is not one of UNSET, DISABLE, PERMISSIVE, STRICT"
        ) from None


def parse_peer_authentication(obj: KubeObject) -> PeerAuthn:
    """Validates one PeerAuthentication; raises ``FieldError`` naming the bad field."""
    spec = obj.spec
    check_fields(spec, frozenset({"selector", "mtls", "portLevelMtls"}), "spec")
    selector = match_labels(spec["selector"], "spec.selector") if "selector" in spec else None
    ports = mapping(spec.get("portLevelMtls"), "spec.portLevelMtls")
    port_modes = sorted(
        (port(key, f"spec.portLevelMtls.{key}"), _mode(value, f"spec.portLevelMtls.{key}"))
        for key, value in ports.items()
    )
    if port_modes and not selector:
        raise FieldError("spec.portLevelMtls", "requires a workload selector")
    return PeerAuthn(
        namespace=obj.namespace,
        name=obj.name,
        created=obj.creation_timestamp,
        selector=selector or None,
        mode=_mode(spec.get("mtls"), "spec.mtls"),
        port_modes=tuple(port_modes),
    )


def _is_strict(mode: Mode, inherited: bool) -> bool:
    return inherited if mode is Mode.UNSET else mode is Mode.STRICT


def _presence() -> pb.StringMatch:
    return pb.StringMatch(presence=empty_pb2.Empty())


class PeerAuthIndex:
    """The PeerAuthentications of one view, answering per workload and producing the policies."""

    def __init__(self, policies: Iterable[PeerAuthn], *, root_namespace: str) -> None:
        self.root_namespace = root_namespace
        self._any = False
        self._root: PeerAuthn | None = None
        self._namespace: dict[str, PeerAuthn] = {}
        self._workload: dict[str, list[PeerAuthn]] = {}
        for pa in sorted(policies, key=lambda p: p.age_key):
            self._any = True
            if pa.selector is None and pa.namespace == root_namespace:
                self._root = self._root or pa
            elif pa.selector is None:
                self._namespace.setdefault(pa.namespace, pa)
            elif pa.namespace != root_namespace:
                self._workload.setdefault(pa.namespace, []).append(pa)

    def _parent_strict(self, namespace: str) -> bool:
        strict = self._root is not None and self._root.mode is Mode.STRICT
        ns_policy = self._namespace.get(namespace)
        return _is_strict(ns_policy.mode, strict) if ns_policy is not None else strict

    def _exceptions(self, pa: PeerAuthn) -> tuple[bool, list[int]]:
        strict = _is_strict(pa.mode, self._parent_strict(pa.namespace))
        ports = [p for p, mode in pa.port_modes if mode is not Mode.UNSET and (mode is Mode.STRICT) != strict]
        return strict, ports

    def keys_for(self, namespace: str, labels: Mapping[str, str]) -> list[str]:
        """The PeerAuthentication-derived policy keys a workload lists, sorted."""
        candidates = self._workload.get(namespace, ())
        workload = next((p for p in candidates if selector_matches(p.selector or {}, labels)), None)
        if workload is None:
            strict = self._parent_strict(namespace)
        else:
            strict, ports = self._exceptions(workload)
            if ports:
                return [f"{workload.namespace}/{CONVERTED_PREFIX}{workload.name}"]
        return [f"{self.root_namespace}/{STATIC_STRICT_NAME}"] if strict else []

    def policies(self) -> dict[str, pb.Authorization]:
        """The static STRICT policy (when any PeerAuthentication exists) and the converted ones."""
        out: dict[str, pb.Authorization] = {}
        if self._any:
            out[f"{self.root_namespace}/{STATIC_STRICT_NAME}"] = pb.Authorization(
                name=STATIC_STRICT_NAME,
                namespace=self.root_namespace,
                scope=pb.WORKLOAD_SELECTOR,
                action=pb.DENY,
                rules=[pb.Rule(clauses=[pb.Clause(matches=[pb.Match(not_principals=[_presence()])])])],
            )
        for policies in self._workload.values():
            for pa in policies:
                converted = self._converted(pa)
                if converted is not None:
                    out[f"{pa.namespace}/{converted.name}"] = converted
        return out

    def _converted(self, pa: PeerAuthn) -> pb.Authorization | None:
        strict, ports = self._exceptions(pa)
        if not ports:
            return None
        if strict:
            clauses = [pb.Clause(matches=[pb.Match(not_principals=[_presence()])])]
            clauses += [pb.Clause(matches=[pb.Match(not_destination_ports=[p])]) for p in ports]
            rules = [pb.Rule(clauses=clauses)]
        else:
            rules = [
                pb.Rule(
                    clauses=[
                        pb.Clause(matches=[pb.Match(not_principals=[_presence()], destination_ports=[p])])
                    ]
                )
                for p in ports
            ]
        return pb.Authorization(
            name=f"{CONVERTED_PREFIX}{pa.name}",
            namespace=pa.namespace,
            scope=pb.WORKLOAD_SELECTOR,
            action=pb.DENY,
            rules=rules,
        )
