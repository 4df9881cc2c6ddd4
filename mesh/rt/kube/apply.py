"""Applying and deleting whole objects on a Kubernetes API (``meshctl install|upgrade|uninstall``).

Apply is server-side apply: one ``PATCH`` with ``application/apply-patch+yaml`` and a field manager,
which creates the object or updates the fields this manager owns (``force``: an install takes over
fields another manager last set). Delete uses foreground propagation, so a DaemonSet stays visible
(with a deletion timestamp) until its pods are gone. Paths come from ``apiVersion``, ``kind`` and
``metadata``: the kinds the mesh's manifests hold pluralise regularly (lowercase, then ``s``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s

from mesh.errors import MeshError

__all__ = [
    "FIELD_MANAGER",
    "ApplyError",
    "apply_object",
    "delete_object",
    "describe",
    "object_path",
    "read_object",
]

FIELD_MANAGER = "meshctl"
_TIMEOUT = 30.0


class ApplyError(MeshError):
    """The API server refused or could not be reached for one object."""


def object_path(obj: Mapping[str, Any]) -> str:
    """``/api/v1/namespaces/<ns>/<plural>/<name>`` (or ``/apis/<group>/<version>/...``)."""
    group_version = str(obj.get("apiVersion") or "")
    meta = obj.get("metadata") or {}
    kind, name, namespace = str(obj.get("kind") or ""), meta.get("name"), meta.get("namespace")
    if not group_version or not kind or not isinstance(name, str) or not name:
        raise ApplyError(f"an object without apiVersion, kind or metadata.name: {dict(obj)!r:.200}")
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{kind.lower()}s/{name}"


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` for messages and progress lines."""
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def _call(api: k8s.ApiClient, method: str, path: str, **kwargs: Any) -> urllib3.HTTPResponse:
    method, url, headers, body, _ = api.param_serialize(
        method,
        path,
        query_params=kwargs.get("query", []),
        header_params=kwargs.get("headers", {}),
        body=kwargs.get("body"),
        auth_settings=["BearerToken"],
    )
    response: urllib3.HTTPResponse = api.call_api(
        method, url, header_params=headers, body=body, _request_timeout=_TIMEOUT
    ).response
    return response


def apply_object(api: k8s.ApiClient, obj: Mapping[str, Any]) -> None:
    """Creates or updates ``obj`` with server-side apply; raises ApplyError with the server's reason."""
    try:
        response = _call(
            api, "PATCH", object_path(obj),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            headers={"Content-Type": "application/apply-patch+yaml"},
            body=json.dumps(obj),  # JSON is YAML; a str body is sent as it is
        )  # fmt: skip
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApplyError(
            f"cannot apply {describe(obj)}: {exc}", hint="check the kubeconfig and the API server"
        ) from None
    if response.status not in (200, 201):
        raise ApplyError(
            f"the API server refused {describe(obj)}: {response.status} {_reason(response)}",
            hint="meshctl needs cluster-admin to install the mesh (it creates CRDs and ClusterRoles)",
        )


def read_object(api: k8s.ApiClient, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object as the API server has it now, or None when it does not exist."""
    try:
        response = _call(api, "GET", object_path(obj))
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApplyError(f"cannot read {describe(obj)}: {exc}") from None
    if response.status == 404:
        return None
    if response.status != 200:
        raise ApplyError(f"reading {describe(obj)} answered {response.status} {_reason(response)}")
    found = json.loads(response.data)
    return found if isinstance(found, dict) else None


def delete_object(api: k8s.ApiClient, obj: Mapping[str, Any]) -> bool:
    """Deletes ``obj`` (foreground: dependents first); False when it was not there."""
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}  # sent as JSON
    try:
        response = _call(
            api, "DELETE", object_path(obj), body=body, headers={"Content-Type": "application/json"}
        )
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApplyError(f"cannot delete {describe(obj)}: {exc}") from None
    if response.status == 404:
        return False
    if response.status not in (200, 202):
        raise ApplyError(
            f"the API server refused to delete {describe(obj)}: {response.status} {_reason(response)}"
        )
    return True


def _reason(response: urllib3.HTTPResponse) -> str:
    try:
        status = json.loads(response.data)
    except ValueError:
        return response.data[:200].decode(errors="replace")
    return str(status.get("message") or status.get("reason") or "") if isinstance(status, dict) else ""
