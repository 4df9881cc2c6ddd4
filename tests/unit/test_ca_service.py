"""The CreateCertificate pipeline without a transport: one audit line per call, metrics, error mapping,
and the server certificate's reissue at half life (fake clock)."""

from __future__ import annotations

import datetime as dt

import pytest
import structlog
from cryptography import x509
from google.protobuf import struct_pb2
from structlog.testing import capture_logs

from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from istiod_lite.ca.authority import SigningAuthority, create_root
from istiod_lite.ca.errors import (
    CaError,
    InvalidRequestError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from istiod_lite.ca.metrics import CaMetrics
from istiod_lite.ca.pods import InMemoryPodIndex, PodPlacement
from istiod_lite.ca.server import ServingCertificates
from istiod_lite.ca.service import CaPolicy, CertificateService
from mesh.api.istio.v1.auth import ca_pb2
from mesh.errors import ConfigError
from mesh.identity import WorkloadIdentity
from mesh.rt.metrics import Registry
from mesh.testing.clock import FakeClock
from mesh.testing.pki import TestPki

TD = "cluster.local"
ZTUNNEL = WorkloadIdentity(TD, "istio-system", "ztunnel")
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
MD = [("authorization", "Bearer n1")]


@pytest.fixture(scope="module")
def root() -> SigningAuthority:
    return create_root(trust_domain=TD, now=FakeClock().now())


def _service(root: SigningAuthority, clock: FakeClock, registry: Registry) -> CertificateService:
    return CertificateService(
        lambda: root,
        authenticator=LabTokenAuthenticator({"n1": Caller(ZTUNNEL, node="n1")}, clock=clock),
        pods=InMemoryPodIndex([PodPlacement("default", "sleep", "n1")]),
        clock=clock,
        policy=CaPolicy(trust_domain=TD, max_ttl=dt.timedelta(hours=1)),
        log=structlog.get_logger(),
        metrics=CaMetrics(registry),
    )


def _raw(csr: bytes, *, ttl: int = 600, impersonate: str = SLEEP) -> bytes:
    metadata = struct_pb2.Struct()
    metadata.update({"ImpersonatedIdentity": impersonate})
    request = ca_pb2.IstioCertificateRequest(csr=csr.decode(), validity_duration=ttl, metadata=metadata)
    return request.SerializeToString()


async def test_issue_logs_one_decision_and_counts(root: SigningAuthority) -> None:
    clock, registry = FakeClock(), Registry()
    service = _service(root, clock, registry)
    with capture_logs() as logs:
        answer = await service.create_certificate(_raw(TestPki.create().new_csr(SLEEP).csr_pem, ttl=7200), MD)
    response = ca_pb2.IstioCertificateResponse.FromString(answer)
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    assert leaf.not_valid_after_utc.timestamp() == clock.now() + 3600, "capped at the configured max TTL"
    assert logs == [
        {
            "event": "ca.decision",
            "log_level": "info",
            "ca.caller": ZTUNNEL.uri,
            "ca.node": "n1",
            "ca.identity": SLEEP,
            "ca.decision": "allow",
            "ca.reason": "issued",
            "ca.status": "OK",
        }
    ]
    assert registry.get_sample_value("citadel_server_csr_total") == 1
    assert registry.get_sample_value("citadel_server_success_cert_issuance_total") == 1


@pytest.mark.parametrize(
    ("raw", "metadata", "error", "counter"),
    [
        (b"", [], UnauthenticatedError, "citadel_server_authentication_failure_total"),
        (b"\xff\xff", MD, InvalidRequestError, "citadel_server_csr_parsing_err_total"),
        (
            _raw(
                TestPki.create().new_csr("spiffe://cluster.local/ns/default/sa/web").csr_pem,
                impersonate=SLEEP,
            ),
            MD,
            InvalidRequestError,
            "citadel_server_csr_parsing_err_total",
        ),
        (
            _raw(b"x", impersonate="spiffe://cluster.local/ns/default/sa/web"),
            MD,
            PermissionDeniedError,
            "citadel_server_authorization_failure_total",
        ),
    ],
)
async def test_refusals_log_one_decision_and_count(
    root: SigningAuthority, raw: bytes, metadata: list[tuple[str, str]], error: type[CaError], counter: str
) -> None:
    registry = Registry()
    service = _service(root, FakeClock(), registry)
    with capture_logs() as logs, pytest.raises(error) as caught:
        await service.create_certificate(raw, metadata)
    assert len(logs) == 1
    assert logs[0]["ca.decision"] == "deny"
    assert logs[0]["ca.status"] == caught.value.grpc_status
    assert logs[0]["ca.reason"] == str(caught.value)
    assert registry.get_sample_value(counter) == 1
    assert registry.get_sample_value("citadel_server_success_cert_issuance_total") == 0


async def test_non_string_impersonation_is_invalid(root: SigningAuthority) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"ImpersonatedIdentity": 7})
    raw = ca_pb2.IstioCertificateRequest(csr="x", validity_duration=60, metadata=metadata).SerializeToString()
    with pytest.raises(InvalidRequestError, match="is not a string"):
        await _service(root, FakeClock(), Registry()).create_certificate(raw, MD)


async def test_unexpected_failure_is_internal_and_audited() -> None:
    def broken() -> SigningAuthority:
        raise RuntimeError("disk on fire")

    clock = FakeClock()
    service = CertificateService(
        broken,
        authenticator=LabTokenAuthenticator({"n1": Caller(ZTUNNEL, node="n1")}, clock=clock),
        pods=InMemoryPodIndex([PodPlacement("default", "sleep", "n1")]),
        clock=clock,
        policy=CaPolicy(trust_domain=TD),
        log=structlog.get_logger(),
    )
    with capture_logs() as logs, pytest.raises(CaError) as caught:
        await service.create_certificate(_raw(TestPki.create().new_csr(SLEEP).csr_pem), MD)
    assert caught.value.grpc_status == "INTERNAL"
    assert [(e["ca.decision"], e["ca.status"]) for e in logs] == [("error", "INTERNAL")]
    assert "disk on fire" in logs[0]["ca.reason"]


def test_serving_certificate_is_reissued_at_half_life(root: SigningAuthority) -> None:
    clock = FakeClock()
    serving = ServingCertificates(lambda: root, trust_domain=TD, clock=clock, ttl=dt.timedelta(days=30))
    first = serving.current
    assert serving._fetch() is None
    clock.advance(14 * 86400)
    assert serving._fetch() is None, "before half life: keep serving the same certificate"
    clock.advance(2 * 86400)
    assert serving._fetch() is not None
    assert serving.current.not_before > first.not_before
    assert serving._fetch() is None


@pytest.mark.parametrize("seconds", [0, -60])
def test_policy_refuses_a_non_positive_max_ttl(seconds: int) -> None:
    with pytest.raises(ConfigError, match="use a positive --max-ttl"):
        CaPolicy(max_ttl=dt.timedelta(seconds=seconds))
