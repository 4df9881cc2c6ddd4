"""The CA Secret (``istiod_lite.ca.secret``) through the Kubernetes API: get and create
``<namespace>/istio-ca-secret``, in istiod_lite's own namespace only (a Role there, not a
ClusterRole: no replica may read other Secrets)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import urllib3

from istiod_lite.ca.errors import RootOfTrustError
from istiod_lite.ca.secret import CA_SECRET, CaSecretUnavailableError
from mesh.rt.kube.rbac import ApiCall
from mesh.rt.kube.rest import call_api

__all__ = ["API_CALLS", "KubeCaSecretStore"]

API_CALLS = (ApiCall("", "secrets", ("create", "get"), own_namespace=True),)
"""Read the CA Secret at start; create it on a fresh install."""


class KubeCaSecretStore:
    """``CaSecretStore`` on the Kubernetes API (blocking: call it from a worker thread)."""

    def __init__(self, api: Any, *, namespace: str) -> None:
        self._api = api
        self.namespace = namespace

    @property
    def name(self) -> str:
        """``Secret <namespace>/istio-ca-secret``."""
        return f"Secret {self.namespace}/{CA_SECRET}"

    def read(self) -> Mapping[str, Any] | None:
        """The Secret, or None when there is none (404)."""
        status, body = self._call("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{CA_SECRET}")
        if status == 404:
            return None
        if status != 200:
            raise self._failure("read", status, body)
        found: dict[str, Any] = json.loads(body)
        return found

    def create(self, secret: Mapping[str, Any]) -> bool:
        """Creates the Secret; False on 409 (another replica created it first)."""
        status, body = self._call("POST", f"/api/v1/namespaces/{self.namespace}/secrets", secret)
        if status == 409:
            return False
        if status not in (200, 201):
            raise self._failure("create", status, body)
        return True

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        try:
            return call_api(self._api, method, path, body)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise CaSecretUnavailableError(
                f"cannot reach the Kubernetes API for {self.name}: {err}",
                hint="istiod_lite tries again; check the API server and the network",
            ) from err

    def _failure(self, verb: str, status: int, body: bytes) -> RootOfTrustError:
        answer = body[:300].decode(errors="replace")
        if status in (401, 403):
            return RootOfTrustError(
                f"may not {verb} {self.name} (HTTP {status}: {answer})",
                hint=f"istiod's Role in {self.namespace} must grant get and create on secrets "
                "(daemonset/base/rbac.yaml)",
            )
        error = CaSecretUnavailableError if status >= 500 or status == 429 else RootOfTrustError
        return error(
            f"could not {verb} {self.name}: HTTP {status}: {answer}", hint="see the API server's answer"
        )
