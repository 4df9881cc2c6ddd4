"""Workload identity: SPIFFE IDs, X509-SVID certificate validation and principal matching.

Pure code: no sockets, no TLS library; certificates are ``cryptography.x509.Certificate`` values.
The certificate functions load ``cryptography`` (about 10 MB) on first use only, so a process that
only parses SPIFFE IDs (e.g. a relay checking the peer's SAN from the TLS layer) never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mesh.identity.errors import CertificateRejected, IdentityError, InvalidSpiffeId, Reason
from mesh.identity.principals import (
    MatchKind,
    ServiceAccountMatch,
    StringMatch,
    matches_namespace,
    matches_principal,
    principal_of,
)
from mesh.identity.spiffe import (
    MAX_SPIFFE_ID_BYTES,
    SpiffeId,
    WorkloadIdentity,
    validate_trust_domain,
)

if TYPE_CHECKING:
    from mesh.identity.certs import identity_from_certificate, identity_from_der, load_pem_certificates
    from mesh.identity.chain import MAX_INTERMEDIATES, verify_workload_chain

_LAZY = {
    "identity_from_certificate": "mesh.identity.certs",
    "identity_from_der": "mesh.identity.certs",
    "load_pem_certificates": "mesh.identity.certs",
    "MAX_INTERMEDIATES": "mesh.identity.chain",
    "verify_workload_chain": "mesh.identity.chain",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh.identity' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_INTERMEDIATES",
    "MAX_SPIFFE_ID_BYTES",
    "CertificateRejected",
    "IdentityError",
    "InvalidSpiffeId",
    "MatchKind",
    "Reason",
    "ServiceAccountMatch",
    "SpiffeId",
    "StringMatch",
    "WorkloadIdentity",
    "identity_from_certificate",
    "identity_from_der",
    "load_pem_certificates",
    "matches_namespace",
    "matches_principal",
    "principal_of",
    "validate_trust_domain",
    "verify_workload_chain",
]
