"""Certificate revocation lists, as Istio's ztunnel takes them from a plugged-in CA (pure).

A ``Revocation`` is what a CRL file says: the CRLs themselves, as PEM, which TLS contexts load so that
OpenSSL refuses revoked peers in every new handshake (signature, issuer and dates checked there), and
the revoked serial numbers, with which live connections from revoked peers are found and closed.
Serials are matched without their issuer: workload serials are random 128-bit numbers (Istio's CA,
ours), so two issuers sharing one is not a practical concern, and new handshakes check the issuer too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.der import children, pem_blocks, read_tlv

__all__ = ["NO_REVOCATION", "Revocation", "parse_crls"]

_INTEGER, _SEQUENCE, _UTC_TIME, _GENERALIZED_TIME = 0x02, 0x30, 0x17, 0x18


@dataclass(frozen=True, slots=True)
class Revocation:
    """The CRLs in force: ``crl_pem`` for TLS contexts, ``serials`` for connections already open."""

    crl_pem: bytes = field(default=b"", repr=False)
    serials: frozenset[int] = field(default_factory=frozenset)

    def revokes(self, serial: int | None) -> bool:
        """Whether a certificate with this serial number is revoked (None: no certificate)."""
        return serial is not None and serial in self.serials


NO_REVOCATION = Revocation()


def parse_crls(pem: bytes | str, *, what: str) -> Revocation:
    """The CRLs of a PEM file (``X509 CRL`` blocks); raises ValueError naming ``what`` and the
    problem when it holds anything else or a CRL that is not well formed. No CRL is no revocation."""
    serials: set[int] = set()
    blocks = pem_blocks(pem, label="X509 CRL", what=what)
    for number, (_, der) in enumerate(blocks, 1):
        try:
            serials.update(_revoked_serials(der))
        except ValueError as err:
            raise ValueError(f"CRL {number} of {what} is not a valid CertificateList: {err}") from err
    return Revocation(b"".join(block for block, _ in blocks), frozenset(serials))


def _revoked_serials(der: bytes) -> list[int]:
    """RFC 5280 section 5.1: CertificateList -> tbsCertList -> revokedCertificates -> userCertificate."""
    _, list_start, list_end = read_tlv(der, 0)
    tbs_tag, tbs_start, tbs_end = next(children(der, list_start, list_end), (-1, 0, 0))
    if tbs_tag != _SEQUENCE:
        raise ValueError("it has no tbsCertList")
    fields = list(children(der, tbs_start, tbs_end))
    if fields and fields[0][0] == _INTEGER:
        fields = fields[1:]  # version
    if len(fields) < 3 or fields[0][0] != _SEQUENCE or fields[1][0] != _SEQUENCE:
        raise ValueError("it lacks the signature algorithm or the issuer")
    rest = fields[2:]
    if rest[0][0] not in (_UTC_TIME, _GENERALIZED_TIME):
        raise ValueError("it has no thisUpdate time")
    rest = rest[1:]
    if rest and rest[0][0] in (_UTC_TIME, _GENERALIZED_TIME):
        rest = rest[1:]  # nextUpdate
    if not rest or rest[0][0] != _SEQUENCE:
        return []  # nothing revoked (what may follow is the extensions, [0])
    serials = []
    _, revoked_start, revoked_end = rest[0]
    for entry_tag, entry_start, entry_end in children(der, revoked_start, revoked_end):
        serial_tag, serial_start, serial_end = next(children(der, entry_start, entry_end), (-1, 0, 0))
        if entry_tag != _SEQUENCE or serial_tag != _INTEGER:
            raise ValueError("a revoked entry has no serial number")
        serials.append(int.from_bytes(der[serial_start:serial_end], "big", signed=True))
    return serials
