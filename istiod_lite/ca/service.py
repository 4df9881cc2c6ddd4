"""One CreateCertificate call, transport aside: authenticate, parse, authorize, validate, sign, audit.

The server shell hands in the raw request bytes and the call metadata and turns a raised
:class:`CaError` into its gRPC status. Every call ends in exactly one audit log line with the
dotted keys ``ca.caller``, ``ca.node``, ``ca.identity``, ``ca.decision`` and ``ca.reason``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from google.protobuf.message import DecodeError

from istiod_lite.ca.auth import Authenticator, Caller, bearer_token
from istiod_lite.ca.authority import SigningAuthority
from istiod_lite.ca.authz import DEFAULT_TRUSTED_NODE_ACCOUNTS, NodeAccount, authorize
from istiod_lite.ca.csr import validate_csr
from istiod_lite.ca.errors import CaError, InvalidRequestError, PermissionDeniedError, UnauthenticatedError
from istiod_lite.ca.metrics import CaMetrics
from istiod_lite.ca.pods import PodIndex
from istiod_lite.ca.signing import DEFAULT_MAX_TTL, cap_ttl, issue_workload_certificate
from mesh.api.istio.v1.auth import ca_pb2
from mesh.clock import Clock
from mesh.errors import ConfigError
from mesh.identity import IdentityError, WorkloadIdentity

__all__ = ["IMPERSONATED_IDENTITY", "CaPolicy", "CertificateService"]

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"


@dataclass(frozen=True, slots=True)
class CaPolicy:
    """What the CA issues: its trust domain, the longest lifetime, the trusted node agents."""

    trust_domain: str = "cluster.local"
    max_ttl: dt.timedelta = DEFAULT_MAX_TTL
    node_accounts: tuple[NodeAccount, ...] = DEFAULT_TRUSTED_NODE_ACCOUNTS

    def __post_init__(self) -> None:
        if self.max_ttl <= dt.timedelta(0):
            raise ConfigError(
                f"the maximum certificate lifetime is {self.max_ttl}", hint="use a positive --max-ttl"
            )


@dataclass(slots=True)
class _Audit:
    caller: Caller | None = None
    identity: str = ""


class CertificateService:
    """Handles CreateCertificate; ``authority`` is read per call, so a rotated CA takes effect at once."""

    def __init__(
        self,
        authority: Callable[[], SigningAuthority],
        *,
        authenticator: Authenticator,
        pods: PodIndex,
        clock: Clock,
        policy: CaPolicy,
        log: structlog.typing.FilteringBoundLogger,
        metrics: CaMetrics | None = None,
    ) -> None:
        self._authority = authority
        self._authenticator = authenticator
        self._pods = pods
        self._clock = clock
        self.policy = policy
        self._log = log
        self._metrics = metrics

    async def create_certificate(self, raw: bytes, metadata: Iterable[tuple[str, str | bytes]]) -> bytes:
        """Answers one request (serialized IstioCertificateResponse) or raises CaError."""
        audit = _Audit()
        if self._metrics is not None:
            self._metrics.csr_count.inc()
        try:
            chain = await self._handle(raw, metadata, audit)
        except CaError as err:
            self._count_failure(err)
            self._audit(audit, decision="deny", reason=str(err), status=err.grpc_status)
            raise
        except Exception as err:
            self._count_failure(CaError(str(err)))
            self._audit(audit, decision="error", reason=f"{type(err).__name__}: {err}", status="INTERNAL")
            raise CaError(f"internal error while issuing: {type(err).__name__}") from err
        if self._metrics is not None:
            self._metrics.success_cert_issuance_count.inc()
        self._audit(audit, decision="allow", reason="issued", status="OK")
        return ca_pb2.IstioCertificateResponse(cert_chain=chain).SerializeToString()

    async def _handle(
        self, raw: bytes, metadata: Iterable[tuple[str, str | bytes]], audit: _Audit
    ) -> list[str]:
        caller = await self._authenticator.authenticate(bearer_token(metadata))
        audit.caller = caller
        request = _parse_request(raw)
        ttl = cap_ttl(request.validity_duration, max_ttl=self.policy.max_ttl)
        requested = _impersonated(request, trust_domain=self.policy.trust_domain) or caller.identity
        audit.identity = requested.uri
        decision = authorize(
            caller,
            requested,
            trust_domain=self.policy.trust_domain,
            node_accounts=self.policy.node_accounts,
            pods=self._pods,
        )
        if not decision.allowed:
            raise PermissionDeniedError(decision.reason)
        csr = validate_csr(request.csr, trust_domain=self.policy.trust_domain)
        if csr.identity != requested:
            raise InvalidRequestError(
                f"the CSR asks for {csr.identity.uri} but the request is for {requested.uri}",
                hint="put the identity being requested as the CSR's only URI SAN",
            )
        issued = issue_workload_certificate(
            self._authority(), csr.public_key, identity=requested, ttl=ttl, now=self._clock.now()
        )
        return list(issued.cert_chain)

    def _count_failure(self, err: CaError) -> None:
        if self._metrics is None:
            return
        if isinstance(err, UnauthenticatedError):
            self._metrics.authentication_failure_count.inc()
        elif isinstance(err, PermissionDeniedError):
            self._metrics.authorization_failure_count.inc()
        elif isinstance(err, InvalidRequestError):
            self._metrics.csr_parsing_err_count.inc()
        else:
            self._metrics.csr_sign_err_count.inc()

    def _audit(self, audit: _Audit, *, decision: str, reason: str, status: str) -> None:
        caller = audit.caller
        self._log.info(
            "ca.decision",
            **{
                "ca.caller": caller.identity.uri if caller else "unauthenticated",
                "ca.node": (caller.node or "") if caller else "",
                "ca.identity": audit.identity,
                "ca.decision": decision,
                "ca.reason": reason,
                "ca.status": status,
            },
        )


def _parse_request(raw: bytes) -> ca_pb2.IstioCertificateRequest:
    request = ca_pb2.IstioCertificateRequest()
    try:
        request.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise InvalidRequestError(
            f"the request is not a valid IstioCertificateRequest ({err})",
            hint="send a serialized istio.v1.auth.IstioCertificateRequest",
        ) from err
    return request


def _impersonated(request: ca_pb2.IstioCertificateRequest, *, trust_domain: str) -> WorkloadIdentity | None:
    if not request.HasField("metadata") or IMPERSONATED_IDENTITY not in request.metadata.fields:
        return None
    value = request.metadata.fields[IMPERSONATED_IDENTITY]
    if value.WhichOneof("kind") != "string_value":
        raise InvalidRequestError(
            f"metadata {IMPERSONATED_IDENTITY} is not a string", hint="send the SPIFFE ID as text"
        )
    if not value.string_value:
        return None
    try:
        identity = WorkloadIdentity.parse(value.string_value)
    except IdentityError as err:
        raise InvalidRequestError(
            f"metadata {IMPERSONATED_IDENTITY} is not a SPIFFE workload ID: {err}"
        ) from err
    if identity.trust_domain != trust_domain:
        raise InvalidRequestError(
            f"metadata {IMPERSONATED_IDENTITY} asks for trust domain {identity.trust_domain!r}",
            hint=f"this CA only issues for trust domain {trust_domain!r}",
        )
    return identity
