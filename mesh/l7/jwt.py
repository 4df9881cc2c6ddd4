"""Request authentication with JWTs, with the semantics of Envoy's ``jwt_authn`` filter as Istio
configures it from RequestAuthentication (compiled from ``envoy.extensions.filters.http.jwt_authn.v3
.JwtAuthentication``; signatures checked by PyJWT, never by hand).

- The token is looked for in each provider's ``from_headers`` (default ``Authorization: Bearer``)
  and ``from_params`` (default ``access_token``, as Istio's default).
- No token: the request passes unauthenticated (Istio's ``allow_missing``); a policy that requires
  ``requestPrincipals`` then denies it (403).
- A token that no provider accepts (unknown issuer, bad signature, wrong audience, expired, not yet
  valid, malformed): 401 ``Jwt verification fails``.
- A valid token: the ``istio_authn`` metadata policy reads (``request.auth.principal`` =
  ``iss/sub``, ``request.auth.audiences``, ``request.auth.presenter``, ``request.auth.claims``),
  the token header removed unless ``forward``, and the ``claim_to_headers`` added.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2

from mesh.errors import ConfigError

if TYPE_CHECKING:
    import jwt  # at run time imported where a token or a JWKS is read: PyJWT loads cryptography (MBs)

__all__ = ["JWT_FILTER", "JwtConfigError", "JwtOutcome", "JwtVerifier", "compile_jwt"]

JWT_FILTER = "envoy.filters.http.jwt_authn"
"""The key of a virtual host's ``JwtAuthentication`` in its ``typed_per_filter_config``."""

_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Asymmetric algorithms only: a shared-secret (HS*) or ``none`` token is never accepted."""


class JwtConfigError(ConfigError):
    """A JwtAuthentication this engine cannot apply; names the provider and field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(
            f"{where}: {problem}", hint="fix the RequestAuthentication; the last good config stays"
        )


@dataclass(frozen=True, slots=True)
class JwtOutcome:
    """``status``: 0 (no token: passes), 200 (verified) or 401 (rejected, with ``reason``)."""

    status: int
    reason: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class _Provider:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    keys: tuple[jwt.PyJWK, ...]
    forward: bool
    headers: tuple[tuple[str, str], ...]
    params: tuple[str, ...]
    claim_to_headers: tuple[tuple[str, str], ...]


class JwtVerifier:
    """Verifies the JWT of a request against the compiled providers (empty: nothing to do)."""

    def __init__(self, providers: Sequence[_Provider]) -> None:
        self._providers = tuple(providers)

    def __bool__(self) -> bool:
        return bool(self._providers)

    def verify(self, headers: Sequence[tuple[str, str]], query: str, *, now: float) -> JwtOutcome:
        """The outcome for a request's ``headers`` and raw ``query`` at time ``now`` (seconds)."""
        found = [(p, token, header) for p in self._providers for token, header in _tokens(p, headers, query)]
        if not found:
            return JwtOutcome(0)
        for provider, token, header in found:
            claims = _verified(provider, token, now)
            if claims is not None:
                return _accepted(provider, claims, header)
        return JwtOutcome(401, "Jwt verification fails")


def _tokens(provider: _Provider, headers: Sequence[tuple[str, str]], query: str) -> list[tuple[str, str]]:
    out = []
    for name, prefix in provider.headers:
        for key, value in headers:
            if key.lower() == name and value.startswith(prefix) and value[len(prefix) :].strip():
                out.append((value[len(prefix) :].strip(), name))
    params = parse_qsl(query, keep_blank_values=False)
    out += [(value, "") for key, value in params if key in provider.params]
    return out


def _verified(provider: _Provider, token: str, now: float) -> dict[str, Any] | None:
    import jwt  # noqa: PLC0415 - only in a waypoint that verifies tokens (see the import above)

    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    if provider.issuer and unverified.get("iss") != provider.issuer:
        return None
    algorithm = header.get("alg")
    if algorithm not in _ALGORITHMS:
        return None
    keys = [k for k in provider.keys if not header.get("kid") or k.key_id in (None, header.get("kid"))]
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[algorithm], options={"verify_exp": False, "verify_nbf": False,
                "verify_iat": False, "verify_aud": False},
            )  # fmt: skip
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        if _timely(claims, now) and _audience_ok(provider, claims):
            return claims
    return None


def _timely(claims: Mapping[str, Any], now: float) -> bool:
    expires, not_before = claims.get("exp"), claims.get("nbf")
    if expires is not None and (not isinstance(expires, (int, float)) or now >= expires):
        return False
    return not_before is None or (isinstance(not_before, (int, float)) and now >= not_before)


def _audience_ok(provider: _Provider, claims: Mapping[str, Any]) -> bool:
    if not provider.audiences:
        return True
    audience = claims.get("aud")
    given = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    return any(a in provider.audiences for a in given)


def _accepted(provider: _Provider, claims: dict[str, Any], header: str) -> JwtOutcome:
    audience = claims.get("aud")
    metadata = {
        "request.auth.principal": f"{claims.get('iss', '')}/{claims.get('sub', '')}",
        "request.auth.audiences": [audience] if isinstance(audience, str) else list(audience or []),
        "request.auth.presenter": str(claims.get("azp", "")),
        "request.auth.claims": {
            k: v if isinstance(v, (str, list)) else json.dumps(v) for k, v in claims.items()
        },
    }
    added = tuple(
        (name, str(claims[claim])) for name, claim in provider.claim_to_headers
        if isinstance(claims.get(claim), (str, int, float, bool))
    )  # fmt: skip
    removed = (header,) if header and not provider.forward else ()
    return JwtOutcome(200, metadata=metadata, remove_headers=removed, add_headers=added)


def compile_jwt(config: config_pb2.JwtAuthentication) -> JwtVerifier:
    """Compiles the providers of ``config`` (local JWKS, inline or from a file);
    raises JwtConfigError naming what it cannot apply."""
    providers = []
    for name in sorted(config.providers):
        p = config.providers[name]
        where = f"providers[{name}]"
        if not p.HasField("local_jwks"):
            raise JwtConfigError(where, "only local_jwks (inline or a file) is supported, not remote_jwks")
        keys = _keys(p.local_jwks, where)
        headers = tuple((h.name.lower(), h.value_prefix) for h in p.from_headers)
        params = tuple(p.from_params)
        if not headers and not params:
            headers, params = (("authorization", "Bearer "),), ("access_token",)
        claims = tuple((c.header_name.lower(), c.claim_name) for c in p.claim_to_headers)
        providers.append(
            _Provider(name, p.issuer, tuple(p.audiences), keys, p.forward, headers, params, claims)
        )
    return JwtVerifier(providers)


def _keys(source: Any, where: str) -> tuple[jwt.PyJWK, ...]:
    import jwt  # noqa: PLC0415 - only in a waypoint that verifies tokens (see the import above)

    kind = source.WhichOneof("specifier")
    try:
        if kind == "inline_string":
            text = source.inline_string
        elif kind == "filename":
            text = Path(source.filename).read_text()
        else:
            raise JwtConfigError(
                f"{where}.local_jwks", f"{kind!r} is not supported (inline_string or filename)"
            )
        keys = jwt.PyJWKSet.from_json(text).keys
    except OSError as exc:
        raise JwtConfigError(f"{where}.local_jwks", f"cannot read the JWKS: {exc.strerror}") from None
    except (jwt.PyJWTError, ValueError) as exc:
        raise JwtConfigError(f"{where}.local_jwks", f"not a usable JWKS ({exc})") from None
    return tuple(keys)
