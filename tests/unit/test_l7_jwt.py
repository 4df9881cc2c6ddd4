"""mesh.l7.jwt: RequestAuthentication's JWT checks, with tokens signed in the test (PyJWT)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2
from google.protobuf import json_format

from mesh.l7.jwt import JwtConfigError, compile_jwt

NOW = 1_800_000_000.0
ISSUER = "https://issuer.test"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(*keys: Any) -> str:
    out = []
    for i, key in enumerate(keys):
        kind = (
            jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        )
        jwk = json.loads(kind.to_jwk(key.public_key()))
        jwk["kid"] = f"k{i}"
        out.append(jwk)
    return json.dumps({"keys": out})


def token(key: Any = RSA_KEY, *, kid: str = "k0", alg: str = "RS256", **claims: Any) -> str:
    body = {"iss": ISSUER, "sub": "alice", "aud": "app", "exp": NOW + 60, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def config(**provider: Any) -> config_pb2.JwtAuthentication:
    spec = {"issuer": ISSUER, "local_jwks": {"inline_string": jwks(RSA_KEY, EC_KEY)}, **provider}
    return json_format.ParseDict({"providers": {"p": spec}}, config_pb2.JwtAuthentication())


UNSIGNED = jwt.encode({"iss": ISSUER, "sub": "a", "aud": "app"}, "", algorithm="none")
VERIFIER = compile_jwt(
    config(audiences=["app"], claim_to_headers=[{"header_name": "x-sub", "claim_name": "sub"}])
)


def bearer(value: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {value}")]


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ([], "", 0),
        (bearer(token()), "", 200),
        (bearer(token(EC_KEY, kid="k1", alg="ES256")), "", 200),
        ([], f"access_token={token()}", 200),
        (bearer(token(OTHER_KEY)), "", 401),  # signed by a key not in the JWKS
        (bearer(token(iss="https://evil.test")), "", 401),
        (bearer(token(aud="other")), "", 401),
        (bearer(token(exp=NOW - 1)), "", 401),
        (bearer(token(nbf=NOW + 60)), "", 401),
        (bearer("not.a.token"), "", 401),
        (bearer(jwt.encode({"iss": ISSUER, "sub": "a", "aud": "app"}, "s" * 32, algorithm="HS256")), "", 401),
        (bearer(UNSIGNED), "", 401),
        ([("authorization", "Basic dXNlcjpwYXNz")], "", 0),  # not a bearer token: no token
    ],
    ids=[
        "missing",
        "rsa",
        "ec",
        "query",
        "other-key",
        "issuer",
        "audience",
        "expired",
        "not-yet",
        "malformed",
        "hs256-confusion",
        "alg-none",
        "basic",
    ],
)
def test_token_outcomes(headers: list[tuple[str, str]], query: str, status: int) -> None:
    assert VERIFIER.verify(headers, query, now=NOW).status == status


def test_a_valid_token_sets_the_principal_claims_and_headers() -> None:
    outcome = VERIFIER.verify(bearer(token(groups=["admins"])), "", now=NOW)
    assert outcome.metadata["request.auth.principal"] == f"{ISSUER}/alice"
    assert outcome.metadata["request.auth.claims"]["groups"] == ["admins"]
    assert outcome.metadata["request.auth.audiences"] == ["app"]
    assert outcome.add_headers == (("x-sub", "alice"),)
    assert outcome.remove_headers == ("authorization",)  # not forwarded unless forwardOriginalToken


def test_forward_keeps_the_token() -> None:
    verifier = compile_jwt(config(forward=True))
    assert verifier.verify(bearer(token()), "", now=NOW).remove_headers == ()


def test_custom_header_location() -> None:
    verifier = compile_jwt(config(from_headers=[{"name": "X-Jwt", "value_prefix": ""}]))
    assert verifier.verify([("x-jwt", token())], "", now=NOW).status == 200
    assert verifier.verify(bearer(token()), "", now=NOW).status == 0


def test_jwks_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(jwks(RSA_KEY))
    verifier = compile_jwt(config(local_jwks={"filename": str(path)}))
    assert verifier.verify(bearer(token()), "", now=NOW).status == 200


@pytest.mark.parametrize(
    ("provider", "problem"),
    [
        ({"local_jwks": {"inline_string": "{}"}}, "not a usable JWKS"),
        ({"local_jwks": {"filename": "/nonexistent/jwks.json"}}, "cannot read the JWKS"),
        (
            {"local_jwks": None, "remote_jwks": {"http_uri": {"uri": "https://x", "cluster": "c"}}},
            "remote_jwks",
        ),
    ],
)
def test_bad_providers_are_named(provider: dict[str, Any], problem: str) -> None:
    spec = {"issuer": ISSUER, "local_jwks": {"inline_string": jwks(RSA_KEY)}, **provider}
    if provider.get("local_jwks", 1) is None:
        del spec["local_jwks"]
    with pytest.raises(JwtConfigError, match=problem) as info:
        compile_jwt(json_format.ParseDict({"providers": {"p": spec}}, config_pb2.JwtAuthentication()))
    assert "providers[p]" in str(info.value)


def test_a_waypoint_without_token_providers_loads_no_jwt_library() -> None:
    """PyJWT loads cryptography (about 10 MB of the waypoint's RSS budget): only verifying loads it."""
    code = "import sys; import waypoint.app; print('jwt' in sys.modules, 'cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
