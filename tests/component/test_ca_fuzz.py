"""Fuzzing CreateCertificate over real gRPC/TLS (catalogue test 26, CVE-2022-23635 class).

Random bytes go to the raw method, and random field values (CSR text, mutated CSRs, TTLs,
metadata) to the typed one. Every answer must be a deliberate status (never INTERNAL/UNKNOWN),
any success must be for an identity the caller may have, and afterwards a valid request still
succeeds: the server stayed up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.api.istio.v1.auth import ca_pb2
from mesh.identity import identity_from_certificate
from mesh.testing import ca_pb2_grpc
from mesh.testing.pki import TestPki
from tests.component.ca_support import METHOD, NODE_AGENT_N1, CaInThread, TestCa, request

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
ALLOWED_FOR_N1 = {SLEEP, "spiffe://cluster.local/ns/istio-system/sa/ztunnel"}
DELIBERATE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
PKI = TestPki.create()
VALID_CSR = PKI.new_csr(SLEEP).csr_pem.decode()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCa]:
    with CaInThread(tmp_path_factory.mktemp("ca")) as running:
        yield running


@pytest.fixture(scope="module")
def channel(ca: TestCa) -> Iterator[grpc.Channel]:
    with ca.sync_channel() as chan:
        yield chan


def _outcome(call: Callable[[], object]) -> grpc.StatusCode:
    """The status of a finished call (OK or the error's code)."""
    try:
        call()
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        assert code in DELIBERATE, f"undeliberate status {code}: {err.details()}"
        return code
    return grpc.StatusCode.OK


def _md(token: str) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {token}"),)


def _assert_still_serves(channel: grpc.Channel) -> None:
    stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
    response = stub.CreateCertificate(
        request(VALID_CSR, impersonate=SLEEP), metadata=_md(NODE_AGENT_N1), timeout=10
    )
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    assert identity_from_certificate(leaf).uri == SLEEP


def test_random_bytes_to_the_raw_method(channel: grpc.Channel) -> None:
    raw = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    @FUZZ
    @given(payload=st.binary(max_size=4096))
    def fuzz(payload: bytes) -> None:
        code = _outcome(lambda: raw(payload, metadata=_md(NODE_AGENT_N1), timeout=10))
        assert code != grpc.StatusCode.OK

    fuzz()
    _assert_still_serves(channel)


def _mutate(text: str, data: st.DataObject) -> str:
    position = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.text(max_size=3))
    return text[:position] + replacement + text[position + 1 :]


_METADATA_VALUES = st.one_of(
    st.text(max_size=200),
    st.sampled_from([SLEEP, "spiffe://cluster.local/ns/default/sa/web", "spiffe://evil.local/ns/a/sa/b", ""]),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)


def test_random_field_values(channel: grpc.Channel) -> None:
    stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)

    @FUZZ
    @given(
        data=st.data(),
        ttl=st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 1, 86400, 2**63 - 1])),
        csr_kind=st.sampled_from(["valid", "mutated", "text"]),
        metadata=st.dictionaries(
            st.sampled_from(["ImpersonatedIdentity", "other", ""]), _METADATA_VALUES, max_size=2
        ),
    )
    def fuzz(data: st.DataObject, ttl: int, csr_kind: str, metadata: dict[str, Any]) -> None:
        csr = {
            "valid": VALID_CSR,
            "mutated": _mutate(VALID_CSR, data),
            "text": data.draw(st.text(max_size=500)),
        }
        message = ca_pb2.IstioCertificateRequest(csr=csr[csr_kind], validity_duration=ttl)
        if metadata:
            struct = struct_pb2.Struct()
            struct.update(metadata)
            message.metadata.CopyFrom(struct)
        responses: list[ca_pb2.IstioCertificateResponse] = []
        code = _outcome(
            lambda: responses.append(stub.CreateCertificate(message, metadata=_md(NODE_AGENT_N1)))
        )
        if code == grpc.StatusCode.OK:
            leaf = x509.load_pem_x509_certificate(responses[0].cert_chain[0].encode())
            assert identity_from_certificate(leaf).uri in ALLOWED_FOR_N1, (
                "issued only what n1's agent may have"
            )

    fuzz()
    _assert_still_serves(channel)


def test_random_tokens_are_unauthenticated(channel: grpc.Channel) -> None:
    stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
    printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)

    @FUZZ
    @given(token=st.text(alphabet=printable, min_size=1, max_size=300))
    def fuzz(token: str) -> None:
        code = _outcome(
            lambda: stub.CreateCertificate(request(VALID_CSR, impersonate=SLEEP), metadata=_md(token))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED

    fuzz()
    _assert_still_serves(channel)
