"""The CA over real gRPC and TLS on loopback: issuance to a node agent, cross-node denials (catalogue
test 8), bad input answered with specific statuses while the server stays up (catalogue test 26)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from structlog.testing import capture_logs

from istiod_lite.app import IstiodSettings, load_authority
from istiod_lite.ca.authority import utc
from mesh.api.istio.v1.auth import ca_pb2
from mesh.identity import CertificateRejected, Reason, WorkloadIdentity, verify_workload_chain
from mesh.testing.pki import TestPki, cert_pem, chain_pem
from tests.component.ca_support import (
    EXPIRED,
    METHOD,
    NODE_AGENT_N1,
    TD,
    WORKLOAD_SLEEP,
    TestCa,
    bearer,
    request,
    running_ca,
)

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
WEB = "spiffe://cluster.local/ns/default/sa/web"
GHOST = "spiffe://cluster.local/ns/default/sa/ghost"
ZTUNNEL_URI = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
PKI = TestPki.create(trust_domain=TD)


async def _call(ca: TestCa, message: ca_pb2.IstioCertificateRequest, token: str | None) -> list[str]:
    async with ca.aio_channel() as channel:
        response = await ca.aio_stub(channel).CreateCertificate(
            message, metadata=bearer(token) if token else None, timeout=10
        )
    return list(response.cert_chain)


async def _status(
    ca: TestCa, message: ca_pb2.IstioCertificateRequest, token: str | None
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(ca, message, token)
    return caught.value.code(), caught.value.details() or ""


def _verify(chain_pems: list[str]) -> tuple[WorkloadIdentity, x509.Certificate]:
    leaf = x509.load_pem_x509_certificate(chain_pems[0].encode())
    middle = [x509.load_pem_x509_certificate(p.encode()) for p in chain_pems[1:-1]]
    roots = x509.load_pem_x509_certificates(chain_pems[-1].encode())
    now = dt.datetime.now(dt.UTC)
    return verify_workload_chain([leaf, *middle], roots=roots, now=now, trust_domain=TD), leaf


async def test_node_agent_gets_a_certificate_for_a_pod_on_its_node(tmp_path: Path) -> None:
    async with running_ca(tmp_path) as ca:
        csr = PKI.new_csr(SLEEP)
        with capture_logs() as logs:
            chain = await _call(ca, request(csr.csr_pem, ttl=10 * 86400, impersonate=SLEEP), NODE_AGENT_N1)
        assert len(chain) == 2, "self-signed root: leaf + root bundle"
        assert chain[-1].encode() == ca.root_pem
        identity, leaf = _verify(chain)
        assert identity == WorkloadIdentity.parse(SLEEP)
        assert leaf.public_key().public_numbers() == csr.key.public_key().public_numbers()  # type: ignore[union-attr]
        lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
        assert dt.timedelta(hours=23, minutes=58) < lifetime <= dt.timedelta(hours=24), (
            "10 days capped to 24 h"
        )
    audit = [e for e in logs if e["event"] == "ca.decision"]
    assert len(audit) == 1
    assert audit[0]["ca.caller"] == ZTUNNEL_URI
    assert audit[0]["ca.identity"] == SLEEP
    assert audit[0]["ca.decision"] == "allow"


@pytest.mark.parametrize(
    ("impersonate", "reason"),
    [
        (WEB, "no pod with service account default/web on node n1 (it runs on n2)"),
        (GHOST, "unknown service account default/ghost"),
    ],
)
async def test_node_agent_is_denied_pods_not_on_its_node(
    tmp_path: Path, impersonate: str, reason: str
) -> None:
    async with running_ca(tmp_path) as ca:
        with capture_logs() as logs:
            code, details = await _status(
                ca, request(PKI.new_csr(impersonate).csr_pem, impersonate=impersonate), NODE_AGENT_N1
            )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert reason in details
    (audit,) = [e for e in logs if e["event"] == "ca.decision"]
    assert audit["ca.decision"] == "deny"
    assert audit["ca.identity"] == impersonate
    assert reason in audit["ca.reason"]


async def test_workload_gets_its_own_identity_only(tmp_path: Path) -> None:
    async with running_ca(tmp_path) as ca:
        identity, _ = _verify(await _call(ca, request(PKI.new_csr(SLEEP).csr_pem), WORKLOAD_SLEEP))
        assert identity == WorkloadIdentity.parse(SLEEP)
        code, details = await _status(ca, request(PKI.new_csr(WEB).csr_pem, impersonate=WEB), WORKLOAD_SLEEP)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "is not a trusted node agent" in details


BAD_REQUESTS = [
    (
        "garbage csr",
        request("not a csr", impersonate=SLEEP),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "0 PEM",
    ),
    (
        "malformed pem",
        request(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            impersonate=SLEEP,
        ),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "not valid PEM",
    ),
    (
        "two SANs",
        request(PKI.new_csr(uri_sans=[SLEEP, WEB]).csr_pem, impersonate=SLEEP),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "2 SANs",
    ),
    (
        "foreign trust domain in the CSR",
        request(PKI.new_csr("spiffe://evil.local/ns/default/sa/sleep").csr_pem, impersonate=SLEEP),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "trust domain 'evil.local'",
    ),
    (
        "foreign trust domain impersonated",
        request(PKI.new_csr(SLEEP).csr_pem, impersonate="spiffe://evil.local/ns/default/sa/sleep"),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "trust domain 'evil.local'",
    ),
    (
        "CSR for another identity than requested",
        request(PKI.new_csr(ZTUNNEL_URI).csr_pem, impersonate=SLEEP),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "but the request is for",
    ),
    (
        "rsa 1024",
        request(PKI.new_csr(SLEEP, key_type="rsa-1024").csr_pem, impersonate=SLEEP),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "1024-bit RSA",
    ),
    (
        "ttl zero",
        request(PKI.new_csr(SLEEP).csr_pem, ttl=0, impersonate=SLEEP),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "validity_duration is 0",
    ),
    (
        "ttl negative",
        request(PKI.new_csr(SLEEP).csr_pem, ttl=-60, impersonate=SLEEP),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "validity_duration is -60",
    ),
    (
        "bad impersonation id",
        request(PKI.new_csr(SLEEP).csr_pem, impersonate="spiffe://cluster.local/ns/x"),
        NODE_AGENT_N1,
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a SPIFFE workload ID",
    ),
    (
        "no token",
        request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP),
        None,
        grpc.StatusCode.UNAUTHENTICATED,
        "no authorization metadata",
    ),
    (
        "unknown token",
        request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP),
        "tok-nobody",
        grpc.StatusCode.UNAUTHENTICATED,
        "unknown",
    ),
    (
        "expired token",
        request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP),
        EXPIRED,
        grpc.StatusCode.UNAUTHENTICATED,
        "expired",
    ),
]


async def test_bad_requests_get_specific_statuses_and_the_server_stays_up(tmp_path: Path) -> None:
    async with running_ca(tmp_path) as ca:
        for name, message, token, code, fragment in BAD_REQUESTS:
            got, details = await _status(ca, message, token)
            assert (got, fragment in details) == (code, True), f"{name}: {got} {details}"
        identity, _ = _verify(
            await _call(ca, request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP), NODE_AGENT_N1)
        )
        assert identity == WorkloadIdentity.parse(SLEEP)


async def test_garbage_bytes_and_oversized_messages(tmp_path: Path) -> None:
    async with running_ca(tmp_path) as ca, ca.aio_channel() as channel:
        raw = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        cases = [
            (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a valid IstioCertificateRequest"),
            (
                b"\x0a\x05\xff\xfe\xfd\xfc\xfb",
                grpc.StatusCode.INVALID_ARGUMENT,
                "not a valid IstioCertificateRequest",
            ),
            (b"\x0a\x83\x80\x05" + b"A" * 81920, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        ]
        for payload, code, fragment in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw(payload, metadata=bearer(NODE_AGENT_N1), timeout=10)
            assert caught.value.code() == code
            assert fragment in (caught.value.details() or "")
        stub = ca.aio_stub(channel)
        ok = await stub.CreateCertificate(
            request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP), metadata=bearer(NODE_AGENT_N1)
        )
        assert len(ok.cert_chain) == 2


async def test_client_with_another_root_cannot_connect(tmp_path: Path) -> None:
    async with running_ca(tmp_path) as ca:
        creds = grpc.ssl_channel_credentials(root_certificates=TestPki.create().root_pem)
        options = [("grpc.ssl_target_name_override", "istiod.istio-system.svc")]
        async with grpc.aio.secure_channel(ca.address, creds, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ca.aio_stub(channel).CreateCertificate(
                    request("x"), metadata=bearer(NODE_AGENT_N1), timeout=5
                )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plugged_in_cacerts_with_an_intermediate(tmp_path: Path) -> None:
    pki = TestPki.create(trust_domain=TD)
    old_root = TestPki.create(trust_domain=TD)
    inter = pki.issue_intermediate()
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    (cacerts / "ca-cert.pem").write_bytes(inter.cert_pem)
    (cacerts / "ca-key.pem").write_bytes(inter.key_pem)
    (cacerts / "cert-chain.pem").write_bytes(chain_pem([inter.cert, pki.root.cert]))
    (cacerts / "root-cert.pem").write_bytes(chain_pem([pki.root.cert, old_root.root.cert]))
    now = dt.datetime.now(dt.UTC).timestamp()
    authority = load_authority(state_dir=None, cacerts=cacerts, trust_domain=TD, now=now)
    async with running_ca(tmp_path, authority=authority) as ca:
        chain = await _call(ca, request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP), NODE_AGENT_N1)
    assert len(chain) == 3
    assert chain[1].encode() == cert_pem(inter.cert)
    assert chain[2].encode() == chain_pem([pki.root.cert, old_root.root.cert])
    identity, leaf = _verify(chain)
    assert identity == WorkloadIdentity.parse(SLEEP)
    assert leaf.issuer == inter.cert.subject
    with pytest.raises(CertificateRejected) as caught:
        verify_workload_chain([leaf], roots=[pki.root.cert], now=utc(now))
    assert caught.value.reason == Reason.UNTRUSTED_ROOT, "without the intermediate the leaf does not verify"


async def test_restart_reuses_the_root(tmp_path: Path) -> None:
    async with running_ca(tmp_path) as ca:
        first_root = ca.root_pem
        chain = await _call(ca, request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP), NODE_AGENT_N1)
    assert (tmp_path / "ca" / "root-key.pem").stat().st_mode & 0o777 == 0o600
    async with running_ca(tmp_path) as ca:
        assert ca.root_pem == first_root
        again = await _call(ca, request(PKI.new_csr(SLEEP).csr_pem, impersonate=SLEEP), NODE_AGENT_N1)
    assert again[-1] == chain[-1]
    _verify([chain[0], again[-1]])


async def test_readiness(tmp_path: Path) -> None:
    settings = IstiodSettings(listen="127.0.0.1:0", readiness_listen="127.0.0.1:0")
    async with running_ca(tmp_path, settings=settings) as ca:
        for path, status in (("/healthz/ready", b"200"), ("/other", b"404")):
            reader, writer = await asyncio.open_connection("127.0.0.1", ca.istiod.readiness_port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: istiod\r\n\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            assert answer.split(b" ")[1] == status, answer
