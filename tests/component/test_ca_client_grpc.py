"""The CA client and certificate manager against the real istiod_lite CA, over gRPC and TLS on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.app import Istiod, IstiodSettings, build_server
from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from istiod_lite.ca.authority import SigningAuthority, create_root
from istiod_lite.ca.pods import InMemoryPodIndex, PodPlacement
from istiod_lite.ca.server import SERVICE_NAME, ServingCertificates
from istiod_lite.ca.signing import issue_workload_certificate
from mesh.api.istio.v1.auth import ca_pb2
from mesh.certs import IssuedCertificate
from mesh.identity import WorkloadIdentity, verify_workload_chain
from mesh.rpc import StatusCode
from mesh.rt.ca_client import CaClient, CaRejected, CaResponseInvalid, CaUnavailable
from mesh.rt.certs import CertificateManager
from mesh.rt.clock import SystemClock
from mesh.rt.logs import get_logger

_TD = "cluster.local"
_ZTUNNEL = WorkloadIdentity(_TD, "istio-system", "ztunnel")
_SERVER = WorkloadIdentity(_TD, "demo", "server")
_ELSEWHERE = WorkloadIdentity(_TD, "demo", "elsewhere")
_UNKNOWN = WorkloadIdentity(_TD, "demo", "nobody")


@dataclass
class Ca:
    istiod: Istiod | None
    address: str
    roots_pem: bytes

    def client(self, token: str = "tok-n1", **kwargs: Any) -> CaClient:
        return CaClient(self.address, roots_pem=self.roots_pem, token=lambda: token, timeout=5.0, **kwargs)


@pytest.fixture
async def ca() -> AsyncIterator[Ca]:
    clock = SystemClock()
    authority = create_root(trust_domain=_TD, now=clock.now())
    tokens = {
        "tok-n1": Caller(_ZTUNNEL, node="n1"),
        "tok-app": Caller(_SERVER),
    }
    pods = InMemoryPodIndex([PodPlacement("demo", "server", "n1"), PodPlacement("demo", "elsewhere", "n2")])
    istiod = build_server(
        IstiodSettings(listen="127.0.0.1:0", readiness_listen="127.0.0.1:0", trust_domain=_TD),
        authority=authority,
        authenticator=LabTokenAuthenticator(tokens, clock=clock),
        pods=pods,
        clock=clock,
        log=get_logger("istiod-test"),
    )
    await istiod.start()
    try:
        yield Ca(istiod, f"127.0.0.1:{istiod.ca_port}", istiod.root_bundle_pem.encode())
    finally:
        await istiod.stop(grace=0.1)


async def test_node_agent_gets_a_verified_certificate_for_a_pod_on_its_node(ca: Ca) -> None:
    client = ca.client()
    try:
        issued = await client.fetch(_SERVER, impersonate=True, ttl_seconds=3600)
    finally:
        await client.close()
    assert issued.identity == _SERVER
    assert ca.istiod is not None
    roots = tuple(x509.load_pem_x509_certificates(issued.roots_pem))
    assert roots == ca.istiod.authority.roots
    leaf, *_ = x509.load_pem_x509_certificates(issued.chain_pem)
    now = dt.datetime.now(dt.UTC)
    assert verify_workload_chain([leaf], roots=roots, now=now, trust_domain=_TD) == _SERVER
    assert issued.serial == leaf.serial_number
    assert issued.not_after == leaf.not_valid_after_utc.timestamp()
    assert abs(issued.not_after - (time.time() + 3600)) < 5, "the requested TTL is honoured"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [n.value for n in sans] == [_SERVER.uri]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=issued.roots_pem.decode())
    assert len(context.get_ca_certs()) == 1


async def test_a_workload_gets_its_own_identity_without_impersonation(ca: Ca) -> None:
    client = ca.client("tok-app")
    try:
        issued = await client.fetch(_SERVER, impersonate=False, ttl_seconds=600)
    finally:
        await client.close()
    assert issued.identity == _SERVER


@dataclass(frozen=True)
class Refusal:
    token: str
    identity: WorkloadIdentity
    impersonate: bool
    code: StatusCode
    message: str


@pytest.mark.parametrize(
    "case",
    [
        Refusal("tok-n1", _ELSEWHERE, True, StatusCode.PERMISSION_DENIED, "only get identities of pods"),
        Refusal("tok-n1", _UNKNOWN, True, StatusCode.PERMISSION_DENIED, "only get identities of pods"),
        Refusal("tok-n1", _SERVER, False, StatusCode.INVALID_ARGUMENT, "request is for .*ztunnel"),
        Refusal("tok-stolen", _SERVER, True, StatusCode.UNAUTHENTICATED, "check the bearer token"),
    ],
    ids=["pod-on-another-node", "unknown-service-account", "csr-not-own-identity", "unknown-token"],
)
async def test_refusals_carry_the_status_and_a_hint(ca: Ca, case: Refusal) -> None:
    client = ca.client(case.token)
    try:
        with pytest.raises(CaRejected, match=case.message) as caught:
            await client.fetch(case.identity, impersonate=case.impersonate, ttl_seconds=600)
    finally:
        await client.close()
    assert caught.value.code is case.code
    assert caught.value.details


async def test_a_server_not_signed_by_the_configured_root_is_not_trusted(ca: Ca) -> None:
    other = create_root(trust_domain=_TD, now=time.time())
    client = CaClient(
        ca.address, roots_pem=other.root_bundle_pem.encode(), token=lambda: "tok-n1", timeout=3.0
    )
    try:
        with pytest.raises(CaUnavailable, match="UNAVAILABLE"):
            await client.fetch(_SERVER, impersonate=True, ttl_seconds=600)
    finally:
        await client.close()


async def test_a_server_with_another_name_is_not_trusted(ca: Ca) -> None:
    client = ca.client(server_name="evil.example.com")
    try:
        with pytest.raises(CaUnavailable):
            await client.fetch(_SERVER, impersonate=True, ttl_seconds=600)
    finally:
        await client.close()


async def test_a_stopped_ca_is_unavailable(ca: Ca) -> None:
    assert ca.istiod is not None
    await ca.istiod.stop(grace=0.1)
    client = CaClient(ca.address, roots_pem=ca.roots_pem, token=lambda: "tok-n1", timeout=2.0)
    try:
        with pytest.raises(CaUnavailable, match="check that istiod-lite runs"):
            await client.fetch(_SERVER, impersonate=True, ttl_seconds=600)
    finally:
        await client.close()


async def test_manager_renews_over_grpc_with_a_short_ttl(ca: Ca) -> None:
    client = ca.client()

    async def fetch(identity: WorkloadIdentity) -> IssuedCertificate:
        return await client.fetch(identity, impersonate=True, ttl_seconds=2)

    manager = CertificateManager(fetcher=fetch, clock=SystemClock(), rng=random.Random(1))
    try:
        first = await manager.get(_SERVER)
        renewed = await _poll(lambda: manager.snapshot()[0].serial != f"{first.serial:x}", deadline=6.0)
        assert renewed, "the certificate was renewed before it expired"
        second = await manager.get(_SERVER)
        assert second.serial != first.serial
        assert second.not_after >= first.not_after
    finally:
        await manager.close()
        await client.close()


async def _poll(condition: Callable[[], bool], *, deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


@pytest.fixture
async def lying_ca() -> AsyncIterator[Ca]:
    """A CA that signs every CSR with a valid chain, but for another identity than requested."""
    clock = SystemClock()
    authority = create_root(trust_domain=_TD, now=clock.now())
    serving = ServingCertificates(lambda: authority, trust_domain=_TD, clock=clock)
    server = grpc.aio.server(handlers=[_lying_handler(authority)])
    port = server.add_secure_port("127.0.0.1:0", serving.credentials())
    await server.start()
    try:
        yield Ca(None, f"127.0.0.1:{port}", authority.root_bundle_pem.encode())
    finally:
        await server.stop(0.1)


def _lying_handler(authority: SigningAuthority) -> grpc.GenericRpcHandler[bytes, bytes]:
    async def create(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        csr = x509.load_pem_x509_csr(ca_pb2.IstioCertificateRequest.FromString(request).csr.encode())
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        issued = issue_workload_certificate(
            authority, public_key, identity=_ELSEWHERE, ttl=dt.timedelta(hours=1), now=time.time()
        )
        return ca_pb2.IstioCertificateResponse(cert_chain=list(issued.cert_chain)).SerializeToString()

    handler = grpc.unary_unary_rpc_method_handler(create)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"CreateCertificate": handler})


async def test_a_certificate_for_another_identity_is_refused(lying_ca: Ca) -> None:
    client = lying_ca.client()
    try:
        with pytest.raises(
            CaResponseInvalid, match=r"not the requested spiffe://cluster\.local/ns/demo/sa/server"
        ):
            await client.fetch(_SERVER, impersonate=True, ttl_seconds=600)
    finally:
        await client.close()
