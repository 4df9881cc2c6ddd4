"""``meshctl analyze``'s checks (pure): mistakes in a set of Kubernetes and mesh objects that the
mesh would accept but that do not do what the user meant, each with a stable code, the object, a
message and a fix, like ``istioctl analyze``. Codes never change meaning; new checks get new codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from istiod_lite.validation import MESH_KINDS, validate_mesh_object

__all__ = ["CHECKS", "Finding", "analyze"]

Obj = Mapping[str, Any]
ERROR, WARNING, INFO = "Error", "Warning", "Info"
_L7_TO = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_L7_FROM = ("requestPrincipals", "notRequestPrincipals")
_PRINCIPAL = re.compile(r"^(?:spiffe://)?([^/]+)/ns/([^/]+)/sa/([^/]+)$")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its code, severity, the object (``Kind namespace/name``), what and how to fix."""

    code: str
    severity: str
    resource: str
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        """As a JSON object (``-o json``)."""
        return asdict(self)


def _ref(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))
    return f"{obj.get('kind')} {where}"


def _ns(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def _labels(obj: Obj) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _spec(obj: Obj) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


class _World:
    """Indexes of the objects the checks look things up in."""

    def __init__(self, objects: Sequence[Obj]) -> None:
        self.objects = objects
        self.by_kind: dict[str, list[Obj]] = {}
        for obj in objects:
            self.by_kind.setdefault(str(obj.get("kind")), []).append(obj)
        self.namespaces = {str(o["metadata"]["name"]): o for o in self.of("Namespace")}
        self.services = {(_ns(o), str(o["metadata"]["name"])): o for o in self.of("Service")}
        self.pods = [
            *self.of("Pod"),
            *(self._template(o) for k in ("Deployment", "StatefulSet", "DaemonSet") for o in self.of(k)),
        ]

    def of(self, kind: str) -> list[Obj]:
        return self.by_kind.get(kind, [])

    @staticmethod
    def _template(workload: Obj) -> Obj:
        template = _spec(workload).get("template") or {}
        meta = {
            **(template.get("metadata") or {}),
            "namespace": _ns(workload),
            "name": workload["metadata"]["name"],
        }
        return {"kind": "Pod", "metadata": meta, "spec": template.get("spec") or {}}

    def enrolled(self, namespace: str) -> bool:
        ns = self.namespaces.get(namespace)
        return ns is not None and _labels(ns).get("istio.io/dataplane-mode") == "ambient"

    def service_host(self, host: str, namespace: str) -> tuple[str, str] | None:
        """The (namespace, name) of the Service a short or fully qualified host names, if known."""
        parts = host.split(".")
        key = (parts[1] if len(parts) > 1 else namespace, parts[0])
        return key if key in self.services else None


Check = Callable[[_World], Iterable[Finding]]


def _invalid(world: _World) -> Iterable[Finding]:
    for obj in world.objects:
        if obj.get("kind") in MESH_KINDS:
            for error in validate_mesh_object(obj):
                yield Finding(
                    "MSH0001",
                    ERROR,
                    _ref(obj),
                    f"{error.field}: {error.problem}",
                    "fix the field; the mesh ignores the object until then",
                )


def _unknown_service_account(world: _World) -> Iterable[Finding]:
    used = {(_ns(p), str(_spec(p).get("serviceAccountName") or "default")) for p in world.pods}
    for policy in world.of("AuthorizationPolicy"):
        for rule in _spec(policy).get("rules") or ():
            for source in (f.get("source") or {} for f in rule.get("from") or ()):
                for principal in source.get("principals") or ():
                    match = _PRINCIPAL.match(str(principal))
                    if match and "*" not in principal and (match.group(2), match.group(3)) not in used:
                        yield Finding(
                            "MSH0101",
                            WARNING,
                            _ref(policy),
                            f"principal {principal!r}: no pod runs as {match.group(2)}/{match.group(3)}",
                            "check the namespace and account: spiffe://<trust domain>/ns/<ns>/sa/<sa>",
                        )


def _strict_with_plaintext_clients(world: _World) -> Iterable[Finding]:
    unenrolled = sorted({_ns(p) for p in world.pods if not world.enrolled(_ns(p))})
    for policy in world.of("PeerAuthentication"):
        mode = ((_spec(policy).get("mtls") or {}).get("mode") or "").upper()
        if mode == "STRICT" and not _spec(policy).get("selector") and unenrolled:
            yield Finding(
                "MSH0102",
                WARNING,
                _ref(policy),
                f"STRICT mTLS refuses plaintext, and pods in {', '.join(unenrolled)} are not enrolled",
                "enrol them (istio.io/dataplane-mode=ambient) first, or use PERMISSIVE until then",
            )


def _l7_rules_on_selected_pods(world: _World) -> Iterable[Finding]:
    for policy in world.of("AuthorizationPolicy"):
        spec = _spec(policy)
        if spec.get("targetRefs") or spec.get("targetRef"):
            continue  # enforced by a waypoint: L7 is fine there
        fields = sorted(
            {
                name
                for rule in spec.get("rules") or ()
                for op in (t.get("operation") or {} for t in rule.get("to") or ())
                for name in _L7_TO
                if op.get(name)
            }
            | {
                name
                for rule in spec.get("rules") or ()
                for src in (f.get("source") or {} for f in rule.get("from") or ())
                for name in _L7_FROM
                if src.get(name)
            }
        )
        if fields:
            action = spec.get("action", "ALLOW")
            effect = (
                "its ALLOW rules never match (requests are denied)"
                if action == "ALLOW"
                else "those fields are ignored"
            )
            yield Finding(
                "MSH0103",
                WARNING,
                _ref(policy),
                f"L7 fields ({', '.join(fields)}) in a policy ztunnel enforces at L4: {effect}",
                "attach it to a waypoint with targetRefs (kind Gateway or Service), or keep to L4 fields",
            )


def _missing_waypoint(world: _World) -> Iterable[Finding]:
    gateways = {(_ns(g), str(g["metadata"]["name"])) for g in world.of("Gateway")}
    for obj in [*world.of("Namespace"), *world.of("Service")]:
        name = _labels(obj).get("istio.io/use-waypoint")
        if not name or name == "none":
            continue
        namespace = _labels(obj).get("istio.io/use-waypoint-namespace") or (
            str(obj["metadata"]["name"]) if obj.get("kind") == "Namespace" else _ns(obj)
        )
        if (namespace, name) not in gateways:
            yield Finding(
                "MSH0104",
                ERROR,
                _ref(obj),
                f"uses waypoint {namespace}/{name}, which does not exist",
                f"create it: meshctl waypoint apply -n {namespace} --name {name}",
            )


def _subsets(world: _World) -> Mapping[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in world.of("DestinationRule"):
        key = world.service_host(str(_spec(rule).get("host", "")), _ns(rule))
        if key is not None:
            found.setdefault(key, set()).update(str(s.get("name")) for s in _spec(rule).get("subsets") or ())
    return found


def _missing_subset(world: _World) -> Iterable[Finding]:
    subsets = _subsets(world)
    for vs in world.of("VirtualService"):
        for http in _spec(vs).get("http") or ():
            for route in http.get("route") or ():
                destination = route.get("destination") or {}
                subset = destination.get("subset")
                key = world.service_host(str(destination.get("host", "")), _ns(vs))
                if subset and key is not None and subset not in subsets.get(key, set()):
                    yield Finding(
                        "MSH0105",
                        ERROR,
                        _ref(vs),
                        f"subset {subset!r} of {destination.get('host')}: no DestinationRule defines it",
                        "add the subset to the host's DestinationRule (with the pods' labels)",
                    )


def _opted_out_pod(world: _World) -> Iterable[Finding]:
    for pod in world.pods:
        if world.enrolled(_ns(pod)) and _labels(pod).get("istio.io/dataplane-mode") == "none":
            if "gateway.networking.k8s.io/gateway-name" in _labels(pod):
                continue  # waypoints are never captured, on purpose
            yield Finding(
                "MSH0106",
                INFO,
                _ref(pod),
                "opted out of the mesh inside an enrolled namespace",
                "remove the istio.io/dataplane-mode=none label unless this is meant",
            )


def _waypoint_listener(world: _World) -> Iterable[Finding]:
    for gateway in world.of("Gateway"):
        spec = _spec(gateway)
        if spec.get("gatewayClassName") != "istio-waypoint":
            continue
        listeners = spec.get("listeners") or ()
        if not any(
            str(listener.get("protocol")) == "HBONE" and listener.get("port") == 15008
            for listener in listeners
        ):
            yield Finding(
                "MSH0107",
                ERROR,
                _ref(gateway),
                "a waypoint needs a listener with port 15008 and protocol HBONE",
                "use: listeners: [{name: mesh, port: 15008, protocol: HBONE}]",
            )


def _unknown_hosts(world: _World) -> Iterable[Finding]:
    for vs in world.of("VirtualService"):
        for host in _spec(vs).get("hosts") or ():
            if "*" not in host and world.service_host(str(host), _ns(vs)) is None:
                yield Finding(
                    "MSH0108",
                    WARNING,
                    _ref(vs),
                    f"host {host!r} is not a Service in the mesh",
                    "name an existing Service (short name, or name.namespace)",
                )
    for rule in world.of("DestinationRule"):
        host = str(_spec(rule).get("host", ""))
        if "*" not in host and world.service_host(host, _ns(rule)) is None:
            yield Finding(
                "MSH0109",
                WARNING,
                _ref(rule),
                f"host {host!r} is not a Service in the mesh",
                "name an existing Service",
            )


def _http_route_refs(world: _World) -> Iterable[Finding]:
    for route in world.of("HTTPRoute"):
        namespace = _ns(route)
        refs = [("parentRef", p) for p in _spec(route).get("parentRefs") or () if p.get("kind") == "Service"]
        refs += [
            ("backendRef", b) for r in _spec(route).get("rules") or () for b in r.get("backendRefs") or ()
        ]
        for role, ref in refs:
            key = (str(ref.get("namespace") or namespace), str(ref.get("name")))
            if (ref.get("kind") or "Service") == "Service" and key not in world.services:
                yield Finding(
                    "MSH0110",
                    ERROR,
                    _ref(route),
                    f"{role} Service {key[0]}/{key[1]} does not exist",
                    "create the Service or fix the name",
                )


def _waypoint_in_unenrolled_namespace(world: _World) -> Iterable[Finding]:
    for service in world.of("Service"):
        name = _labels(service).get("istio.io/use-waypoint")
        if name and name != "none" and not world.enrolled(_ns(service)):
            yield Finding(
                "MSH0111",
                WARNING,
                _ref(service),
                "uses a waypoint, but its namespace is not enrolled, so the mesh does not apply to it",
                f"label namespace {_ns(service)} with istio.io/dataplane-mode=ambient",
            )


def _subset_without_pods(world: _World) -> Iterable[Finding]:
    for rule in world.of("DestinationRule"):
        key = world.service_host(str(_spec(rule).get("host", "")), _ns(rule))
        if key is None:
            continue
        selector = _spec(world.services[key]).get("selector") or {}
        for subset in _spec(rule).get("subsets") or ():
            wanted = {**selector, **(subset.get("labels") or {})}
            if not any(
                _ns(p) == key[0] and all(_labels(p).get(k) == v for k, v in wanted.items())
                for p in world.pods
            ):
                yield Finding(
                    "MSH0112",
                    WARNING,
                    _ref(rule),
                    f"subset {subset.get('name')!r} selects no pod",
                    "check the subset's labels against the pods' (e.g. version: v2)",
                )


def _routes_on_one_host(world: _World) -> Iterable[Finding]:
    owners: dict[tuple[str, str], list[Obj]] = {}
    for vs in world.of("VirtualService"):
        for host in _spec(vs).get("hosts") or ():
            if (key := world.service_host(str(host), _ns(vs))) is not None:
                owners.setdefault(key, []).append(vs)
    for route in world.of("HTTPRoute"):
        for parent in _spec(route).get("parentRefs") or ():
            if parent.get("kind") == "Service":
                owners.setdefault(
                    (str(parent.get("namespace") or _ns(route)), str(parent.get("name"))), []
                ).append(route)
    for (namespace, name), objs in sorted(owners.items()):
        if len(objs) > 1:
            names = ", ".join(_ref(o) for o in objs)
            yield Finding(
                "MSH0113",
                WARNING,
                _ref(objs[-1]),
                f"{namespace}/{name} has more than one route: {names}",
                "keep one VirtualService or HTTPRoute per Service (docs/waypoints.md says which wins)",
            )


CHECKS: tuple[Check, ...] = (
    _invalid,
    _unknown_service_account,
    _strict_with_plaintext_clients,
    _l7_rules_on_selected_pods,
    _missing_waypoint,
    _missing_subset,
    _opted_out_pod,
    _waypoint_listener,
    _unknown_hosts,
    _http_route_refs,
    _waypoint_in_unenrolled_namespace,
    _subset_without_pods,
    _routes_on_one_host,
)
"""Every check; the codes are in the functions (MSH0001, MSH0101-MSH0113)."""


def analyze(objects: Sequence[Obj]) -> list[Finding]:
    """Every finding for ``objects``, errors first, then by code and object."""
    world = _World([o for o in objects if isinstance(o, Mapping) and isinstance(o.get("metadata"), Mapping)])
    findings = [f for check in CHECKS for f in check(world)]
    order = {ERROR: 0, WARNING: 1, INFO: 2}
    return sorted(set(findings), key=lambda f: (order[f.severity], f.code, f.resource, f.message))
