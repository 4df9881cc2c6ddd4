"""The CA Secret on Kubernetes: two replicas starting on a fresh install race to create
istio-system/istio-ca-secret and end up signing with the one root (the loser's create answers 409
and it reads the winner's); an existing Secret is used as it is; a plugged-in cacerts directory
takes precedence and no Secret is touched; a Secret the Role does not let istiod read fails the
start with the RBAC hint; an API server that cannot be reached is tried again. The API server is
``kmock``, a test double of the Kubernetes API server (create answers 409 on an existing object, as
the real one)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client

from istiod_lite.app import load_authority
from istiod_lite.ca.authority import create_root, utc
from istiod_lite.ca.errors import RootOfTrustError
from istiod_lite.ca.kube_secret import KubeCaSecretStore
from istiod_lite.ca.secret import (
    CA_SECRET,
    CaSecretUnavailableError,
    SharedRoot,
    ca_secret,
    load_or_create_ca_secret,
)
from mesh.testing.clock import FakeClock
from mesh.testing.pki import TestPki, cert_pem, chain_pem
from tests.unit.test_ca_secret import signs_for

pytestmark = [pytest.mark.kmock(cls=kmock.KubernetesEmulator), pytest.mark.timeout(30)]

SECRETS = "v1/secrets"
TD = "cluster.local"
NOW = FakeClock().now()


@pytest.fixture
def server(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    kmock.resources[SECRETS] = kmock.ResourceInfo(kind="Secret", namespaced=True)
    return kmock


@pytest.fixture
def apis(server: kmock.KubernetesEmulator) -> Iterator[list[client.ApiClient]]:
    made = [client.ApiClient(client.Configuration(host=str(server.url).rstrip("/"))) for _ in range(2)]
    yield made
    for api in made:
        api.close()  # type: ignore[no-untyped-call]


class RacingStore(KubeCaSecretStore):
    """Both replicas read (and find nothing) before either creates: the race, every time."""

    def __init__(self, api: client.ApiClient, barrier: threading.Barrier) -> None:
        super().__init__(api, namespace="istio-system")
        self._barrier = barrier

    def read(self) -> Mapping[str, Any] | None:
        found = super().read()
        if found is None:
            self._barrier.wait(timeout=10)
        return found


def secret_requests(server: kmock.KubernetesEmulator) -> list[str]:
    return [str(r.method.value) for r in server if "/secrets" in r.url.path]


async def test_two_replicas_on_a_fresh_install_create_one_secret_and_share_its_root(
    server: kmock.KubernetesEmulator, apis: list[client.ApiClient]
) -> None:
    barrier = threading.Barrier(2)

    def start(api: client.ApiClient) -> SharedRoot:
        return load_or_create_ca_secret(RacingStore(api, barrier), trust_domain=TD, now=NOW)

    a, b = await asyncio.gather(*(asyncio.to_thread(start, api) for api in apis))
    assert sorted([a.outcome, b.outcome]) == ["created", "loaded"]
    assert secret_requests(server).count("POST") == 2  # both tried; the API server took one
    stored = [key for key in server.objects if key[0] == SECRETS]
    assert [(ns, name) for _, ns, name in stored] == [("istio-system", CA_SECRET)]
    assert a.authority.cert == b.authority.cert
    assert signs_for(a.authority, b.authority) and signs_for(b.authority, a.authority)
    # a restarted replica (a new pod: empty state) reads the same root
    store = KubeCaSecretStore(apis[0], namespace="istio-system")
    again = await asyncio.to_thread(load_or_create_ca_secret, store, trust_domain=TD, now=NOW)
    assert again.outcome == "loaded" and again.authority.cert == a.authority.cert


async def test_an_existing_secret_is_used(
    server: kmock.KubernetesEmulator, apis: list[client.ApiClient]
) -> None:
    existing = create_root(trust_domain=TD, now=NOW)
    server.objects[SECRETS, "istio-system", CA_SECRET] = ca_secret(existing, namespace="istio-system")
    store = KubeCaSecretStore(apis[0], namespace="istio-system")
    authority = await asyncio.to_thread(
        lambda: load_authority(state_dir=None, cacerts=None, trust_domain=TD, now=NOW, secret=store)
    )
    assert authority.cert == existing.cert and signs_for(authority, existing)
    assert secret_requests(server) == ["GET"]


async def test_a_plugged_in_cacerts_wins_and_the_secret_is_not_touched(
    server: kmock.KubernetesEmulator, apis: list[client.ApiClient], tmp_path: Path
) -> None:
    pki = TestPki.create(now=utc(NOW))
    inter = pki.issue_intermediate()
    files = {
        "ca-cert.pem": cert_pem(inter.cert),
        "ca-key.pem": inter.key_pem,
        "cert-chain.pem": chain_pem([inter.cert]),
        "root-cert.pem": chain_pem([pki.root.cert]),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    server.objects[SECRETS, "istio-system", CA_SECRET] = ca_secret(
        create_root(trust_domain=TD, now=NOW), namespace="istio-system"
    )
    store = KubeCaSecretStore(apis[0], namespace="istio-system")
    authority = await asyncio.to_thread(
        lambda: load_authority(state_dir=None, cacerts=tmp_path, trust_domain=TD, now=NOW, secret=store)
    )
    assert authority.cert == inter.cert and authority.roots == (pki.root.cert,)
    assert secret_requests(server) == []


async def test_a_secret_istiod_may_not_read_fails_with_the_rbac_hint(
    server: kmock.KubernetesEmulator, apis: list[client.ApiClient]
) -> None:
    forbidden = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "secrets is forbidden"}
    server[f"/api/v1/namespaces/istio-system/secrets/{CA_SECRET}"] << 403 << forbidden
    store = KubeCaSecretStore(apis[0], namespace="istio-system")
    with pytest.raises(RootOfTrustError) as caught:
        await asyncio.to_thread(load_or_create_ca_secret, store, trust_domain=TD, now=NOW)
    assert "may not read Secret istio-system/istio-ca-secret (HTTP 403" in str(caught.value)
    assert "must grant get and create on secrets" in (caught.value.hint or "")


def test_an_api_server_that_cannot_be_reached_is_worth_trying_again(unused_tcp_port: int) -> None:
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{unused_tcp_port}"))
    try:
        with pytest.raises(CaSecretUnavailableError, match="cannot reach the Kubernetes API"):
            KubeCaSecretStore(api, namespace="istio-system").read()
    finally:
        api.close()  # type: ignore[no-untyped-call]
