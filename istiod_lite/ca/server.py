"""The CA on gRPC: ``istio.v1.auth.IstioCertificateService/CreateCertificate`` over TLS.

The method is registered as a generic handler taking raw bytes, so a request that is not a valid
protobuf gets INVALID_ARGUMENT from us rather than gRPC's generic INTERNAL. The server's own TLS
certificate is issued by the CA itself and reissued at half life (grpc's dynamic credentials ask
for it on each handshake). The gRPC server object is built by the composition root, which can
add the config plane's services to the same port.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import cast

import grpc

from istiod_lite.ca.authority import SigningAuthority
from istiod_lite.ca.errors import CaError
from istiod_lite.ca.service import CertificateService
from istiod_lite.ca.signing import ServingCertificate, issue_serving_certificate
from mesh.clock import Clock

__all__ = [
    "CREATE_CERTIFICATE_METHOD",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ISTIOD_DNS_NAMES",
    "SERVICE_NAME",
    "ServingCertificates",
    "ca_rpc_handler",
    "istiod_spiffe_uri",
]

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE_METHOD = f"/{SERVICE_NAME}/CreateCertificate"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
ISTIOD_DNS_NAMES = ("istiod.istio-system.svc",)
SERVING_TTL = dt.timedelta(days=30)


def istiod_spiffe_uri(trust_domain: str) -> str:
    """istiod's own SPIFFE ID, the URI SAN of its serving certificate."""
    return f"spiffe://{trust_domain}/ns/istio-system/sa/istiod"


def ca_rpc_handler(
    service: CertificateService, *, max_request_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> grpc.GenericRpcHandler[bytes, bytes]:
    """The generic handler serving CreateCertificate with ``service``.

    The server's own receive limit is sized for xDS; a CSR request larger than ``max_request_bytes``
    is refused here with RESOURCE_EXHAUSTED before it is parsed."""

    async def create_certificate(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if len(request) > max_request_bytes:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {len(request)} bytes is larger than max {max_request_bytes} bytes",
            )
        try:
            return await service.create_certificate(request, context.invocation_metadata() or ())
        except CaError as err:
            await context.abort(grpc.StatusCode[err.grpc_status], str(err))
            raise  # abort raises; this line is never reached  # pragma: no cover

    handler = grpc.unary_unary_rpc_method_handler(create_certificate)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"CreateCertificate": handler})


class ServingCertificates:
    """istiod's TLS certificate, issued by the CA and reissued once half of its life has passed."""

    def __init__(
        self,
        authority: Callable[[], SigningAuthority],
        *,
        trust_domain: str,
        clock: Clock,
        dns_names: tuple[str, ...] = ISTIOD_DNS_NAMES,
        ttl: dt.timedelta = SERVING_TTL,
    ) -> None:
        self._authority = authority
        self._uri = istiod_spiffe_uri(trust_domain)
        self._clock = clock
        self._dns_names = dns_names
        self._ttl = ttl
        self._lock = threading.Lock()
        self._current = self._issue()

    @property
    def current(self) -> ServingCertificate:
        """The certificate being served now."""
        return self._current

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up reissued certificates on new handshakes."""
        # grpc accepts None from the fetcher ("no change"); its type stub says otherwise.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._current), fetch, require_client_authentication=False
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            current = self._current
            half_life = current.not_before + (current.not_after - current.not_before) / 2
            if self._now() < half_life:
                return None
            self._current = self._issue()
            return self._configuration(self._current)

    def _issue(self) -> ServingCertificate:
        return issue_serving_certificate(
            self._authority(), dns_names=self._dns_names, uri=self._uri, ttl=self._ttl, now=self._clock.now()
        )

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock.now(), tz=dt.UTC)

    @staticmethod
    def _configuration(cert: ServingCertificate) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(cert.key_pem, cert.chain_pem)])
