"""The OpenSSL that ``ssl`` is linked with, through ctypes: one handle, every signature declared once.

The ``_ssl`` extension module links libssl and libcrypto; a handle on it resolves the symbols of both,
so this process loads no second crypto library. Only OpenSSL 3 is supported (its names are used).
"""

from __future__ import annotations

import ctypes
import functools
import ssl

from mesh.errors import MeshError

__all__ = ["OpenSslError", "last_error", "openssl"]

_P = ctypes.c_void_p
_INT = ctypes.c_int
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "SSL_CTX_get_options": (ctypes.c_uint64, [_P]),
    "SSL_CTX_set_ciphersuites": (_INT, [_P, ctypes.c_char_p]),
    "ERR_get_error": (ctypes.c_ulong, []),
    "ERR_error_string_n": (None, [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t]),
    "ERR_clear_error": (None, []),
    "BIO_s_mem": (_P, []),
    "BIO_new": (_P, [_P]),
    "BIO_ctrl": (ctypes.c_long, [_P, _INT, ctypes.c_long, _P]),
    "BIO_free": (_INT, [_P]),
    "EVP_PKEY_CTX_new_from_name": (_P, [_P, ctypes.c_char_p, ctypes.c_char_p]),
    "EVP_PKEY_keygen_init": (_INT, [_P]),
    "EVP_PKEY_CTX_set_group_name": (_INT, [_P, ctypes.c_char_p]),
    "EVP_PKEY_generate": (_INT, [_P, ctypes.POINTER(_P)]),
    "EVP_PKEY_CTX_free": (None, [_P]),
    "EVP_PKEY_free": (None, [_P]),
    "EVP_sha256": (_P, []),
    "PEM_write_bio_PKCS8PrivateKey": (_INT, [_P, _P, _P, _P, _INT, _P, _P]),
    "X509_REQ_new": (_P, []),
    "X509_REQ_free": (None, [_P]),
    "X509_REQ_set_version": (_INT, [_P, ctypes.c_long]),
    "X509_REQ_set_pubkey": (_INT, [_P, _P]),
    "X509_REQ_add_extensions": (_INT, [_P, _P]),
    "X509_REQ_sign": (_INT, [_P, _P, _P]),
    "PEM_write_bio_X509_REQ": (_INT, [_P, _P]),
    "ASN1_IA5STRING_new": (_P, []),
    "ASN1_STRING_set": (_INT, [_P, ctypes.c_char_p, _INT]),
    "ASN1_STRING_free": (None, [_P]),
    "GENERAL_NAME_new": (_P, []),
    "GENERAL_NAME_set0_value": (None, [_P, _INT, _P]),
    "GENERAL_NAME_free": (None, [_P]),
    "GENERAL_NAMES_new": (_P, []),
    "GENERAL_NAMES_free": (None, [_P]),
    "OPENSSL_sk_new_null": (_P, []),
    "OPENSSL_sk_push": (_INT, [_P, _P]),
    "OPENSSL_sk_free": (None, [_P]),
    "X509V3_EXT_i2d": (_P, [_INT, _INT, _P]),
    "X509_EXTENSION_free": (None, [_P]),
}


class OpenSslError(MeshError):
    """An OpenSSL call failed; the message carries OpenSSL's own reason."""


@functools.cache
def openssl() -> ctypes.CDLL:
    """The handle, resolved and typed on first use; raises :class:`OpenSslError` without OpenSSL 3."""
    import _ssl  # noqa: PLC0415 - the extension module links the same libssl and libcrypto

    if ssl.OPENSSL_VERSION_INFO[0] < 3:
        raise OpenSslError(
            f"{ssl.OPENSSL_VERSION} is too old: OpenSSL 3 is needed",
            hint="run on a Python linked with OpenSSL 3",
        )
    lib = ctypes.CDLL(_ssl.__file__)
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def last_error(what: str) -> OpenSslError:
    """An error for the failed step ``what`` with OpenSSL's reason; the error queue is left empty."""
    lib = openssl()
    reasons = []
    while code := lib.ERR_get_error():
        text = ctypes.create_string_buffer(256)
        lib.ERR_error_string_n(code, text, len(text))
        reasons.append(text.value.decode("ascii", "replace"))
    reason = "; ".join(reasons) or "no reason given"
    return OpenSslError(
        f"OpenSSL could not {what}: {reason}", hint="check the OpenSSL build this Python uses"
    )
