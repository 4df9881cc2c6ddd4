"""Kubernetes caller authentication: the bearer token is a projected service-account token, checked
with a TokenReview (audience ``istio-ca``) through the ``kubernetes`` client.

The review gives the service account (``system:serviceaccount:<ns>:<sa>``) and, for pod-bound
tokens, the pod name and uid and the node name (``authentication.kubernetes.io/*`` extras). When
the node name is absent, the pod is read from the API server and must match the token's uid and
service account. Successful reviews are cached briefly (the API server is not asked per call).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

import urllib3
from kubernetes import client as k8s

from istiod_lite.ca.auth import Caller
from istiod_lite.ca.errors import AuthenticatorUnavailableError, UnauthenticatedError
from mesh.clock import Clock
from mesh.identity import IdentityError, WorkloadIdentity
from mesh.rt.kube.rbac import ApiCall

__all__ = ["API_CALLS", "CA_AUDIENCE", "KubernetesAuthenticator"]

API_CALLS = (
    ApiCall("authentication.k8s.io", "tokenreviews", ("create",)),  # create_token_review
    ApiCall("", "pods", ("get",)),  # read_namespaced_pod: a node agent may act only for its node's pods
)
"""What the authenticator calls (RBAC: see mesh.rt.kube.rbac)."""

CA_AUDIENCE = "istio-ca"
_SA_PREFIX = "system:serviceaccount:"
_EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
_EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
_EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
_HTTP_NOT_FOUND = 404


class KubernetesAuthenticator:
    """Authenticates callers with TokenReview; the API client is injected (in-cluster or kubeconfig)."""

    def __init__(
        self,
        api_client: Any,
        *,
        trust_domain: str,
        clock: Clock,
        audience: str = CA_AUDIENCE,
        timeout: float = 5.0,
        cache_ttl: float = 30.0,
        cache_size: int = 1024,
        max_concurrent_reviews: int = 8,
        queue_timeout: float = 2.0,
    ) -> None:
        self._auth_api = k8s.AuthenticationV1Api(api_client)
        self._core_api = k8s.CoreV1Api(api_client)
        self._trust_domain = trust_domain
        self._clock = clock
        self._audience = audience
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[float, Caller]] = OrderedDict()
        self._in_flight = asyncio.Semaphore(max_concurrent_reviews)
        self._queue_timeout = queue_timeout

    async def authenticate(self, token: str) -> Caller:
        """The service account (and node) holding ``token``."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock.monotonic():
            return hit[1]
        try:
            # Bounded: a flood of distinct tokens queues here (and times out), not in the thread pool.
            async with asyncio.timeout(self._queue_timeout):
                await self._in_flight.acquire()
        except TimeoutError:
            raise AuthenticatorUnavailableError(
                "too many token reviews in flight", hint="retry with backoff"
            ) from None
        try:
            caller = await asyncio.to_thread(self._review, token)
        finally:
            self._in_flight.release()
        self._cache[key] = (self._clock.monotonic() + self._cache_ttl, caller)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return caller

    def _review(self, token: str) -> Caller:
        body = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=[self._audience]))
        review = self._call("TokenReview", self._auth_api.create_token_review, body)
        status = review.status
        if status is None or not status.authenticated:
            error = (status.error if status is not None else None) or "not authenticated"
            raise UnauthenticatedError(
                f"the API server rejected the token: {error}", hint="send a fresh istio-ca token"
            )
        if status.audiences is not None and self._audience not in status.audiences:
            raise UnauthenticatedError(f"the token is not for audience {self._audience!r}")
        user = status.user
        username = (user.username if user is not None else None) or ""
        identity = self._identity_of(username)
        extra: dict[str, list[str]] = (user.extra if user is not None else None) or {}
        pod, pod_uid, node = (
            _first(extra.get(k)) for k in (_EXTRA_POD_NAME, _EXTRA_POD_UID, _EXTRA_NODE_NAME)
        )
        if node is None and pod is not None:
            node = self._node_of_pod(identity, pod=pod, pod_uid=pod_uid)
        return Caller(identity=identity, node=node, pod=pod)

    def _identity_of(self, username: str) -> WorkloadIdentity:
        if not username.startswith(_SA_PREFIX):
            raise UnauthenticatedError(f"the token belongs to {username[:80]!r}, not to a service account")
        namespace, _, service_account = username[len(_SA_PREFIX) :].partition(":")
        try:
            return WorkloadIdentity(self._trust_domain, namespace, service_account)
        except IdentityError as err:
            raise UnauthenticatedError(
                f"the token's service account {username[:80]!r} is not a valid identity"
            ) from err

    def _node_of_pod(self, identity: WorkloadIdentity, *, pod: str, pod_uid: str | None) -> str | None:
        try:
            obj = self._call("pod lookup", self._core_api.read_namespaced_pod, pod, identity.namespace)
        except _PodNotFoundError:
            raise UnauthenticatedError(
                f"the token's pod {identity.namespace}/{pod} no longer exists"
            ) from None
        if pod_uid is not None and obj.metadata.uid != pod_uid:
            raise UnauthenticatedError(
                f"the token's pod {identity.namespace}/{pod} was replaced (uid differs)"
            )
        if (obj.spec.service_account_name or "default") != identity.service_account:
            raise UnauthenticatedError(
                f"the token's pod {identity.namespace}/{pod} runs as another service account"
            )
        node: str | None = obj.spec.node_name
        return node

    def _call(self, what: str, method: Any, *args: Any) -> Any:
        try:
            return method(*args, _request_timeout=self._timeout)
        except k8s.ApiException as err:
            if err.status == _HTTP_NOT_FOUND and what == "pod lookup":
                raise _PodNotFoundError from err
            raise AuthenticatorUnavailableError(
                f"{what} failed: HTTP {err.status} {err.reason}",
                hint="check the API server and istiod's RBAC",
            ) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise AuthenticatorUnavailableError(
                f"{what} failed: {err}", hint="check that the API server is reachable"
            ) from err
        except ValueError as err:
            raise AuthenticatorUnavailableError(
                f"{what} failed: the API server's answer is malformed ({err})",
                hint="check the API server version and any proxy in between",
            ) from err


class _PodNotFoundError(Exception):
    pass


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None
