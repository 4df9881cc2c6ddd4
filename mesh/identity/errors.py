"""Typed identity errors. Each carries a stable ``reason`` code for metrics, logs and tests."""

from __future__ import annotations

from enum import StrEnum

from mesh.errors import MeshError

__all__ = ["CertificateRejected", "IdentityError", "InvalidSpiffeId", "Reason"]


class Reason(StrEnum):
    """Why an identity or a certificate was refused. Values are stable strings (``reason == "expired"``)."""

    # SPIFFE ID text (SPIFFE-ID.md)
    NOT_A_STRING = "not_a_string"
    TOO_LONG = "too_long"
    NUL_BYTE = "nul_byte"
    NOT_SPIFFE_SCHEME = "not_spiffe_scheme"
    QUERY = "query"
    FRAGMENT = "fragment"
    PERCENT_ENCODING = "percent_encoding"
    USERINFO = "userinfo"
    PORT = "port"
    EMPTY_TRUST_DOMAIN = "empty_trust_domain"
    TRUST_DOMAIN_UPPERCASE = "trust_domain_uppercase"
    TRUST_DOMAIN_BAD_CHAR = "trust_domain_bad_char"
    TRUST_DOMAIN_TOO_LONG = "trust_domain_too_long"
    PATH_NOT_ABSOLUTE = "path_not_absolute"
    EMPTY_SEGMENT = "empty_segment"
    DOT_SEGMENT = "dot_segment"
    TRAILING_SLASH = "trailing_slash"
    PATH_BAD_CHAR = "path_bad_char"
    NOT_WORKLOAD_PATH = "not_workload_path"
    # the leaf's names (X509-SVID.md section 2)
    MALFORMED_CERTIFICATE = "malformed_certificate"
    NO_SAN = "no_san"
    NO_URI_SAN = "no_uri_san"
    SPIFFE_ID_IN_DNS_SAN = "spiffe_id_in_dns_san"
    TWO_URI_SANS = "two_uri_sans"
    NUL_IN_SAN = "nul_in_san"
    # the leaf's constraints (X509-SVID.md section 4)
    LEAF_IS_CA = "leaf_is_ca"
    LEAF_KEY_CERT_SIGN = "leaf_key_cert_sign"
    LEAF_CRL_SIGN = "leaf_crl_sign"
    LEAF_NO_KEY_USAGE = "leaf_no_key_usage"
    LEAF_NO_DIGITAL_SIGNATURE = "leaf_no_digital_signature"
    MISSING_CLIENT_AUTH = "missing_client_auth"
    MISSING_SERVER_AUTH = "missing_server_auth"
    UNSUPPORTED_CRITICAL_EXTENSION = "unsupported_critical_extension"
    # time
    NAIVE_TIME = "naive_time"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    INTERMEDIATE_EXPIRED = "intermediate_expired"
    INTERMEDIATE_NOT_YET_VALID = "intermediate_not_yet_valid"
    ROOT_EXPIRED = "root_expired"
    ROOT_NOT_YET_VALID = "root_not_yet_valid"
    # the chain
    EMPTY_CHAIN = "empty_chain"
    CHAIN_TOO_LONG = "chain_too_long"
    NO_TRUST_ROOTS = "no_trust_roots"
    INTERMEDIATE_NOT_CA = "intermediate_not_ca"
    INTERMEDIATE_NO_KEY_CERT_SIGN = "intermediate_no_key_cert_sign"
    PATH_LENGTH_EXCEEDED = "path_length_exceeded"
    ROOT_NOT_CA = "root_not_ca"
    CHAIN_NOT_LINKED = "chain_not_linked"
    BAD_SIGNATURE = "bad_signature"
    UNTRUSTED_ROOT = "untrusted_root"
    WEAK_SIGNATURE_ALGORITHM = "weak_signature_algorithm"
    WEAK_KEY = "weak_key"
    CHAIN_POLICY = "chain_policy"
    TRUST_DOMAIN_MISMATCH = "trust_domain_mismatch"


class IdentityError(MeshError):
    """Root of the identity errors; ``reason`` is a stable :class:`Reason` code."""

    def __init__(self, message: str, *, reason: Reason, hint: str = "") -> None:
        self.reason = reason
        super().__init__(message, hint=hint)


class InvalidSpiffeId(IdentityError):  # noqa: N818 - public name other packages use
    """A SPIFFE ID (or one of its parts) breaks the SPIFFE ID specification."""

    def __init__(self, message: str, *, reason: Reason, value: str = "", hint: str = "") -> None:
        self.value = value
        super().__init__(message, reason=reason, hint=hint)


class CertificateRejected(IdentityError):  # noqa: N818 - public name other packages use
    """A certificate or chain is not an acceptable workload identity.

    ``position`` is the index in the chain (0 = leaf) or -1 for a trust root; None when not tied to one cert.
    """

    def __init__(self, message: str, *, reason: Reason, position: int | None = None, hint: str = "") -> None:
        self.position = position
        super().__init__(message, reason=reason, hint=hint)
