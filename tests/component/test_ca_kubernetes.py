"""Kubernetes caller authentication (TokenReview, audience istio-ca) through the real ``kubernetes`` client.

The API server here is ``kmock``: a test double of the Kubernetes API server (an in-process HTTP
server speaking the Kubernetes API's paths, errors and discovery), not a real cluster. TokenReview
answers are scripted per test, as the real API server gives them for projected SA tokens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kmock
import pytest
import structlog
from cryptography import x509
from kubernetes import client

from istiod_lite.app import IstiodSettings, build_server, load_authority
from istiod_lite.ca.errors import AuthenticatorUnavailableError, UnauthenticatedError
from istiod_lite.ca.kube_auth import KubernetesAuthenticator
from istiod_lite.ca.pods import InMemoryPodIndex, PodPlacement
from mesh.identity import verify_workload_chain
from mesh.rt.clock import SystemClock
from mesh.testing import ca_pb2_grpc
from mesh.testing.clock import FakeClock
from mesh.testing.pki import TestPki
from tests.component.ca_support import TD, ZTUNNEL, bearer, channel_options, request

TOKEN_REVIEWS = "post /apis/authentication.k8s.io/v1/tokenreviews"
POD_URL = "get /api/v1/namespaces/istio-system/pods/ztunnel-abc"
# Stateless: the API server does not store TokenReviews, and pods are served per test.
pytestmark = pytest.mark.kmock(cls=kmock.KubernetesScaffold)
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
EXTRA = "authentication.kubernetes.io/"


def _review(username: str, *, extra: dict[str, list[str]] | None = None, error: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "status": {
            "authenticated": not error,
            "error": error or None,
            "audiences": ["istio-ca"],
            "user": {"username": username, "extra": extra or {}} if not error else {},
        },
    }


ZTUNNEL_ON_N1 = _review(
    "system:serviceaccount:istio-system:ztunnel",
    extra={f"{EXTRA}pod-name": ["ztunnel-abc"], f"{EXTRA}pod-uid": ["uid-1"], f"{EXTRA}node-name": ["n1"]},
)
ZTUNNEL_POD_ONLY = _review(
    "system:serviceaccount:istio-system:ztunnel",
    extra={f"{EXTRA}pod-name": ["ztunnel-abc"], f"{EXTRA}pod-uid": ["uid-1"]},
)


def _echo(review: dict[str, Any]) -> Any:
    """A TokenReview reaction that, like the API server, echoes the request's spec in its answer."""
    return lambda req: {**review, "spec": req.data["spec"]}


def _pod(*, uid: str = "uid-1", sa: str = "ztunnel", node: str = "n2") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ztunnel-abc", "namespace": "istio-system", "uid": uid},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "ztunnel"}]},
    }


@pytest.fixture
def api_client(kmock: kmock.KubernetesScaffold) -> Iterator[Any]:
    configuration = client.Configuration(host=str(kmock.url).rstrip("/"))
    with client.ApiClient(configuration) as api:
        yield api


def _authenticator(api_client: Any, clock: FakeClock | None = None) -> KubernetesAuthenticator:
    return KubernetesAuthenticator(api_client, trust_domain=TD, clock=clock or FakeClock(), timeout=5.0)


async def test_node_agent_with_kubernetes_token_gets_a_pod_certificate(
    kmock: kmock.KubernetesScaffold, api_client: Any, tmp_path: Path
) -> None:
    refused = _review("", error="invalid bearer token")
    kmock[TOKEN_REVIEWS] << (
        lambda req: _echo(ZTUNNEL_ON_N1 if req.data["spec"]["token"] == "k8s-token" else refused)(req)
    )
    clock = SystemClock()
    istiod = build_server(
        IstiodSettings(listen="127.0.0.1:0", readiness_listen="127.0.0.1:0"),
        authority=load_authority(state_dir=tmp_path, cacerts=None, trust_domain=TD, now=clock.now()),
        authenticator=KubernetesAuthenticator(api_client, trust_domain=TD, clock=clock),
        pods=InMemoryPodIndex([PodPlacement("default", "sleep", "n1")]),
        clock=clock,
        log=structlog.get_logger(),
    )
    await istiod.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=istiod.root_bundle_pem.encode())
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{istiod.ca_port}", creds, options=channel_options()
        ) as chan:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(chan)
            message = request(TestPki.create().new_csr(SLEEP).csr_pem, impersonate=SLEEP)
            response = await stub.CreateCertificate(message, metadata=bearer("k8s-token"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCertificate(message, metadata=bearer("stolen"), timeout=10)
    finally:
        await istiod.stop(grace=0.5)
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    roots = x509.load_pem_x509_certificates(response.cert_chain[-1].encode())
    assert verify_workload_chain([leaf], roots=roots, now=dt.datetime.now(dt.UTC)).uri == SLEEP
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid bearer token" in (caught.value.details() or "")
    reviews = kmock["post"]
    assert [r.data["spec"] for r in reviews] == [
        {"token": "k8s-token", "audiences": ["istio-ca"]},
        {"token": "stolen", "audiences": ["istio-ca"]},
    ]


async def test_node_from_the_token_extras(kmock: kmock.KubernetesScaffold, api_client: Any) -> None:
    kmock[TOKEN_REVIEWS] << _echo(ZTUNNEL_ON_N1)
    caller = await _authenticator(api_client).authenticate("t")
    assert (caller.identity, caller.node, caller.pod) == (ZTUNNEL, "n1", "ztunnel-abc")
    assert len(kmock["get"]) == 0, "the node came from the token; no pod lookup"


async def test_node_from_the_pod_when_the_token_lacks_it(
    kmock: kmock.KubernetesScaffold, api_client: Any
) -> None:
    kmock[TOKEN_REVIEWS] << _echo(ZTUNNEL_POD_ONLY)
    kmock[POD_URL] << _pod(node="n2")
    caller = await _authenticator(api_client).authenticate("t")
    assert (caller.identity, caller.node) == (ZTUNNEL, "n2")


@pytest.mark.parametrize(
    ("review", "pod", "message"),
    [
        (_review("", error="token has expired"), None, "token has expired"),
        (_review("kubernetes-admin"), None, "not to a service account"),
        (_review("system:serviceaccount:Bad NS:x"), None, "is not a valid identity"),
        ({**ZTUNNEL_ON_N1, "status": {**ZTUNNEL_ON_N1["status"], "audiences": ["other"]}}, None, "audience"),
        (ZTUNNEL_POD_ONLY, None, "no longer exists"),
        (ZTUNNEL_POD_ONLY, _pod(uid="uid-2"), "was replaced"),
        (ZTUNNEL_POD_ONLY, _pod(sa="default"), "another service account"),
    ],
)
async def test_refusals(
    kmock: kmock.KubernetesScaffold,
    api_client: Any,
    review: dict[str, Any],
    pod: dict[str, Any] | None,
    message: str,
) -> None:
    kmock[TOKEN_REVIEWS] << _echo(review)
    if pod is not None:
        kmock[POD_URL] << pod
    with pytest.raises(UnauthenticatedError, match=message):
        await _authenticator(api_client).authenticate("t")


async def test_api_server_failure_is_unavailable_not_a_default(
    kmock: kmock.KubernetesScaffold, api_client: Any
) -> None:
    kmock[TOKEN_REVIEWS] << 500 << {"kind": "Status", "code": 500, "message": "etcd down"}
    with pytest.raises(AuthenticatorUnavailableError, match="TokenReview failed: HTTP 500"):
        await _authenticator(api_client).authenticate("t")


async def test_successful_reviews_are_cached_briefly(
    kmock: kmock.KubernetesScaffold, api_client: Any
) -> None:
    kmock[TOKEN_REVIEWS] << _echo(ZTUNNEL_ON_N1)
    clock = FakeClock()
    auth = _authenticator(api_client, clock)
    for _ in range(3):
        assert (await auth.authenticate("t")).node == "n1"
    assert len(kmock["post"]) == 1
    clock.advance(31)
    await auth.authenticate("t")
    assert len(kmock["post"]) == 2


async def test_token_reviews_in_flight_are_bounded(kmock: kmock.KubernetesScaffold, api_client: Any) -> None:
    async def slow(req: Any) -> dict[str, Any]:
        await asyncio.sleep(1.0)
        return _echo(ZTUNNEL_ON_N1)(req)  # type: ignore[no-any-return]

    kmock[TOKEN_REVIEWS] << slow
    auth = KubernetesAuthenticator(
        api_client,
        trust_domain=TD,
        clock=FakeClock(),
        timeout=0.6,
        max_concurrent_reviews=1,
        queue_timeout=0.1,
    )
    first, second = await asyncio.gather(
        auth.authenticate("a"), auth.authenticate("b"), return_exceptions=True
    )
    assert isinstance(first, AuthenticatorUnavailableError), "the slow API server times the first review out"
    assert isinstance(second, AuthenticatorUnavailableError)
    assert "too many token reviews in flight" in str(second)
    assert len(kmock["post"]) == 1, "the second token never reached the API server"
