"""Delta ADS over TLS with callers authenticated as for the CA (bearer tokens), like istiod on 15012."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from mesh.identity import WorkloadIdentity
from mesh.rt.clock import SystemClock
from mesh.rt.rpc import client_tls
from mesh.testing.pki import TestPki
from mesh.testing.xds import FakeAgent
from tests.component.test_xds_push import Plane, Source, start_plane

pytestmark = pytest.mark.timeout(30)

SERVER_NAME = "istiod.istio-system.svc"
ZTUNNEL = WorkloadIdentity("cluster.local", "istio-system", "ztunnel")
TOKENS = {
    "tok-node-1": Caller(ZTUNNEL, node="node-1"),
    "tok-node-2": Caller(ZTUNNEL, node="node-2"),
    "tok-sleep": Caller(WorkloadIdentity("cluster.local", "default", "sleep")),
}


@pytest.fixture
async def tls_plane() -> AsyncIterator[tuple[Plane, TestPki]]:
    pki = TestPki.create()
    leaf = pki.issue_leaf(
        uri_sans=["spiffe://cluster.local/ns/istio-system/sa/istiod"], dns_sans=[SERVER_NAME]
    )
    credentials = grpc.ssl_server_credentials([(leaf.key_pem, leaf.cert_pem)])
    authenticator = LabTokenAuthenticator(TOKENS, clock=SystemClock())
    plane = await start_plane(Source(), credentials=credentials, authenticator=authenticator)
    yield plane, pki
    await plane.stop()


def tls_agent(plane: Plane, pki: TestPki, token: str | None) -> FakeAgent:
    return FakeAgent(
        plane.target,
        tls=client_tls(pki.root_pem),
        server_name=SERVER_NAME,
        call_metadata=(("authorization", f"Bearer {token}"),) if token else (),
    )


async def test_a_node_agent_with_its_token_gets_config_over_tls(tls_plane: tuple[Plane, TestPki]) -> None:
    plane, pki = tls_plane
    agent = tls_agent(plane, pki, "tok-node-1")
    agent.start()
    try:
        await asyncio.wait_for(agent.client.wait_synced(), 5)
        (conn,) = plane.hub.connections()
        assert conn.subscriber.identity == "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
    finally:
        await agent.stop()


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (None, "UNAUTHENTICATED"),
        ("tok-unknown", "UNAUTHENTICATED"),
        ("tok-node-2", "PERMISSION_DENIED"),  # the token's node is not the node the agent claims
        ("tok-sleep", "PERMISSION_DENIED"),  # a workload identity outside the proxy's namespace
    ],
)
async def test_callers_are_refused(tls_plane: tuple[Plane, TestPki], token: str | None, status: str) -> None:
    plane, pki = tls_plane
    agent = tls_agent(plane, pki, token)
    agent.start()
    try:
        refused = "istiod_lite_xds_refused_total"
        await agent.wait_for(lambda a: (plane.registry.get_sample_value(refused, {"code": status}) or 0) >= 2)
        assert agent.client.last_error.startswith(status)
        assert agent.client.connects >= 2  # refused, and retrying with backoff
        assert not agent.events
        assert not agent.client.synced
        assert not plane.hub.connections()
    finally:
        await agent.stop()


async def test_a_client_that_does_not_trust_the_server_gets_nothing(tls_plane: tuple[Plane, TestPki]) -> None:
    plane, _ = tls_plane
    agent = tls_agent(plane, TestPki.create(), "tok-node-1")  # roots of another mesh
    agent.start()
    try:
        await agent.wait_for(lambda a: "CERTIFICATE_VERIFY_FAILED" in a.client.last_error)
        assert agent.client.last_error.startswith("UNAVAILABLE: cannot connect")
        assert agent.client.connects == 0  # no stream is ever opened to an untrusted server
        assert not agent.events
    finally:
        await agent.stop()
