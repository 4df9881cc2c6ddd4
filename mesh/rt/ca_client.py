"""The client of Istio's certificate API: a fresh P-256 key and CSR per call, the chain verified on arrival.

``CaClient.fetch`` calls ``istio.v1.auth.IstioCertificateService/CreateCertificate`` over TLS (the server is
checked against the configured root bundle and server name) with ``authorization: Bearer <token>`` and
``clusterid`` metadata, and ``ImpersonatedIdentity`` in the request metadata when a node agent asks for a
pod's identity. The answer is accepted only when its chain verifies against the returned roots *and* the
configured roots, and names exactly the requested identity: anything else fails closed. Both checks are
TLS handshakes of the new credentials with themselves (:func:`mesh.rt.tls.self_check`), so a certificate
is accepted only if every peer will accept it; the key and the CSR come from the OpenSSL ``ssl`` uses
(:mod:`mesh.rt.csr`): the data plane loads no other crypto library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from mesh.api.istio.v1.auth import ca_pb2
from mesh.certs import IssuedCertificate, split_ca_answer, split_pem_certificates
from mesh.errors import ConfigError, MeshError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rpc import RpcError, StatusCode
from mesh.rt.csr import new_key_and_csr
from mesh.rt.rpc import RpcChannel, client_tls
from mesh.rt.tls import PeerRejectedError, TlsMaterial, TlsSetupError, self_check

__all__ = [
    "DEFAULT_CA_SERVER_NAME",
    "DEFAULT_CLUSTER_ID",
    "CaClient",
    "CaError",
    "CaRejected",
    "CaResponseInvalid",
    "CaUnavailable",
    "IssuedCertificate",
    "token_from_file",
]

DEFAULT_CA_SERVER_NAME = "istiod.istio-system.svc"
DEFAULT_CLUSTER_ID = "Kubernetes"
_METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
_TRANSIENT = frozenset(
    {
        StatusCode.UNAVAILABLE,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.RESOURCE_EXHAUSTED,
        StatusCode.ABORTED,
        StatusCode.CANCELLED,
        StatusCode.UNKNOWN,
        StatusCode.INTERNAL,
    }
)


class CaError(MeshError):
    """Root of the CA client's errors; the certificate manager backs off and retries on each."""


class CaUnavailable(CaError):  # noqa: N818 (names of the API)
    """The CA could not be reached or did not answer in time (transient: retried with backoff)."""


class CaRejected(CaError):  # noqa: N818 (names of the API)
    """The CA answered with an error status; ``code`` and ``details`` are what it said."""

    def __init__(self, message: str, *, code: StatusCode, details: str, hint: str = "") -> None:
        self.code = code
        self.details = details
        super().__init__(message, hint=hint)


class CaResponseInvalid(CaError):  # noqa: N818 (names of the API)
    """The CA answered, but its chain does not verify or names another identity: the answer is refused."""


def token_from_file(path: Path) -> Callable[[], str]:
    """A token source reading ``path`` on every call (projected tokens rotate on disk)."""

    def read() -> str:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(
                f"cannot read the CA token file {path}: {err.strerror}",
                hint="check the path and that this process may read it (lab: the node's token file)",
            ) from err
        if not token:
            raise ConfigError(
                f"the CA token file {path} is empty", hint="write the node's bootstrap token into it"
            )
        return token

    return read


class CaClient:
    """Asks the CA for workload certificates over one long-lived TLS gRPC channel."""

    def __init__(
        self,
        address: str,
        *,
        roots_pem: bytes,
        token: Callable[[], str],
        cluster_id: str = DEFAULT_CLUSTER_ID,
        server_name: str = DEFAULT_CA_SERVER_NAME,
        timeout: float = 10.0,
    ) -> None:
        self._roots_pem = _configured_roots(roots_pem)
        self._token = token
        self._cluster_id = cluster_id
        self._timeout = timeout
        try:
            self._channel = RpcChannel(address, tls=client_tls(roots_pem), server_name=server_name)
        except ValueError as err:
            raise ConfigError(str(err), hint="pass the CA address as host:port") from err
        self.address = address

    async def fetch(
        self, identity: WorkloadIdentity, *, impersonate: bool, ttl_seconds: int
    ) -> IssuedCertificate:
        """A new certificate for ``identity``, verified against the configured roots.

        Raises a :class:`CaError` subclass when the CA is unreachable, refuses, or answers with a chain that
        does not verify or names another identity; ConfigError when the token cannot be read.
        """
        key_pem, csr_pem = new_key_and_csr(identity)
        request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_seconds)
        if impersonate:
            request.metadata.CopyFrom(_struct({"ImpersonatedIdentity": identity.uri}))
        metadata = (("authorization", f"Bearer {self._token()}"), ("clusterid", self._cluster_id))
        try:
            answer = await self._channel.unary(
                _METHOD, request.SerializeToString(), metadata=metadata, timeout=self._timeout
            )
        except RpcError as err:
            raise self._status_error(err, identity) from err
        try:
            response = ca_pb2.IstioCertificateResponse.FromString(bytes(answer))
        except DecodeError as err:
            raise CaResponseInvalid(
                f"the CA at {self.address} sent an answer that is not an IstioCertificateResponse: {err}",
                hint="check that the address is istiod's CA port (15012)",
            ) from err
        return self.accept_answer(identity, key_pem, list(response.cert_chain))

    async def close(self) -> None:
        """Closes the channel (idempotent)."""
        await self._channel.close()

    def accept_answer(
        self, identity: WorkloadIdentity, key_pem: bytes, chain: list[str]
    ) -> IssuedCertificate:
        """Checks a CreateCertificate answer for the CSR of ``key_pem``: its shape, then a TLS handshake of
        the credentials with themselves against the configured roots and against the roots it carries;
        raises :class:`CaResponseInvalid` unless it verifies and names exactly ``identity``."""
        try:
            chain_pem, roots_pem = split_ca_answer(chain)
            for roots in (self._roots_pem, roots_pem):
                leaf = self_check(
                    TlsMaterial(identity, key_pem=key_pem, chain_pem=chain_pem, roots_pem=roots)
                )
        except (PeerRejectedError, TlsSetupError, ValueError) as err:
            raise CaResponseInvalid(
                f"the CA at {self.address} sent a certificate for {identity.uri} that is refused: {err}",
                hint="check that the configured roots are this CA's root-cert.pem and that the clocks agree",
            ) from err
        if leaf.identity != identity:
            raise CaResponseInvalid(
                f"the CA at {self.address} returned a certificate for {leaf.identity.uri}, "
                f"not the requested {identity.uri}",
                hint="the certificate was refused; check the CA's impersonation rules and its version",
            )
        return IssuedCertificate(
            identity=identity,
            key_pem=key_pem,
            chain_pem=chain_pem,
            roots_pem=roots_pem,
            serial=leaf.serial,
            not_before=leaf.not_before,
            not_after=leaf.not_after,
        )

    def _status_error(self, err: RpcError, identity: WorkloadIdentity) -> CaError:
        code, details = err.code, err.details
        if code in _TRANSIENT:
            return CaUnavailable(
                f"the CA at {self.address} is unavailable for {identity.uri}: {code.name}: {details}",
                hint="check that istiod-lite runs and is reachable; the request is retried with backoff",
            )
        return CaRejected(
            f"the CA at {self.address} refused a certificate for {identity.uri}: {code.name}: {details}",
            code=code,
            details=details,
            hint=_REJECT_HINTS.get(code, "read the CA's audit log for this request"),
        )


_REJECT_HINTS = {
    StatusCode.UNAUTHENTICATED: "check the bearer token (lab: the node's token file) and the cluster id",
    StatusCode.PERMISSION_DENIED: "a node agent may only get identities of pods scheduled on its node",
    StatusCode.INVALID_ARGUMENT: "the request was malformed; check the TTL and the trust domain",
}


def _configured_roots(roots_pem: bytes) -> bytes:
    hint = "pass the CA's root-cert.pem (the istio-ca-root-cert ConfigMap in Kubernetes)"
    try:
        roots = split_pem_certificates(roots_pem, what="the configured CA root bundle")
    except ValueError as err:
        raise ConfigError(str(err), hint=hint) from err
    if not roots:
        raise ConfigError("the configured CA root bundle holds no certificate", hint=hint)
    return b"".join(roots)


def _struct(values: dict[str, str]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result
