"""The CA's typed errors; each maps to one gRPC status code in the server shell."""

from __future__ import annotations

from mesh.errors import ConfigError, MeshError

__all__ = [
    "AuthenticatorUnavailableError",
    "CaError",
    "InvalidRequestError",
    "PermissionDeniedError",
    "RootOfTrustError",
    "UnauthenticatedError",
]


class CaError(MeshError):
    """Root of the errors the certificate authority raises on purpose.

    ``grpc_status`` names the ``grpc.StatusCode`` member the server answers with.
    """

    grpc_status = "INTERNAL"


class InvalidRequestError(CaError):
    """The request itself is malformed (CSR, TTL, metadata): gRPC INVALID_ARGUMENT."""

    grpc_status = "INVALID_ARGUMENT"


class UnauthenticatedError(CaError):
    """The caller's credential is missing, unknown or expired: gRPC UNAUTHENTICATED."""

    grpc_status = "UNAUTHENTICATED"


class PermissionDeniedError(CaError):
    """The caller is known but may not have this identity: gRPC PERMISSION_DENIED."""

    grpc_status = "PERMISSION_DENIED"


class AuthenticatorUnavailableError(CaError):
    """The credential could not be checked (e.g. the API server is down): gRPC UNAVAILABLE."""

    grpc_status = "UNAVAILABLE"


class RootOfTrustError(ConfigError, CaError):
    """The CA's key material (state directory or plugged-in cacerts) is unusable."""

    grpc_status = "INTERNAL"
