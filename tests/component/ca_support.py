"""Shared set-up for the CA component tests: a real istiod_lite CA on loopback with lab tokens.

``running_ca`` starts it on the test's event loop; ``CaInThread`` runs it on its own loop in a
thread, for synchronous callers such as hypothesis tests. Clients verify the server against the
CA's root, with the name istiod.istio-system.svc.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import struct_pb2

from istiod_lite.app import Istiod, IstiodSettings, build_server, load_authority
from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from istiod_lite.ca.authority import SigningAuthority
from istiod_lite.ca.pods import InMemoryPodIndex, PodPlacement
from mesh.api.istio.v1.auth import ca_pb2
from mesh.identity import WorkloadIdentity
from mesh.rt.clock import SystemClock
from mesh.testing import ca_pb2_grpc

__all__ = [
    "EXPIRED",
    "METHOD",
    "NODE_AGENT_N1",
    "NODE_AGENT_N2",
    "PODS",
    "SERVER_NAME",
    "TD",
    "WORKLOAD_SLEEP",
    "ZTUNNEL",
    "CaInThread",
    "TestCa",
    "bearer",
    "channel_options",
    "request",
    "running_ca",
]

TD = "cluster.local"
SERVER_NAME = "istiod.istio-system.svc"
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
ZTUNNEL = WorkloadIdentity(TD, "istio-system", "ztunnel")
NODE_AGENT_N1 = "tok-ztunnel-n1"
NODE_AGENT_N2 = "tok-ztunnel-n2"
WORKLOAD_SLEEP = "tok-sleep"
EXPIRED = "tok-expired"
PODS = (
    PodPlacement("default", "sleep", "n1"),
    PodPlacement("default", "web", "n2"),
)


def _tokens(clock: SystemClock) -> dict[str, Caller | tuple[Caller, float | None]]:
    return {
        NODE_AGENT_N1: Caller(ZTUNNEL, node="n1"),
        NODE_AGENT_N2: Caller(ZTUNNEL, node="n2"),
        WORKLOAD_SLEEP: Caller(WorkloadIdentity(TD, "default", "sleep"), node="n1"),
        EXPIRED: (Caller(ZTUNNEL, node="n1"), clock.now() - 1),
    }


def bearer(token: str) -> list[tuple[str, str]]:
    """Call metadata carrying ``token``."""
    return [("authorization", f"Bearer {token}")]


def channel_options() -> list[tuple[str, Any]]:
    """Verify the server as istiod.istio-system.svc although we dial 127.0.0.1."""
    return [("grpc.ssl_target_name_override", SERVER_NAME)]


def request(
    csr: bytes | str, *, ttl: int = 3600, impersonate: str | None = None
) -> ca_pb2.IstioCertificateRequest:
    """An IstioCertificateRequest, with ImpersonatedIdentity metadata when given."""
    message = ca_pb2.IstioCertificateRequest(
        csr=csr.decode() if isinstance(csr, bytes) else csr, validity_duration=ttl
    )
    if impersonate is not None:
        metadata = struct_pb2.Struct()
        metadata.update({"ImpersonatedIdentity": impersonate})
        message.metadata.CopyFrom(metadata)
    return message


@dataclass
class TestCa:
    """A started CA and how to reach it."""

    __test__ = False

    istiod: Istiod
    pods: InMemoryPodIndex

    @property
    def address(self) -> str:
        """host:port of the gRPC listener."""
        return f"127.0.0.1:{self.istiod.ca_port}"

    @property
    def root_pem(self) -> bytes:
        """The trust bundle in PEM."""
        return self.istiod.root_bundle_pem.encode()

    def aio_channel(self) -> grpc.aio.Channel:
        """A TLS channel that verifies the server against the CA's root."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        return grpc.aio.secure_channel(self.address, creds, options=channel_options())

    def sync_channel(self) -> grpc.Channel:
        """The same, blocking."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        return grpc.secure_channel(self.address, creds, options=channel_options())

    def aio_stub(self, channel: grpc.aio.Channel) -> ca_pb2_grpc.IstioCertificateServiceAsyncStub:
        """A typed stub on ``channel``."""
        return ca_pb2_grpc.IstioCertificateServiceStub(channel)


def _build(
    tmp_path: Path,
    *,
    authority: SigningAuthority | None,
    settings: IstiodSettings | None,
    tokens: Mapping[str, Caller] | None = None,
) -> tuple[Istiod, InMemoryPodIndex]:
    clock = SystemClock()
    authority = authority or load_authority(
        state_dir=tmp_path, cacerts=None, trust_domain=TD, now=clock.now()
    )
    pods = InMemoryPodIndex(PODS)
    istiod = build_server(
        settings or IstiodSettings(listen="127.0.0.1:0", readiness_listen="127.0.0.1:0"),
        authority=authority,
        authenticator=LabTokenAuthenticator({**_tokens(clock), **(tokens or {})}, clock=clock),
        pods=pods,
        clock=clock,
        log=structlog.get_logger(),
    )
    return istiod, pods


@contextlib.asynccontextmanager
async def running_ca(
    tmp_path: Path,
    *,
    authority: SigningAuthority | None = None,
    settings: IstiodSettings | None = None,
    tokens: Mapping[str, Caller] | None = None,
) -> AsyncIterator[TestCa]:
    """A started CA (self-signed root under ``tmp_path`` unless ``authority`` is given; ``tokens``
    adds callers to the test ones), stopped on exit."""
    istiod, pods = _build(tmp_path, authority=authority, settings=settings, tokens=tokens)
    await istiod.start()
    try:
        yield TestCa(istiod, pods)
    finally:
        await istiod.stop(grace=0.5)


class CaInThread:
    """The CA on its own event loop in a daemon thread (for synchronous tests)."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ca-under-test", daemon=True)
        self.ca: TestCa | None = None

    def __enter__(self) -> TestCa:
        self._thread.start()
        istiod, pods = self._run(self._build())
        self._run(istiod.start())
        self.ca = TestCa(istiod, pods)
        return self.ca

    def __exit__(self, *exc: object) -> None:
        try:
            if self.ca is not None:
                self._run(self.ca.istiod.stop(grace=0.5))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    async def _build(self) -> tuple[Istiod, InMemoryPodIndex]:
        return _build(self._tmp_path, authority=None, settings=None)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)
