"""A fresh workload key and its certificate signing request, made by the OpenSSL ``ssl`` already loaded.

The data plane needs only this from a crypto library besides TLS itself (the CA's answer is checked
by :func:`mesh.rt.tls.self_check`), so ztunnel does not load ``cryptography`` (about 10 MB of memory)
for it. Every OpenSSL object is freed on every path; a failed step raises :class:`OpenSslError` with
OpenSSL's reason.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt._openssl import OpenSslError, last_error, openssl

__all__ = ["OpenSslError", "new_key_and_csr"]

_GEN_URI = 6
_NID_SUBJECT_ALT_NAME = 85
_BIO_CTRL_INFO = 3
_X509_REQ_VERSION_1 = 0


def new_key_and_csr(identity: WorkloadIdentity) -> tuple[bytes, str]:
    """A fresh ECDSA P-256 key (PKCS#8 PEM) and a PEM CSR signed with SHA-256, with an empty subject
    and one SAN: ``identity``'s SPIFFE URI (not critical), as Istio's ztunnel sends."""
    lib = openssl()
    lib.ERR_clear_error()
    with contextlib.ExitStack() as owned:
        key = _generate_p256(lib, owned)
        request = _owned(owned, lib.X509_REQ_new(), lib.X509_REQ_free, "allocate a CSR")
        if lib.X509_REQ_set_version(request, _X509_REQ_VERSION_1) != 1:
            raise last_error("set the CSR version")
        if lib.X509_REQ_set_pubkey(request, key) != 1:
            raise last_error("put the public key in the CSR")
        _add_uri_san(lib, owned, request, identity.uri)
        if lib.X509_REQ_sign(request, key, lib.EVP_sha256()) <= 0:
            raise last_error("sign the CSR")
        key_pem = _pem(
            lib,
            owned,
            "write the private key",
            lambda bio: lib.PEM_write_bio_PKCS8PrivateKey(bio, key, None, None, 0, None, None),
        )
        csr_pem = _pem(lib, owned, "write the CSR", lambda bio: lib.PEM_write_bio_X509_REQ(bio, request))
    return key_pem, csr_pem.decode("ascii")


def _owned(owned: contextlib.ExitStack, pointer: int | None, free: Callable[[int], object], what: str) -> int:
    """``pointer``, freed with ``free`` when ``owned`` closes; a NULL pointer raises."""
    if not pointer:
        raise last_error(what)
    owned.callback(free, pointer)
    return pointer


def _generate_p256(lib: ctypes.CDLL, owned: contextlib.ExitStack) -> int:
    context = _owned(
        owned,
        lib.EVP_PKEY_CTX_new_from_name(None, b"EC", None),
        lib.EVP_PKEY_CTX_free,
        "create an EC key context",
    )
    if lib.EVP_PKEY_keygen_init(context) != 1 or lib.EVP_PKEY_CTX_set_group_name(context, b"P-256") != 1:
        raise last_error("set up P-256 key generation")
    key = ctypes.c_void_p()
    if lib.EVP_PKEY_generate(context, ctypes.byref(key)) != 1:
        raise last_error("generate a P-256 key")
    return _owned(owned, key.value, lib.EVP_PKEY_free, "generate a P-256 key")


def _add_uri_san(lib: ctypes.CDLL, owned: contextlib.ExitStack, request: int, uri: str) -> None:
    names = _owned(owned, lib.GENERAL_NAMES_new(), lib.GENERAL_NAMES_free, "allocate the SAN list")
    name = lib.GENERAL_NAME_new()
    if not name:
        raise last_error("allocate a SAN")
    if lib.OPENSSL_sk_push(names, name) <= 0:  # from here on the list owns the name
        lib.GENERAL_NAME_free(name)
        raise last_error("add a SAN to the list")
    value = lib.ASN1_IA5STRING_new()
    encoded = uri.encode("ascii")
    if not value or lib.ASN1_STRING_set(value, encoded, len(encoded)) != 1:
        lib.ASN1_STRING_free(value)
        raise last_error("encode the SPIFFE URI")
    lib.GENERAL_NAME_set0_value(name, _GEN_URI, value)  # the name owns the value
    extension = _owned(
        owned,
        lib.X509V3_EXT_i2d(_NID_SUBJECT_ALT_NAME, 0, names),
        lib.X509_EXTENSION_free,
        "encode the subjectAltName extension",
    )
    extensions = _owned(owned, lib.OPENSSL_sk_new_null(), lib.OPENSSL_sk_free, "allocate the extension list")
    if (
        lib.OPENSSL_sk_push(extensions, extension) <= 0
        or lib.X509_REQ_add_extensions(request, extensions) != 1
    ):
        raise last_error("add the subjectAltName to the CSR")


def _pem(lib: ctypes.CDLL, owned: contextlib.ExitStack, what: str, write: Callable[[int], int]) -> bytes:
    """What ``write(bio)`` writes into a fresh memory BIO."""
    bio = _owned(owned, lib.BIO_new(lib.BIO_s_mem()), lib.BIO_free, "allocate a memory buffer")
    if write(bio) != 1:
        raise last_error(what)
    data = ctypes.c_void_p()
    size = lib.BIO_ctrl(bio, _BIO_CTRL_INFO, 0, ctypes.byref(data))
    if size <= 0 or not data.value:
        raise OpenSslError(f"OpenSSL could not {what}: it wrote nothing", hint="check the OpenSSL build")
    return ctypes.string_at(data.value, size)
