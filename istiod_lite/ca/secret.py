"""The self-signed root shared by every replica through the cluster's ``istio-ca-secret`` Secret, as
istiod keeps it (``security/pkg/pki/ca``): at start a replica reads Secret
``<its namespace>/istio-ca-secret``; when there is none (a fresh install) it creates a root and
the Secret; when another replica created it first (409 Conflict, or the lab's equivalent) it reads
and uses the winner's. Every replica then signs with the same key: one root per mesh.

The Secret has Istio's keys and type (``istio.io/ca-root``): ``ca-cert.pem`` and ``ca-key.pem``
(the root and its key), ``root-cert.pem`` (the trust bundle: the root), and ``cert-chain.pem`` and
``key.pem`` empty. A Secret whose material is unusable fails the start, naming the Secret and the
key at fault: a replica never makes a second root beside an existing one.

Where the Secret lives is a :class:`CaSecretStore`: the Kubernetes API
(``istiod_lite.ca.kube_secret``) or the lab's state directory (``istiod_lite.ca.lab_secret``);
the logic here is the same for both. The key stays in memory: nothing writes it to disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import serialization

from istiod_lite.ca.authority import SigningAuthority, create_root, pem_of
from istiod_lite.ca.errors import RootOfTrustError
from istiod_lite.ca.store import CACERTS_FILES, authority_from_pems

__all__ = [
    "CA_SECRET",
    "CA_SECRET_TYPE",
    "CaSecretStore",
    "CaSecretUnavailableError",
    "SharedRoot",
    "authority_from_secret",
    "ca_secret",
    "load_or_create_ca_secret",
    "root_fingerprint",
]

CA_SECRET = "istio-ca-secret"
CA_SECRET_TYPE = "istio.io/ca-root"
_REQUIRED = ("ca-cert.pem", "ca-key.pem")


class CaSecretUnavailableError(RootOfTrustError):
    """The Secret could not be read or written right now (the API server unreachable, a 5xx):
    worth trying again."""


class CaSecretStore(Protocol):
    """Where the CA Secret is kept. Blocking: call it from a worker thread."""

    namespace: str

    @property
    def name(self) -> str:
        """What to call the Secret in messages (``Secret istio-system/istio-ca-secret``)."""
        ...

    def read(self) -> Mapping[str, Any] | None:
        """The Secret object, or None when there is none. Raises RootOfTrustError when it may not
        be read (permissions), CaSecretUnavailableError when it cannot be now."""
        ...

    def create(self, secret: Mapping[str, Any]) -> bool:
        """Creates the Secret; False when one exists already (another replica was first)."""
        ...


@dataclass(frozen=True, slots=True)
class SharedRoot:
    """The authority read from (or put into) the Secret, and which of the two happened."""

    authority: SigningAuthority
    outcome: Literal["created", "loaded"]


def ca_secret(authority: SigningAuthority, *, namespace: str) -> dict[str, Any]:
    """The ``istio-ca-secret`` Secret holding a self-signed root and its key (Istio's layout)."""
    key_pem = authority.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = pem_of(authority.cert).encode("ascii")
    values = {
        "cert-chain.pem": b"",
        "key.pem": b"",
        "root-cert.pem": cert_pem,
        "ca-cert.pem": cert_pem,
        "ca-key.pem": key_pem,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CA_SECRET, "namespace": namespace},
        "type": CA_SECRET_TYPE,
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in values.items()},
    }


def authority_from_secret(secret: Mapping[str, Any], *, name: str, now: float) -> SigningAuthority:
    """The checked authority in a CA Secret (``data``, base64, or ``stringData``, plain); errors
    name the Secret and its key at fault. An empty ``root-cert.pem`` means ``ca-cert.pem`` is the
    root (Istio reads only ``ca-cert.pem`` and ``ca-key.pem`` from it)."""
    values = _secret_values(secret, name=name)
    missing = [key for key in _REQUIRED if not values.get(key, b"").strip()]
    if missing:
        raise RootOfTrustError(
            f"{name} lacks {', '.join(missing)}",
            hint=f"restore it from a backup, or delete {name} to have istiod_lite create a new root "
            "(every workload then needs a new certificate)",
        )
    pems = {entry: values.get(entry, b"") for entry in CACERTS_FILES}
    if not pems["root-cert.pem"].strip():
        pems["root-cert.pem"] = pems["ca-cert.pem"]
    return authority_from_pems(pems, source=name, where=lambda key: f"{name}, key {key}", now=now)


def _secret_values(secret: Mapping[str, Any], *, name: str) -> dict[str, bytes]:
    data, plain = secret.get("data") or {}, secret.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(plain, Mapping):
        raise RootOfTrustError(f"{name} has no data mapping", hint="it must map key names to values")
    values: dict[str, bytes] = {}
    for key, value in data.items():
        try:
            values[str(key)] = base64.b64decode(str(value or ""), validate=True)
        except binascii.Error as err:
            raise RootOfTrustError(
                f"{name}, key {key} is not base64 ({err})", hint="a Secret's data values are base64"
            ) from err
    values.update((str(key), str(value or "").encode()) for key, value in plain.items())
    return values


def root_fingerprint(authority: SigningAuthority) -> str:
    """The SHA-256 of the first root's DER form, in hex (to compare replicas' roots in logs)."""
    der = authority.roots[0].public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def load_or_create_ca_secret(
    store: CaSecretStore,
    *,
    trust_domain: str,
    now: float,
    retry_for: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> SharedRoot:
    """The root in the Secret, created with a new self-signed root when there is none; the winner's
    when another replica creates it at the same time. Blocking. While the store is unavailable it
    tries again (0.5 s doubling to 8 s) for ``retry_for`` seconds, then raises."""
    delay, waited = 0.5, 0.0
    while True:
        try:
            return _load_or_create(store, trust_domain=trust_domain, now=now)
        except CaSecretUnavailableError:
            if waited >= retry_for:
                raise
        sleep(delay)
        waited += delay
        delay = min(delay * 2, 8.0)


def _load_or_create(store: CaSecretStore, *, trust_domain: str, now: float) -> SharedRoot:
    found = store.read()
    if found is not None:
        return SharedRoot(authority_from_secret(found, name=store.name, now=now), "loaded")
    authority = create_root(trust_domain=trust_domain, now=now)
    if store.create(ca_secret(authority, namespace=store.namespace)):
        return SharedRoot(authority, "created")
    winner = store.read()  # another replica created it between our read and our create
    if winner is None:
        raise CaSecretUnavailableError(
            f"{store.name} was created by another replica and deleted again",
            hint="is something deleting it? istiod_lite tries again",
        )
    return SharedRoot(authority_from_secret(winner, name=store.name, now=now), "loaded")
