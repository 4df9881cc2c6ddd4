"""Where the root of trust lives: a state directory the CA owns, or a plugged-in Istio ``cacerts`` dir.

State directory layout (created on first start, reused afterwards)::

    <state>/ca/root-cert.pem   the self-signed root (public)
    <state>/ca/root-key.pem    its PKCS#8 private key, mode 0600, written atomically

Istio's ``cacerts`` layout (read-only here)::

    ca-cert.pem     the certificate the CA signs with (an intermediate or a root)
    ca-key.pem      its private key
    root-cert.pem   the trust bundle: one or more self-signed roots
    cert-chain.pem  ca-cert.pem and the intermediates above it (a trailing root is tolerated)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from istiod_lite.ca.authority import CaPrivateKey, SigningAuthority, check_authority, create_root, pem_of
from istiod_lite.ca.errors import RootOfTrustError

__all__ = [
    "CACERTS_FILES",
    "authority_from_pems",
    "load_cacerts",
    "load_or_create_root",
    "parse_certs",
    "parse_key",
    "write_private_file",
]

CACERTS_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
_ROOT_CERT = "root-cert.pem"
_ROOT_KEY = "root-key.pem"


def load_or_create_root(state_dir: Path, *, trust_domain: str, now: float) -> SigningAuthority:
    """The persisted self-signed root under ``state_dir/ca``, created on first use.

    Raises RootOfTrustError when only half of the pair exists or the files are unusable,
    rather than silently minting a new root that no workload trusts.
    """
    ca_dir = state_dir / "ca"
    cert_path, key_path = ca_dir / _ROOT_CERT, ca_dir / _ROOT_KEY
    if not cert_path.exists() and not key_path.exists():
        authority = create_root(trust_domain=trust_domain, now=now)
        ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem = authority.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private_file(key_path, key_pem)
        _write_atomic(cert_path, pem_of(authority.cert).encode("ascii"), mode=0o644)
        return authority
    for path in (cert_path, key_path):
        if not path.exists():
            raise RootOfTrustError(
                f"{path} is missing but its partner file exists",
                hint=f"restore {path.name} from backup, or delete {ca_dir} to create a new root",
            )
    if key_path.stat().st_mode & 0o077:
        raise RootOfTrustError(f"{key_path} is readable by group or others", hint=f"chmod 600 {key_path}")
    cert = _read_certs(cert_path, expect_one=True)[0]
    authority = SigningAuthority(cert=cert, key=_read_key(key_path), intermediates=(), roots=(cert,))
    _check(authority, now=now, where=str(ca_dir))
    return authority


def load_cacerts(directory: Path, *, now: float) -> SigningAuthority:
    """A plugged-in CA from an Istio ``cacerts`` directory; errors name the file at fault."""
    missing = [name for name in CACERTS_FILES if not (directory / name).is_file()]
    if missing:
        raise RootOfTrustError(
            f"cacerts directory {directory} lacks {', '.join(missing)}",
            hint=f"it must hold all of {', '.join(CACERTS_FILES)}",
        )
    pems = {name: (directory / name).read_bytes() for name in CACERTS_FILES}
    return authority_from_pems(pems, source=str(directory), where=lambda name: str(directory / name), now=now)


def authority_from_pems(
    pems: Mapping[str, bytes], *, source: str, where: Callable[[str], str], now: float
) -> SigningAuthority:
    """Key material in Istio's ``cacerts`` layout (``CACERTS_FILES``, each PEM text) as a checked
    authority; errors name the ``source`` or, for one entry, ``where(name)`` (a file, a Secret's key)."""
    cert = parse_certs(pems["ca-cert.pem"], where=where("ca-cert.pem"), expect_one=True)[0]
    key = parse_key(pems["ca-key.pem"], where=where("ca-key.pem"))
    roots = tuple(parse_certs(pems["root-cert.pem"], where=where("root-cert.pem"), expect_one=False))
    chain_pem = pems["cert-chain.pem"]
    chain = (
        []
        if cert in roots and not chain_pem.strip()
        else parse_certs(chain_pem, where=where("cert-chain.pem"), expect_one=False)
    )
    intermediates = tuple(c for c in chain if c != cert and c not in roots and not _self_issued(c))
    if cert not in roots and chain[0] != cert:
        raise RootOfTrustError(
            f"{where('cert-chain.pem')} does not start with the certificate in ca-cert.pem",
            hint="cert-chain.pem must be ca-cert.pem followed by its intermediates (leaf side first)",
        )
    authority = SigningAuthority(cert=cert, key=key, intermediates=intermediates, roots=roots)
    _check(authority, now=now, where=source)
    return authority


def write_private_file(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically with mode 0600 (temp file in the same dir, then rename)."""
    _write_atomic(path, data, mode=0o600)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check(authority: SigningAuthority, *, now: float, where: str) -> None:
    try:
        check_authority(authority, now=now)
    except RootOfTrustError as err:
        raise RootOfTrustError(f"{where}: {err.message}", hint=err.hint) from err


def _read_certs(path: Path, *, expect_one: bool) -> list[x509.Certificate]:
    return parse_certs(path.read_bytes(), where=str(path), expect_one=expect_one)


def parse_certs(data: bytes, *, where: str, expect_one: bool) -> list[x509.Certificate]:
    """The PEM certificates in ``data``; errors name ``where`` it came from."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise RootOfTrustError(
            f"{where} holds no readable PEM certificate ({err})",
            hint="it must contain '-----BEGIN CERTIFICATE-----' blocks",
        ) from err
    if expect_one and len(certs) != 1:
        raise RootOfTrustError(f"{where} holds {len(certs)} certificates", hint="it must hold exactly one")
    return certs


def _read_key(path: Path) -> CaPrivateKey:
    return parse_key(path.read_bytes(), where=str(path))


def parse_key(data: bytes, *, where: str) -> CaPrivateKey:
    """The unencrypted PEM private key in ``data`` (ECDSA or RSA); errors name ``where``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise RootOfTrustError(
            f"{where} holds no readable unencrypted PEM private key ({err})",
            hint="store the key unencrypted in PKCS#8 or traditional PEM form",
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise RootOfTrustError(f"{where} holds a {type(key).__name__}", hint="use an ECDSA or RSA key")
    return key


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject
