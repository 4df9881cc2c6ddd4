"""The shared root in the istio-ca-secret Secret, on an in-memory store: created on a fresh install,
read afterwards, the winner's when another replica created it first, Istio's layout, errors that
name the Secret and the key, retries while the store is unavailable."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from istiod_lite.ca.authority import SigningAuthority, create_root, utc
from istiod_lite.ca.errors import RootOfTrustError
from istiod_lite.ca.secret import (
    CA_SECRET,
    CaSecretUnavailableError,
    authority_from_secret,
    ca_secret,
    load_or_create_ca_secret,
)
from istiod_lite.ca.signing import issue_serving_certificate
from mesh.testing.clock import FakeClock
from mesh.testing.pki import TestPki, cert_pem, generate_key, key_pem

TD = "cluster.local"
NOW = FakeClock().now()
NAME = f"Secret istio-system/{CA_SECRET}"


class MemoryStore:
    """A CaSecretStore in a dict; ``before_create`` runs between a replica's read and its create."""

    namespace = "istio-system"
    name = NAME

    def __init__(self, *, before_create: Callable[[], None] = lambda: None) -> None:
        self.secret: dict[str, Any] | None = None
        self.creates = 0
        self.failures: list[Exception] = []
        self._before_create = before_create

    def read(self) -> Mapping[str, Any] | None:
        if self.failures:
            raise self.failures.pop(0)
        return self.secret

    def create(self, secret: Mapping[str, Any]) -> bool:
        self._before_create()
        if self.secret is not None:
            return False
        self.creates += 1
        self.secret = dict(secret)
        return True


def signs_for(signer: SigningAuthority, verifier: SigningAuthority) -> bool:
    """A certificate ``signer`` issues verifies against ``verifier``'s trust bundle."""
    issued = issue_serving_certificate(
        signer,
        dns_names=("istiod.istio-system.svc",),
        uri="spiffe://x/ns/a/sa/b",
        ttl=dt.timedelta(hours=1),
        now=NOW,
    )
    leaf = x509.load_pem_x509_certificates(issued.chain_pem)[0]
    try:
        leaf.verify_directly_issued_by(verifier.roots[0])
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def test_a_fresh_install_creates_the_secret_in_istios_layout_and_a_restart_reads_it() -> None:
    store = MemoryStore()
    first = load_or_create_ca_secret(store, trust_domain=TD, now=NOW)
    assert first.outcome == "created" and store.creates == 1
    secret = store.secret
    assert secret is not None
    assert (secret["metadata"], secret["type"]) == (
        {"name": CA_SECRET, "namespace": "istio-system"},
        "istio.io/ca-root",
    )
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert set(data) == {"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "key.pem", "root-cert.pem"}
    assert data["ca-cert.pem"] == data["root-cert.pem"] == cert_pem(first.authority.cert)
    assert data["cert-chain.pem"] == data["key.pem"] == b""
    again = load_or_create_ca_secret(store, trust_domain=TD, now=NOW + 86400)
    assert again.outcome == "loaded" and store.creates == 1
    assert again.authority.cert == first.authority.cert
    assert signs_for(again.authority, first.authority)


def test_the_replica_that_loses_the_race_uses_the_winners_root() -> None:
    winner = create_root(trust_domain=TD, now=NOW)
    store = MemoryStore()
    # the other replica creates the Secret after our read found none, before our create
    store._before_create = lambda: setattr(
        store, "secret", store.secret or ca_secret(winner, namespace="istio-system")
    )
    loser = load_or_create_ca_secret(store, trust_domain=TD, now=NOW)
    assert loser.outcome == "loaded" and store.creates == 0
    assert loser.authority.cert == winner.cert
    assert signs_for(loser.authority, winner) and signs_for(winner, loser.authority)


def test_an_unavailable_store_is_tried_again_then_given_up_on() -> None:
    store = MemoryStore()
    store.failures = [CaSecretUnavailableError("API down"), CaSecretUnavailableError("API down")]
    slept: list[float] = []
    shared = load_or_create_ca_secret(store, trust_domain=TD, now=NOW, sleep=slept.append)
    assert shared.outcome == "created" and slept == [0.5, 1.0]
    store = MemoryStore()
    store.failures = [CaSecretUnavailableError("API down")] * 20
    slept = []
    with pytest.raises(CaSecretUnavailableError):
        load_or_create_ca_secret(store, trust_domain=TD, now=NOW, retry_for=10, sleep=slept.append)
    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0] and store.creates == 0
    store = MemoryStore()
    store.failures = [RootOfTrustError("may not read the Secret (HTTP 403)")]
    with pytest.raises(RootOfTrustError, match="403"):  # not worth retrying: fails at once
        load_or_create_ca_secret(store, trust_domain=TD, now=NOW, sleep=slept.append)


def _secret(**data: bytes) -> dict[str, Any]:
    return {"data": {key.replace("_", "-") + ".pem": base64.b64encode(v).decode() for key, v in data.items()}}


ROOT = TestPki.create(now=utc(NOW)).root
BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("no key", _secret(ca_cert=cert_pem(ROOT.cert)), f"{NAME} lacks ca-key.pem"),
    ("empty", {"data": {}}, f"{NAME} lacks ca-cert.pem, ca-key.pem"),
    (
        "not base64",
        {"data": {"ca-cert.pem": "!!", "ca-key.pem": "!!"}},
        f"{NAME}, key ca-cert.pem is not base64",
    ),
    (
        "garbage cert",
        _secret(ca_cert=b"nope", ca_key=ROOT.key_pem),
        f"{NAME}, key ca-cert.pem holds no readable PEM",
    ),
    (
        "a key of another root",
        _secret(ca_cert=cert_pem(ROOT.cert), ca_key=key_pem(generate_key())),
        "does not belong to the CA certificate",
    ),
    ("data not a mapping", {"data": ["x"]}, f"{NAME} has no data mapping"),
]


@pytest.mark.parametrize(("name", "secret", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_an_unusable_secret_fails_the_start_naming_the_secret_and_key(
    name: str, secret: dict[str, Any], message: str
) -> None:
    store = MemoryStore()
    store.secret = secret
    with pytest.raises(RootOfTrustError) as caught:
        load_or_create_ca_secret(store, trust_domain=TD, now=NOW)
    assert message in str(caught.value), f"{name}: {caught.value}"
    assert store.secret is secret and store.creates == 0  # never a second root beside it


def test_a_secret_written_by_hand_with_string_data_and_no_root_entry() -> None:
    plain = {"stringData": {"ca-cert.pem": cert_pem(ROOT.cert).decode(), "ca-key.pem": ROOT.key_pem.decode()}}
    authority = authority_from_secret(plain, name=NAME, now=NOW)
    assert authority.cert == ROOT.cert and authority.roots == (ROOT.cert,)
