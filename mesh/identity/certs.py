"""Reading a workload identity out of an X.509 certificate, and the per-certificate X509-SVID rules.

:func:`identity_from_certificate` only reads the SAN: use it on a certificate the TLS stack has already
verified. To verify a presented chain use :func:`mesh.identity.verify_workload_chain`.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from mesh.identity.errors import CertificateRejected, IdentityError, Reason
from mesh.identity.spiffe import WorkloadIdentity

__all__ = [
    "check_ca_constraints",
    "check_leaf_constraints",
    "identity_from_certificate",
    "identity_from_der",
    "load_pem_certificates",
    "read_extensions",
]

_HANDLED_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
    }
)
_SAN_HINT = "an X509-SVID carries its SPIFFE ID as exactly one URI SAN; re-issue the certificate"


def _reject(message: str, reason: Reason, position: int | None, hint: str) -> CertificateRejected:
    return CertificateRejected(message, reason=reason, position=position, hint=hint)


def identity_from_der(der: bytes) -> WorkloadIdentity:
    """The workload identity of a DER certificate (SAN only, no chain or time checks)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise _reject(
            f"not a DER X.509 certificate: {exc}",
            Reason.MALFORMED_CERTIFICATE,
            0,
            "pass the peer's DER bytes",
        ) from exc
    return identity_from_certificate(cert)


def load_pem_certificates(data: bytes | str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle, in order; raises :class:`CertificateRejected` if there are none."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise _reject(
            f"cannot read the PEM certificates: {exc}",
            Reason.MALFORMED_CERTIFICATE,
            None,
            "pass one or more '-----BEGIN CERTIFICATE-----' blocks",
        ) from exc
    return certs


def read_extensions(cert: x509.Certificate, position: int | None) -> x509.Extensions:
    """``cert.extensions``; parse failures (duplicates, bad DER) become :class:`CertificateRejected`."""
    try:
        return cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise _reject(
            f"certificate extensions cannot be parsed: {exc}",
            Reason.MALFORMED_CERTIFICATE,
            position,
            "re-issue the certificate with well-formed extensions",
        ) from exc


def _has_nul(name: x509.GeneralName) -> bool:
    value = name.value
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, bytes):
        return b"\x00" in value
    if isinstance(value, x509.Name):
        return "\x00" in value.rfc4514_string()
    return False


def _uri_san(cert: x509.Certificate, position: int) -> str:
    """The one URI SAN of ``cert``, after the SAN-level rules."""
    san = _extension_value(read_extensions(cert, position), x509.SubjectAlternativeName)
    if not isinstance(san, x509.SubjectAlternativeName):
        raise _reject("the certificate has no subjectAltName", Reason.NO_SAN, position, _SAN_HINT)
    names = list(san)
    if any(_has_nul(name) for name in names):
        raise _reject("a subjectAltName contains a NUL byte", Reason.NUL_IN_SAN, position, _SAN_HINT)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) > 1:
        raise _reject(
            f"the certificate has {len(uris)} URI SANs",
            Reason.TWO_URI_SANS,
            position,
            "exactly one is allowed",
        )
    if not uris:
        dns = san.get_values_for_type(x509.DNSName)
        if any(d.lower().startswith("spiffe:") for d in dns):
            raise _reject(
                "the SPIFFE ID is in a DNS SAN, not a URI SAN",
                Reason.SPIFFE_ID_IN_DNS_SAN,
                position,
                _SAN_HINT,
            )
        raise _reject("the certificate has no URI SAN", Reason.NO_URI_SAN, position, _SAN_HINT)
    return uris[0]


def identity_from_certificate(cert: x509.Certificate, *, position: int = 0) -> WorkloadIdentity:
    """The workload identity in ``cert``'s single URI SAN.

    Reads the SAN only: use it on a certificate already verified by TLS. Raises :class:`CertificateRejected`
    whose ``reason`` names the broken rule (for a malformed SPIFFE ID, the :class:`InvalidSpiffeId` reason).
    """
    uri = _uri_san(cert, position)
    try:
        return WorkloadIdentity.parse(uri)
    except IdentityError as exc:
        raise _reject(
            f"the URI SAN is not a workload SPIFFE ID: {exc.message}",
            exc.reason,
            position,
            exc.hint or _SAN_HINT,
        ) from exc


def _extension_value(exts: x509.Extensions, ext_type: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return exts.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None


def _check_critical(exts: x509.Extensions, position: int) -> None:
    for ext in exts:
        if ext.critical and ext.oid not in _HANDLED_CRITICAL:
            raise _reject(
                f"unsupported critical extension {ext.oid.dotted_string}",
                Reason.UNSUPPORTED_CRITICAL_EXTENSION,
                position,
                "a critical extension the verifier does not understand must make it refuse the certificate",
            )


def check_leaf_constraints(cert: x509.Certificate, *, position: int = 0) -> None:
    """X509-SVID leaf rules: not a CA, key usage with digitalSignature and without keyCertSign/cRLSign,
    EKU (when present) with both serverAuth and clientAuth, no unknown critical extension."""
    exts = read_extensions(cert, position)
    hint = "re-issue the workload certificate as an X509-SVID leaf (X509-SVID.md section 4)"
    bc = _extension_value(exts, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise _reject(
            "the leaf certificate is a CA (basicConstraints cA=true)", Reason.LEAF_IS_CA, position, hint
        )
    ku = _extension_value(exts, x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage):
        raise _reject(
            "the leaf certificate has no keyUsage extension", Reason.LEAF_NO_KEY_USAGE, position, hint
        )
    if ku.key_cert_sign:
        raise _reject("the leaf certificate may sign certificates", Reason.LEAF_KEY_CERT_SIGN, position, hint)
    if ku.crl_sign:
        raise _reject("the leaf certificate may sign CRLs", Reason.LEAF_CRL_SIGN, position, hint)
    if not ku.digital_signature:
        raise _reject(
            "the leaf key usage lacks digitalSignature", Reason.LEAF_NO_DIGITAL_SIGNATURE, position, hint
        )
    eku = _extension_value(exts, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage):
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise _reject("the leaf EKU lacks clientAuth", Reason.MISSING_CLIENT_AUTH, position, hint)
        if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
            raise _reject("the leaf EKU lacks serverAuth", Reason.MISSING_SERVER_AUTH, position, hint)
    _check_critical(exts, position)


def check_ca_constraints(cert: x509.Certificate, *, position: int, cas_below: int) -> None:
    """Signing-certificate rules: basicConstraints cA=true, keyCertSign when keyUsage is present, a
    pathLenConstraint that allows ``cas_below`` intermediates under it, no unknown critical extension.

    ``position`` is the chain index of an intermediate, or -1 for the trust root.
    """
    exts = read_extensions(cert, position)
    is_root = position < 0
    what = "trust root" if is_root else f"intermediate at chain position {position}"
    not_ca = Reason.ROOT_NOT_CA if is_root else Reason.INTERMEDIATE_NOT_CA
    hint = (
        "only CA certificates (basicConstraints cA=true, keyUsage keyCertSign) may sign workload certificates"
    )
    bc = _extension_value(exts, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise _reject(f"the {what} is not a CA certificate", not_ca, position, hint)
    ku = _extension_value(exts, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        reason = Reason.ROOT_NOT_CA if is_root else Reason.INTERMEDIATE_NO_KEY_CERT_SIGN
        raise _reject(f"the {what} lacks the keyCertSign key usage", reason, position, hint)
    if bc.path_length is not None and cas_below > bc.path_length:
        raise _reject(
            f"the {what} allows {bc.path_length} intermediates below it, the chain has {cas_below}",
            Reason.PATH_LENGTH_EXCEEDED,
            position,
            "shorten the chain or re-issue the CA with a larger pathLenConstraint",
        )
    _check_critical(exts, position)
