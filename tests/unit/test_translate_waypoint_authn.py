"""RequestAuthentication with targetRefs -> the waypoint's JWT providers, then the whole step the
waypoint runs before routing (waypoint.authz): 401 for a bad token, 403 for a missing one where a
policy requires a request principal, and the request going on (token header dropped, claim header
added) for a good one. Tokens are signed in the test."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from istiod_lite.validation import validate_mesh_object
from mesh.http1 import Message
from mesh.l7.router import compile_routes
from tests.unit.l7_world import REVIEWS, Obj, problems_text, translate
from tests.unit.test_translate_waypoint_authz import policy
from waypoint.authz import authorize

ISSUER = "https://issuer.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps(
    {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "k"}]}
)


def request_authentication(name: str, rules: list[Obj], *, target: str = "reviews") -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": target}], "jwtRules": rules},
    }


RULE = {"issuer": ISSUER, "jwks": JWKS, "audiences": ["reviews"],
        "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}]}  # fmt: skip
AUTHN = request_authentication("jwt", [RULE])
REQUIRE = policy("require-jwt", "ALLOW", [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}]}])


def token(key: Any = KEY, **claims: Any) -> str:
    """A signed token; valid for an hour, as the parameters below are made when the suite is collected
    and the full suite runs for many minutes before they are used."""
    body = {"iss": ISSUER, "sub": "alice", "aud": "reviews", "exp": time.time() + 3600, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k"})


def run(objects: list[Obj], headers: list[tuple[str, str]], target: str = "/") -> tuple[int, Message]:
    config = translate(*objects)
    assert config.route_configuration is not None
    router = compile_routes(config.route_configuration)
    request = Message(method="GET", target=target, headers=[("host", "reviews:9080"), *headers])
    refusal = authorize(router, request, vhost_authority=f"{REVIEWS}:9080", source_principal="",
                        source_addr="10.244.1.5", now=time.time())  # fmt: skip
    return (refusal.status if refusal else 200), request


@pytest.mark.parametrize(
    ("objects", "headers", "target", "status"),
    [
        ([AUTHN, REQUIRE], [], "/", 403),
        ([AUTHN, REQUIRE], [], "/protected?x", 403),
        ([AUTHN, REQUIRE], [("authorization", "Bearer garbage")], "/", 401),
        ([AUTHN, REQUIRE], [("authorization", f"Bearer {token(OTHER)}")], "/", 401),
        ([AUTHN, REQUIRE], [("authorization", f"Bearer {token(aud='other')}")], "/", 401),
        ([AUTHN, REQUIRE], [("authorization", f"Bearer {token(exp=time.time() - 5)}")], "/", 401),
        ([AUTHN, REQUIRE], [("authorization", f"Bearer {token()}")], "/", 200),
        ([AUTHN, REQUIRE], [], f"/?access_token={token()}", 200),
        ([AUTHN], [], "/", 200),  # no policy requires a principal: a missing token passes
        ([AUTHN], [("authorization", "Bearer garbage")], "/", 401),  # a bad one never does
        ([REQUIRE], [("authorization", f"Bearer {token()}")], "/", 403),  # no provider: not verified
    ],
    ids=[
        "missing",
        "missing-query",
        "garbage",
        "other-key",
        "audience",
        "expired",
        "good",
        "good-param",
        "missing-no-policy",
        "garbage-no-policy",
        "no-provider",
    ],
)
def test_jwt_outcomes(objects: list[Obj], headers: list[tuple[str, str]], target: str, status: int) -> None:
    assert run(objects, headers, target)[0] == status


def test_a_good_token_is_dropped_and_its_claim_forwarded() -> None:
    status, request = run([AUTHN, REQUIRE], [("authorization", f"Bearer {token()}"), ("x-jwt-sub", "forged")])
    assert status == 200
    assert request.header("authorization") is None
    assert request.values("x-jwt-sub") == ("alice",)


def test_forward_original_token_keeps_it() -> None:
    authn = request_authentication("jwt", [{**RULE, "forwardOriginalToken": True}])
    good = token()
    _, request = run([authn], [("authorization", f"Bearer {good}")])
    assert request.header("authorization") == f"Bearer {good}"


def test_jwks_from_a_local_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(JWKS)
    authn = request_authentication("jwt", [{"issuer": ISSUER, "jwksUri": f"file://{path}"}])
    assert run([authn, REQUIRE], [("authorization", f"Bearer {token()}")])[0] == 200


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"jwks": JWKS}, "spec.jwtRules[0].issuer"),
        ({"issuer": ISSUER, "jwksUri": "https://issuer.test/jwks"}, "spec.jwtRules[0].jwksUri"),
        (
            {"issuer": ISSUER, "jwks": JWKS, "forwardOriginalToken": "yes"},
            "spec.jwtRules[0].forwardOriginalToken",
        ),
    ],
)
def test_unreadable_rules_are_reported_and_accept_nothing(rule: Obj, field: str) -> None:
    authn = request_authentication("bad", [rule])
    assert any(field in text for text in problems_text(translate(authn)))
    assert run([authn, REQUIRE], [("authorization", f"Bearer {token()}")])[0] == 403


def test_validation_names_the_bad_rule() -> None:
    bad = request_authentication("bad", [RULE, {"issuer": ISSUER, "jwksUri": "https://x/jwks"}])
    assert [e.field for e in validate_mesh_object(bad)] == ["spec.jwtRules[1].jwksUri"]
    assert validate_mesh_object(AUTHN) == []
