"""Parsing and validating the Kubernetes-shaped YAML given to the lab (pure).

An error names the file, the object and the field, e.g.
``cluster.yaml: Deployment demo/server (document 3): field spec.replicas: must be an integer >= 0,
got 'two'``.
Istio and Gateway API objects are only checked for ``apiVersion``, ``kind`` and ``metadata``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import yaml

from istiod_lite.validation import MESH_KINDS, validate_mesh_object
from meshctl.lab.errors import LabObjectError
from meshctl.lab.volumecheck import volume_problems

__all__ = [
    "CLUSTER_SCOPED_KINDS",
    "max_unavailable",
    "ObjKey",
    "describe",
    "is_cluster_scoped",
    "key_of",
    "parse_documents",
    "validate_object",
]

ObjKey = tuple[str, str, str]
"""(kind, namespace, name); namespace is "" for cluster-scoped objects."""

CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "Node",
        "GatewayClass",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
    }
)
_DAEMON_OWNED = {
    "ReplicaSet": "create a Deployment; the lab creates its ReplicaSet and Pods",
    "Node": "nodes come from the lab settings; use 'meshctl lab up --nodes N'",
}
STORED_AS_GIVEN = frozenset(
    {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "CustomResourceDefinition",
        "PodDisruptionBudget",
    }
)
"""Kinds the mesh's manifests (daemonset/) carry that the lab keeps without acting on them: it does not
enforce RBAC, serve custom resources by their definition, or evict pods."""
LAB_KINDS = frozenset(
    {
        "Namespace",
        "Pod",
        "Deployment",
        "DaemonSet",
        "Service",
        "EndpointSlice",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "GatewayClass",
        *STORED_AS_GIVEN,
    }
)
"""The Kubernetes kinds the lab takes (besides the mesh's, ``istiod_lite.validation.MESH_KINDS``)."""
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_PROTOCOLS = ("TCP", "UDP")
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def is_cluster_scoped(kind: str) -> bool:
    """True for kinds that live outside namespaces."""
    return kind in CLUSTER_SCOPED_KINDS


def key_of(obj: Mapping[str, Any]) -> ObjKey:
    """The (kind, namespace, name) of a validated object."""
    meta = obj["metadata"]
    return (str(obj["kind"]), str(meta.get("namespace", "")), str(meta["name"]))


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind ns/name`` (or ``Kind name`` for cluster-scoped objects)."""
    kind, namespace, name = key_of(obj)
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def parse_documents(
    text: str, *, source: str, node_names: Iterable[str] | None = None, check_spec: bool = True
) -> list[dict[str, Any]]:
    """Every object in a multi-document YAML text, validated and with namespaces filled in.

    ``kind: List`` documents are flattened. ``node_names`` (when given) checks ``nodeName`` fields.
    """
    try:
        documents = list(yaml.load_all(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown place"
        raise LabObjectError(
            source=source, obj="", field="", problem=f"not valid YAML at {where}: {exc.problem}"
        ) from exc
    except yaml.YAMLError as exc:
        raise LabObjectError(source=source, obj="", field="", problem=f"not valid YAML: {exc}") from exc
    nodes = frozenset(node_names) if node_names is not None else None
    result: list[dict[str, Any]] = []
    errors: list[LabObjectError] = []
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        if not isinstance(items, list):
            _Check(source, f"document {index}").fail("items", "a List must have a list of items")
        for item in items:
            try:
                result.append(
                    validate_object(item, source=source, index=index, node_names=nodes, check_spec=check_spec)
                )
            except LabObjectError as exc:
                errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        listed = "".join(f"\n  {exc.message}" for exc in errors)
        raise LabObjectError(
            source=source,
            obj="",
            field="",
            problem=f"{len(errors)} objects are invalid, so nothing was applied:{listed}",
            hint=errors[0].hint or "fix them and apply the file again",
        )
    return result


def validate_object(
    obj: object,
    *,
    source: str,
    index: int = 1,
    node_names: frozenset[str] | None = None,
    check_spec: bool = True,
) -> dict[str, Any]:
    """A deep copy of ``obj`` with ``metadata.namespace`` filled in, or :class:`LabObjectError`.
    ``check_spec=False`` (deletion) checks the kind and the names but not an Istio object's spec."""
    check = _Check(source, f"document {index}")
    if not isinstance(obj, dict):
        check.fail("", f"each document must be a mapping (an object), got {type(obj).__name__}")
    for field in ("apiVersion", "kind"):
        if not isinstance(obj.get(field), str) or not obj[field]:
            check.fail(field, "is required and must be a non-empty string")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        check.fail("metadata", "is required and must be a mapping with at least a name")
    out: dict[str, Any] = copy.deepcopy(obj)
    kind = out["kind"]
    name = meta.get("name")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        check.fail("metadata.name", f"must be a lowercase DNS name (a-z, 0-9, '-', '.'), got {name!r}")
    if is_cluster_scoped(kind):
        out["metadata"].pop("namespace", None)
    else:
        namespace = out["metadata"].setdefault("namespace", "default")
        if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
            check.fail("metadata.namespace", f"must be a lowercase DNS label, got {namespace!r}")
    check = _Check(source, f"{describe(out)} (document {index})")
    if kind in _DAEMON_OWNED:
        check.fail("kind", f"{kind} objects are managed by the lab", hint=_DAEMON_OWNED[kind])
    for field in ("labels", "annotations"):
        _string_map(check, out["metadata"].get(field), f"metadata.{field}")
    if kind in MESH_KINDS:
        if check_spec:
            _validate_mesh(check, out)
    elif kind not in LAB_KINDS:
        check.fail(
            "kind",
            f"{kind!r} (apiVersion {out['apiVersion']}) is not a kind the lab or the mesh knows",
            hint=f"the lab takes {', '.join(sorted(LAB_KINDS))}; "
            f"the mesh reads {', '.join(sorted(MESH_KINDS))}",
        )
    validator = _VALIDATORS.get(kind)
    if validator is not None:
        validator(check, out, node_names)
    return out


def _validate_mesh(check: _Check, obj: dict[str, Any]) -> None:
    """The same checks istiod_lite's translation makes (Istio's webhook refuses these too)."""
    problems = validate_mesh_object(obj)
    hint = "fix it and apply again; nothing was applied (docs/validation.md)"
    if len(problems) == 1:
        check.fail(problems[0].field, problems[0].problem, hint=hint)
    if problems:
        listed = "".join(f"\n    {p.field}: {p.problem}" for p in problems)
        check.fail("", f"{len(problems)} invalid fields:{listed}", hint=hint)


class _Check:
    """Raises errors that name the source, the object and the field."""

    def __init__(self, source: str, obj: str) -> None:
        self.source = source
        self.obj = obj

    def fail(self, field: str, problem: str, *, hint: str = "") -> NoReturn:
        raise LabObjectError(source=self.source, obj=self.obj, field=field, problem=problem, hint=hint)


def _string_map(check: _Check, value: object, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        check.fail(field, f"must be a mapping of strings to strings, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            check.fail(f"{field}.{k}", f"keys and values must be strings (quote them), got {v!r}")
    return value


def _mapping(check: _Check, value: object, field: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        check.fail(field, "is required and must be a mapping" if value is None else "must be a mapping")
    return value


def _list(check: _Check, value: object, field: str, *, required: bool = False) -> list[Any]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        check.fail(field, "must be a non-empty list" if required else "must be a list")
    return value


def _port_number(check: _Check, value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        check.fail(field, f"must be a port number 1-65535, got {value!r}")
    return value


def _protocol(check: _Check, value: object, field: str) -> None:
    if value is not None and value not in _PROTOCOLS:
        check.fail(field, f"must be TCP or UDP, got {value!r}")


def _string_list(check: _Check, value: object, field: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        check.fail(field, f"must be a list of strings (quote numbers), got {value!r}")


def _pod_spec(check: _Check, spec: dict[str, Any], path: str, nodes: frozenset[str] | None) -> None:
    containers = _list(check, spec.get("containers"), f"{path}.containers", required=True)
    seen: set[str] = set()
    for i, container in enumerate(containers):
        _container(check, container, f"{path}.containers[{i}]", seen)
    node = spec.get("nodeName")
    if node is not None and (not isinstance(node, str) or (nodes is not None and node not in nodes)):
        known = ", ".join(sorted(nodes or ()))
        check.fail(f"{path}.nodeName", f"unknown node {node!r}", hint=f"the lab's nodes are {known}")
    sa = spec.get("serviceAccountName")
    if sa is not None and (not isinstance(sa, str) or not _DNS_SUBDOMAIN.match(sa)):
        check.fail(f"{path}.serviceAccountName", f"must be a lowercase DNS name, got {sa!r}")
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in ("Always", "OnFailure", "Never"):
        check.fail(f"{path}.restartPolicy", f"must be Always, OnFailure or Never, got {policy!r}")
    for field, problem in volume_problems(spec, path)[:1]:
        check.fail(field, problem, hint="see docs/lab-state.md (volumes) for what the lab mounts")


def _container(check: _Check, container: object, path: str, seen: set[str]) -> None:
    if not isinstance(container, dict):
        check.fail(path, "must be a mapping")
    name = container.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or name in seen:
        check.fail(f"{path}.name", f"must be a unique lowercase DNS label, got {name!r}")
    seen.add(name)
    _string_list(check, container.get("command"), f"{path}.command")
    _string_list(check, container.get("args"), f"{path}.args")
    if not container.get("command") and not container.get("args"):
        check.fail(f"{path}.command", "is required in the lab (there are no images to take it from)")
    for i, env in enumerate(_list(check, container.get("env"), f"{path}.env")):
        _env_var(check, env, f"{path}.env[{i}]")
    for i, item in enumerate(_list(check, container.get("ports"), f"{path}.ports")):
        port = _mapping(check, item, f"{path}.ports[{i}]")
        _port_number(check, port.get("containerPort"), f"{path}.ports[{i}].containerPort")
        _protocol(check, port.get("protocol"), f"{path}.ports[{i}].protocol")


def _env_var(check: _Check, env: object, path: str) -> None:
    env = _mapping(check, env, path)
    if not isinstance(env.get("name"), str) or not env["name"]:
        check.fail(f"{path}.name", "is required and must be a string")
    if "valueFrom" in env:
        ref = _mapping(check, env["valueFrom"], f"{path}.valueFrom")
        field_ref = _mapping(check, ref.get("fieldRef"), f"{path}.valueFrom.fieldRef")
        if not isinstance(field_ref.get("fieldPath"), str):
            check.fail(f"{path}.valueFrom.fieldRef.fieldPath", "is required and must be a string")
    elif not isinstance(env.get("value", ""), str):
        check.fail(f"{path}.value", f"must be a string (quote numbers and booleans), got {env['value']!r}")


def _validate_deployment(check: _Check, obj: dict[str, Any], nodes: frozenset[str] | None) -> None:
    spec = _mapping(check, obj.get("spec"), "spec")
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        check.fail("spec.replicas", f"must be an integer >= 0, got {replicas!r}")
    _pod_template(check, spec, nodes)


def _validate_daemonset(check: _Check, obj: dict[str, Any], nodes: frozenset[str] | None) -> None:
    spec = _mapping(check, obj.get("spec"), "spec")
    strategy = _mapping(check, spec.get("updateStrategy", {}), "spec.updateStrategy")
    kind = strategy.get("type", "RollingUpdate")
    if kind not in ("RollingUpdate", "OnDelete"):
        check.fail("spec.updateStrategy.type", f"must be RollingUpdate or OnDelete, got {kind!r}")
    rolling = _mapping(check, strategy.get("rollingUpdate", {}), "spec.updateStrategy.rollingUpdate")
    surge = rolling.get("maxSurge", 0)
    if surge not in (0, "0", "0%"):
        if max_unavailable(surge, 100) is None:
            check.fail(
                "spec.updateStrategy.rollingUpdate.maxSurge",
                f"must be a number or a percentage such as '10%', got {surge!r}",
            )
        if rolling.get("maxUnavailable") not in (0, "0", "0%"):
            check.fail(
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
                "must be 0 with maxSurge (the lab rolls either by surge or by unavailability, not both)",
            )
    elif "maxUnavailable" in rolling and max_unavailable(rolling["maxUnavailable"], 100) is None:
        check.fail(
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
            f"must be a number >= 1 or a percentage such as '10%', got {rolling['maxUnavailable']!r}",
        )
    _pod_template(check, spec, nodes)


def max_unavailable(value: Any, nodes: int) -> int | None:
    """A rolling update's ``maxUnavailable`` (a count, or a percentage of ``nodes`` rounded up, as
    Kubernetes does for DaemonSets) as a count of at least 1; None when it is neither."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit() and int(value[:-1]) > 0:
        return max(1, math.ceil(nodes * int(value[:-1]) / 100))
    return None


def _pod_template(check: _Check, spec: dict[str, Any], nodes: frozenset[str] | None) -> None:
    """A Deployment's or DaemonSet's selector and pod template."""
    selector = _mapping(check, spec.get("selector"), "spec.selector")
    match = _string_map(check, selector.get("matchLabels"), "spec.selector.matchLabels")
    if not match:
        check.fail("spec.selector.matchLabels", "is required (the lab supports matchLabels selectors)")
    template = _mapping(check, spec.get("template"), "spec.template")
    meta = _mapping(check, template.get("metadata"), "spec.template.metadata")
    labels = _string_map(check, meta.get("labels"), "spec.template.metadata.labels")
    for k, v in match.items():
        if labels.get(k) != v:
            check.fail(
                "spec.template.metadata.labels",
                f"must match the selector: {k}={v} is missing",
                hint="the pod template's labels must include every spec.selector.matchLabels entry",
            )
    _pod_spec(check, _mapping(check, template.get("spec"), "spec.template.spec"), "spec.template.spec", nodes)


def _validate_pod(check: _Check, obj: dict[str, Any], nodes: frozenset[str] | None) -> None:
    _pod_spec(check, _mapping(check, obj.get("spec"), "spec"), "spec", nodes)


def _validate_service(check: _Check, obj: dict[str, Any], _nodes: frozenset[str] | None) -> None:
    spec = _mapping(check, obj.get("spec"), "spec")
    kind = spec.get("type", "ClusterIP")
    if kind != "ClusterIP":
        check.fail("spec.type", f"the lab supports ClusterIP services only, got {kind!r}")
    cluster_ip = spec.get("clusterIP")
    if cluster_ip is not None and (not isinstance(cluster_ip, str) or cluster_ip == "None"):
        check.fail("spec.clusterIP", "headless services are not supported; omit clusterIP or give an address")
    _string_map(check, spec.get("selector"), "spec.selector")
    names: set[str] = set()
    for i, item in enumerate(_list(check, spec.get("ports"), "spec.ports", required=True)):
        port = _mapping(check, item, f"spec.ports[{i}]")
        _port_number(check, port.get("port"), f"spec.ports[{i}].port")
        _protocol(check, port.get("protocol"), f"spec.ports[{i}].protocol")
        target = port.get("targetPort")
        if target is not None and not isinstance(target, str):
            _port_number(check, target, f"spec.ports[{i}].targetPort")
        name = port.get("name", "")
        if name in names:
            check.fail(f"spec.ports[{i}].name", "ports need distinct names when there are several")
        names.add(name)


def _validate_namespace(check: _Check, obj: dict[str, Any], _nodes: frozenset[str] | None) -> None:
    if not _DNS_LABEL.match(obj["metadata"]["name"]):
        check.fail("metadata.name", "a namespace name must be a DNS label (no dots)")


def _validate_data(check: _Check, obj: dict[str, Any], _nodes: frozenset[str] | None) -> None:
    """A ConfigMap's ``data``/``binaryData`` or a Secret's ``data``/``stringData``: valid keys,
    string values, base64 where the API wants it."""
    fields, encoded = (
        (("data", "binaryData"), "binaryData")
        if obj["kind"] == "ConfigMap"
        else (
            ("data", "stringData"),
            "data",
        )
    )
    seen: set[str] = set()
    for field in fields:
        for key, value in _string_map(check, obj.get(field), field).items():
            if not _DATA_KEY.match(key) or key in (".", ".."):
                check.fail(f"{field}.{key}", "a key must consist of letters, digits, '-', '_' or '.'")
            if key in seen and not (obj["kind"] == "Secret" and field == "stringData"):
                check.fail(f"{field}.{key}", "the key is given twice (data and binaryData)")
            seen.add(key)
            if field == encoded:
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    check.fail(f"{field}.{key}", "must be base64-encoded", hint="encode it with base64 -w0")


_VALIDATORS = {
    "ConfigMap": _validate_data,
    "Secret": _validate_data,
    "Deployment": _validate_deployment,
    "DaemonSet": _validate_daemonset,
    "Pod": _validate_pod,
    "Service": _validate_service,
    "Namespace": _validate_namespace,
}
