"""HBONE over mTLS on asyncio: client and server connections, stream relays and the connection pool.

The HTTP/2 work is done by the sans-I/O engine in :mod:`mesh.h2`; this package adds TLS, sockets,
timers and backpressure. See ``client``, ``server``, ``stream`` and ``pool``; relays, sockets and
timers are in :mod:`mesh.rt.net`.
"""

from mesh.rt.hbone.client import HboneClientConnection, connect
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.hbone.connection import HboneConnection
from mesh.rt.hbone.errors import (
    ConnectionClosedError,
    HandshakeError,
    KeepaliveTimeoutError,
    StreamLimitError,
    StreamResetError,
)
from mesh.rt.hbone.pool import CertificateSource, HbonePool, PoolConfig, PoolKey
from mesh.rt.hbone.server import (
    HboneServer,
    HboneServerConnection,
    InboundDecision,
    InboundHandler,
    InboundRequest,
)
from mesh.rt.hbone.stream import HboneStream

__all__ = [
    "CertificateSource",
    "ConnectionClosedError",
    "HandshakeError",
    "HboneClientConnection",
    "HboneConfig",
    "HboneConnection",
    "HbonePool",
    "HboneServer",
    "HboneServerConnection",
    "HboneStream",
    "InboundDecision",
    "InboundHandler",
    "InboundRequest",
    "KeepaliveTimeoutError",
    "PoolConfig",
    "PoolKey",
    "StreamLimitError",
    "StreamResetError",
    "connect",
]
