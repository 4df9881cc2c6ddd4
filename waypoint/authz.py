"""The waypoint's authentication and authorization step, before routing: the request (already
normalized) against the JWT providers and the RBAC filters of the virtual host that serves it
(mesh.l7.jwt, mesh.l7.authz). Answers as Envoy's: 401 ``Jwt verification fails`` for a token no
provider accepts, 403 ``RBAC: access denied`` (flag ``RBAC``) for a denial; the request goes
nowhere. An accepted token's header is dropped unless forwarded and its claim headers added. A
request an AUDIT policy matches is logged (``rbac.audit``, the policies, the request, the decision),
as Istio's AUDIT action marks it for the access log."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import structlog

from mesh.http1 import Message
from mesh.l7.authz import IpAddress, request_attributes
from mesh.l7.router import Router

__all__ = ["DENIED_BODY", "Refusal", "authorize"]

DENIED_BODY = b"RBAC: access denied"
_UNKNOWN = ipaddress.ip_address("0.0.0.0")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the status, body and response flag, and the deciding policy."""

    status: int
    body: bytes
    flags: str = ""
    policy: str = ""


def authorize(
    router: Router | None, request: Message, *, vhost_authority: str, source_principal: str,
    source_addr: str, now: float,
) -> Refusal | None:  # fmt: skip
    """None when ``request`` may go on (its headers edited in place as the token requires), else
    the refusal. ``vhost_authority`` chooses the virtual host (the tunnel's ``VIP:port``, else the
    Host); ``now`` is the wall clock in seconds, for token expiry."""
    found = router.authorization(vhost_authority) if router is not None else None
    if found is None:
        return None
    verifier, engine = found
    metadata = {}
    if verifier:
        outcome = verifier.verify(request.headers, request.target.partition("?")[2], now=now)
        if outcome.status == 401:
            return Refusal(401, outcome.reason.encode())
        if outcome.status == 200:
            metadata = {"istio_authn": outcome.metadata}
            gone = {*outcome.remove_headers, *(name for name, _ in outcome.add_headers)}
            request.headers[:] = [(k, v) for k, v in request.headers if k.lower() not in gone]
            request.headers.extend(outcome.add_headers)
    if not engine:
        return None
    host, _, port = vhost_authority.rpartition(":")
    attributes = request_attributes(
        request.method, request.target, request.headers, source_ip=_ip(source_addr),
        destination_ip=_ip(host.strip("[]")), destination_port=int(port) if port.isdigit() else 80,
        principal=source_principal, metadata=metadata,
    )  # fmt: skip
    decision = engine.decide(attributes)
    if decision.logged:
        structlog.get_logger().info(  # looked up per call: the logging set-up runs after import
            "rbac.audit", component="waypoint", policies=list(decision.logged), method=request.method,
            path=request.target, authority=vhost_authority, source_principal=source_principal,
            source_address=source_addr, allowed=decision.allowed,
        )  # fmt: skip
    return None if decision.allowed else Refusal(403, DENIED_BODY, "RBAC", decision.policy)


def _ip(text: str) -> IpAddress:
    """An address as text, or 0.0.0.0 when it is not one (a name): matches no IP block."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return _UNKNOWN
