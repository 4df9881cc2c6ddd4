"""HBONE over mTLS on asyncio: client and server connections, stream relays and the connection pool.

The HTTP/2 work is done by the sans-I/O engine in :mod:`mesh.h2`; this package adds TLS, sockets,
timers and backpressure. See ``client``, ``server``, ``relay`` and ``pool``.
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
from mesh.rt.hbone.relay import RelayEnd, link, reset_transport
from mesh.rt.hbone.server import (
    HboneServer,
    HboneServerConnection,
    InboundDecision,
    InboundHandler,
    InboundRequest,
)
from mesh.rt.hbone.sockets import ConnectError, PlainSocketFactory, SocketFactory
from mesh.rt.hbone.stream import HboneStream
from mesh.rt.hbone.timers import LoopScheduler, Scheduler, TimerHandle

__all__ = [
    "PlainSocketFactory",
    "CertificateSource",
    "ConnectError",
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
    "LoopScheduler",
    "PoolConfig",
    "PoolKey",
    "RelayEnd",
    "Scheduler",
    "SocketFactory",
    "StreamLimitError",
    "StreamResetError",
    "TimerHandle",
    "connect",
    "link",
    "reset_transport",
]
