"""The waypoint's L7 authorization step: the request (already normalized) against the RBAC filters
of the virtual host that serves it (mesh.l7.authz), before routing. A denial is Envoy's answer:
403 ``RBAC: access denied`` with response flag ``RBAC``; the request goes nowhere."""

from __future__ import annotations

import ipaddress

from mesh.http1 import Message
from mesh.l7.authz import IpAddress, request_attributes
from mesh.l7.router import Router

__all__ = ["DENIED_BODY", "authorize"]

DENIED_BODY = b"RBAC: access denied"
_UNKNOWN = ipaddress.ip_address("0.0.0.0")


def authorize(
    router: Router | None, request: Message, *, vhost_authority: str, source_principal: str, source_addr: str
) -> str:
    """The policy that denies ``request`` (``-`` when no ALLOW matched), or empty when allowed.
    ``vhost_authority`` chooses the virtual host (the tunnel's ``VIP:port``, else the Host)."""
    engine = router.authorization(vhost_authority) if router is not None else None
    if not engine:
        return ""
    host, _, port = vhost_authority.rpartition(":")
    attributes = request_attributes(
        request.method,
        request.target,
        request.headers,
        source_ip=_ip(source_addr),
        destination_ip=_ip(host.strip("[]")),
        destination_port=int(port) if port.isdigit() else 80,
        principal=source_principal,
    )
    decision = engine.decide(attributes)
    return "" if decision.allowed else decision.policy or "-"


def _ip(text: str) -> IpAddress:
    """An address as text, or 0.0.0.0 when it is not one (a name): matches no IP block."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return _UNKNOWN
