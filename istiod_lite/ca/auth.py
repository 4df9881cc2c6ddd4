"""Who is calling: pluggable caller authentication, and the lab's per-node bootstrap tokens.

The credential travels as gRPC metadata ``authorization: Bearer <token>``. An Authenticator turns
the token into a :class:`Caller` (its workload identity, and the node it runs on when known) or
raises UnauthenticatedError.

Lab token file (YAML or JSON), a mapping token -> entry::

    tok-n1: {node: n1, identity: istio-system/ztunnel}
    tok-app: {identity: "spiffe://cluster.local/ns/default/sa/app", expires: 1900000000}

``identity`` is ``<namespace>/<service-account>`` (in the CA's trust domain) or a full SPIFFE ID;
``node`` and ``expires`` (epoch seconds) are optional.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from istiod_lite.ca.errors import UnauthenticatedError
from mesh.clock import Clock
from mesh.errors import ConfigError
from mesh.identity import IdentityError, WorkloadIdentity

__all__ = [
    "Authenticator",
    "Caller",
    "LabTokenAuthenticator",
    "bearer_token",
    "load_lab_tokens",
    "parse_identity",
]

_MAX_TOKEN_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its identity, and its node and pod when the credential says so."""

    identity: WorkloadIdentity
    node: str | None = None
    pod: str | None = None


class Authenticator(Protocol):
    """Checks a bearer token and says who holds it."""

    async def authenticate(self, token: str) -> Caller:
        """The caller holding ``token``; raises UnauthenticatedError (or AuthenticatorUnavailableError)."""
        ...


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The token from ``authorization: Bearer <token>``; UnauthenticatedError when absent or malformed."""
    values = [v for k, v in metadata if k.lower() == "authorization"]
    if not values:
        raise UnauthenticatedError(
            "the call carries no authorization metadata", hint="send 'authorization: Bearer <token>'"
        )
    if len(values) > 1:
        raise UnauthenticatedError("the call carries several authorization headers", hint="send exactly one")
    value = values[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    scheme, _, token = text.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthenticatedError("the authorization metadata is not 'Bearer <token>'")
    if len(token) > _MAX_TOKEN_BYTES:
        raise UnauthenticatedError(f"the bearer token is longer than {_MAX_TOKEN_BYTES} bytes")
    return token


def parse_identity(text: str, *, trust_domain: str) -> WorkloadIdentity:
    """``ns/sa`` (in ``trust_domain``) or a full SPIFFE ID, as a workload identity."""
    if text.startswith("spiffe://"):
        return WorkloadIdentity.parse(text)
    namespace, slash, service_account = text.partition("/")
    if not slash:
        raise ConfigError(f"identity {text!r} is neither 'namespace/service-account' nor a SPIFFE ID")
    return WorkloadIdentity(trust_domain, namespace, service_account)


@dataclass(frozen=True, slots=True)
class _LabEntry:
    caller: Caller
    expires: float | None


class LabTokenAuthenticator:
    """The lab's bootstrap tokens: each token stands for one node agent or workload.

    Tokens are kept only as SHA-256 digests, so lookups do not compare secrets byte by byte.
    """

    def __init__(self, tokens: Mapping[str, Caller | tuple[Caller, float | None]], *, clock: Clock) -> None:
        self._clock = clock
        self._entries = _entries(tokens)
        self._file: tuple[Path, str] | None = None
        self._signature: tuple[int, int, int] | None = None

    @classmethod
    def from_file(cls, path: Path, *, trust_domain: str, clock: Clock) -> LabTokenAuthenticator:
        """Reads a lab token file (see the module docstring), and reads it again when it changes.

        The lab adds tokens while it runs (a waypoint's service account when its Gateway is
        created); the file is replaced atomically, so a reader never sees half of it.
        """
        authenticator = cls({}, clock=clock)
        authenticator._file = (path, trust_domain)
        authenticator._reload()
        return authenticator

    def _reload(self) -> None:
        """Re-reads the token file when its signature changed; keeps the old tokens if it is unreadable."""
        if self._file is None:
            return
        path, trust_domain = self._file
        try:
            st = path.stat()
        except OSError:
            if self._signature is None:
                raise ConfigError(f"cannot read lab token file {path}: it does not exist") from None
            return
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._signature:
            return
        try:
            self._entries = _entries(load_lab_tokens(path, trust_domain=trust_domain))
        except ConfigError:
            if self._signature is None:
                raise
            return  # a bad rewrite: the tokens read before stay in force
        self._signature = signature

    async def authenticate(self, token: str) -> Caller:
        """The caller holding ``token``."""
        self._reload()
        entry = self._entries.get(_digest(token))
        if entry is None:
            raise UnauthenticatedError(
                "the bearer token is unknown", hint="use a token from the lab token file"
            )
        if entry.expires is not None and self._clock.now() >= entry.expires:
            raise UnauthenticatedError("the bearer token has expired", hint="issue a fresh lab token")
        return entry.caller


def load_lab_tokens(path: Path, *, trust_domain: str) -> dict[str, tuple[Caller, float | None]]:
    """Parses a lab token file into token -> (caller, expiry); a ConfigError names the entry at fault."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read lab token file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"lab token file {path} is not a mapping of token -> {{node, identity}}")
    tokens: dict[str, tuple[Caller, float | None]] = {}
    for token, entry in data.items():
        where = f"{path}: token entry #{len(tokens) + 1}"
        if not isinstance(token, str) or not token or not isinstance(entry, dict):
            raise ConfigError(f"{where} must map a non-empty string token to {{node, identity}}")
        tokens[token] = _lab_entry(entry, where=where, trust_domain=trust_domain)
    return tokens


def _lab_entry(entry: dict[object, object], *, where: str, trust_domain: str) -> tuple[Caller, float | None]:
    identity, node, expires = entry.get("identity"), entry.get("node"), entry.get("expires")
    if not isinstance(identity, str):
        raise ConfigError(f"{where} has no string 'identity'", hint="write identity: <namespace>/<sa>")
    if node is not None and not isinstance(node, str):
        raise ConfigError(f"{where} has a non-string 'node'")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
        raise ConfigError(f"{where} has a non-numeric 'expires'", hint="use epoch seconds")
    try:
        parsed = parse_identity(identity, trust_domain=trust_domain)
    except IdentityError as err:
        raise ConfigError(f"{where} has an invalid identity {identity!r}: {err}") from err
    return Caller(identity=parsed, node=node), None if expires is None else float(expires)


def _entries(tokens: Mapping[str, Caller | tuple[Caller, float | None]]) -> dict[bytes, _LabEntry]:
    out = {}
    for token, value in tokens.items():
        caller, expires = value if isinstance(value, tuple) else (value, None)
        out[_digest(token)] = _LabEntry(caller, expires)
    return out


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
