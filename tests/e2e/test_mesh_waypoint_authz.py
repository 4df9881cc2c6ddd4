"""L7 authorization in the lab's waypoint (issue 18): real clients (curl in enrolled pods, their
identities from the mesh) -> ztunnel -> waypoint -> httpecho. A DENY of ``/admin`` holds against the
bypass forms Istio's default normalization (BASE) resolves and lets what it keeps apart through, as
Istio does; a principal-scoped ALLOW admits one client and answers 403 to another; a JWT-required
Service answers 401/403/200 for bad, missing and good tokens (signed in the test). A second lab
with meshConfig.pathNormalization DECODE_AND_MERGE_SLASHES also denies the slash forms (``//admin``,
``%2F``, ``%5C``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.testkit import SystemSnapshot, unique_lab_id
from tests.e2e.conftest import CLIENT_NODE, SERVER_NODE, MeshLab
from tests.e2e.waypoint_lab import enrolled_namespace_with_waypoint, wait_on_waypoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NS = "authz"
ISSUER = "https://issuer.e2e.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps(
    {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "e2e"}]}
)


def service(name: str) -> dict[str, Any]:
    svc = b.service(name, NS, selector={"app": "echo"}, port=80, target_port=8080)
    svc["metadata"]["labels"] = {"istio.io/use-waypoint": "waypoint"}
    return svc


def policy(name: str, target: str, action: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": target}], "action": action,
                 "rules": rules},
    }  # fmt: skip


def objects() -> list[dict[str, Any]]:
    accounts = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NS}}
        for sa in ("good", "other", "echo")
    ]
    return [
        *enrolled_namespace_with_waypoint(NS),
        *accounts,
        b.httpecho_deployment("echo", NS, labels={"app": "echo"}, node=SERVER_NODE),
        b.deployment("good", NS, command=b.SLEEPER, node=CLIENT_NODE, service_account="good"),
        b.deployment("other", NS, command=b.SLEEPER, node=CLIENT_NODE, service_account="other"),
        service("admin-app"),
        service("private-app"),
        service("jwt-app"),
        policy("deny-admin", "admin-app", "DENY",
               [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]),
        policy("only-good", "private-app", "ALLOW",
               [{"from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/good"]}}]}]),
        policy("require-jwt", "jwt-app", "ALLOW",
               [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}]}]),
        {
            "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": "jwt", "namespace": NS},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "jwt-app"}],
                     "jwtRules": [{"issuer": ISSUER, "jwks": JWKS}]},
        },
    ]  # fmt: skip


def status(mesh: MeshLab, client: str, url: str, *headers: str) -> int:
    """The status of one request from ``client`` (curl keeps the path as written: --path-as-is)."""
    extra = [arg for header in headers for arg in ("-H", header)]
    done = mesh.exec(f"{NS}/{client}", "curl", "-sS", "-m", "5", "--path-as-is", "-o", "/dev/null",
                     "-w", "%{http_code}", *extra, url, timeout=30)  # fmt: skip
    return int(done.stdout or 0)


def body(mesh: MeshLab, client: str, url: str) -> dict[str, Any]:
    done = mesh.exec(f"{NS}/{client}", "curl", "-sS", "-m", "5", "--path-as-is", url, timeout=30)
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def token(**claims: Any) -> str:
    payload = {"iss": ISSUER, "sub": "alice", "exp": time.time() + 600, **claims}
    return jwt.encode(payload, KEY, algorithm="RS256", headers={"kid": "e2e"})


def in_force(mesh: MeshLab) -> None:
    """Until the Services go through the waypoint and its DENY policy answers."""
    mesh.lab.wait_ready(timeout=90)
    wait_on_waypoint(mesh, "admin-app", "private-app", "jwt-app", timeout=90)
    mesh.wait_for(lambda: status(mesh, "good", "http://admin-app/admin") == 403 or None,
                  what="the DENY policy in force in the waypoint", timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def lab(mesh: MeshLab) -> Iterator[MeshLab]:
    applied = objects()
    mesh.lab.apply(applied)
    try:
        in_force(mesh)
        yield mesh
    finally:
        mesh.lab.delete(list(reversed(applied)))


@pytest.fixture(scope="module")
def decoding_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    """A lab of its own whose waypoints decode %2F/%5C and merge slashes (meshConfig)."""
    lab_id = unique_lab_id("az")
    before = SystemSnapshot.take(lab_id)
    lab = Lab(Path(tmp_path_factory.mktemp("authz-decode")), lab_id=lab_id)
    try:
        lab.up(objects(), mesh=True, path_normalization="DECODE_AND_MERGE_SLASHES", timeout=90)
        mesh = MeshLab(lab)
        in_force(mesh)
        yield mesh
    finally:
        lab.down()
        assert SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id) == []


DENIED = [
    "/admin", "/admin/", "/admin/users", "/public/../admin", "/public/./../admin", "/%61dmin",
    "/%61dmin/x", "/admin?x=1", "/public/%2e%2e/admin", "/public\\..\\admin",
]  # fmt: skip
ALLOWED_BASE = ["/administrator", "/public", "//admin", "/admin%2Fx", "/Admin"]
"""What BASE (Istio's default) keeps apart from /admin: Istio lets these through as well."""


@pytest.mark.parametrize("path", DENIED)
def test_deny_admin_holds_against_bypass_forms(lab: MeshLab, path: str) -> None:
    assert status(lab, "good", f"http://admin-app{path}") == 403


@pytest.mark.parametrize("path", ALLOWED_BASE)
def test_what_base_normalization_keeps_apart_passes(lab: MeshLab, path: str) -> None:
    assert status(lab, "good", f"http://admin-app{path}") == 200


def test_the_backend_gets_the_normalized_path(lab: MeshLab) -> None:
    assert body(lab, "good", "http://admin-app/public/./x/../page?q=1")["path"] == "/public/page"


def test_a_principal_scoped_allow(lab: MeshLab) -> None:
    assert status(lab, "good", "http://private-app/") == 200
    assert status(lab, "other", "http://private-app/") == 403


def test_jwt_required(lab: MeshLab) -> None:
    assert status(lab, "good", "http://jwt-app/") == 403  # missing
    assert status(lab, "good", "http://jwt-app/", "Authorization: Bearer not-a-token") == 401
    assert (
        status(lab, "good", "http://jwt-app/", f"Authorization: Bearer {token(exp=time.time() - 60)}") == 401
    )
    assert status(lab, "good", "http://jwt-app/", f"Authorization: Bearer {token()}") == 200


DENIED_DECODED = ["//admin", "///admin/x", "/admin%2Fx", "/admin%2fx", "/x%2F..%2Fadmin", "/x%5C..%5Cadmin"]


@pytest.mark.parametrize("path", DENIED_DECODED)
def test_decode_and_merge_slashes_denies_the_slash_forms(decoding_lab: MeshLab, path: str) -> None:
    assert status(decoding_lab, "good", f"http://admin-app{path}") == 403


def test_decode_and_merge_slashes_still_lets_the_rest_through(decoding_lab: MeshLab) -> None:
    assert status(decoding_lab, "good", "http://admin-app/administrator") == 200
    assert body(decoding_lab, "good", "http://admin-app//public%2Fpage")["path"] == "/public/page"
