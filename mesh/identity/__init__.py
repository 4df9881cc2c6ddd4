"""Workload identity: SPIFFE IDs, X509-SVID certificate validation and principal matching.

Pure code: no sockets, no TLS library; certificates are ``cryptography.x509.Certificate`` values.
"""

from __future__ import annotations

from mesh.identity.certs import (
    identity_from_certificate,
    identity_from_der,
    load_pem_certificates,
)
from mesh.identity.chain import MAX_INTERMEDIATES, verify_workload_chain
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
