"""The /debug/syncz document: per connected subscriber, per type URL, sent / ACKed / NACKed."""

from __future__ import annotations

import datetime
from typing import Any

from istiod_lite.push.hub import Connection, Hub
from istiod_lite.push.stream import TypeStatus

__all__ = ["syncz"]


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).isoformat(timespec="milliseconds")


def _type_entry(status: TypeStatus) -> dict[str, Any]:
    acked, nacked = status.acked, status.nacked
    ack = None if acked is None else {"version": acked.version, "nonce": acked.nonce, "at": _iso(acked.at)}
    nack = None
    if nacked is not None:
        nack = {
            "version": nacked.version,
            "nonce": nacked.nonce,
            "at": _iso(nacked.at),
            "error": nacked.error,
        }
    return {
        "type_url": status.type_url,
        "subscribed": ["*"] if status.wildcard else list(status.names),
        "sent": {
            "version": status.sent_version,
            "nonce": status.sent_nonce,
            "at": _iso(status.sent_at),
            "resources": status.resources,
        },
        "acked": ack,
        "nacked": nack,
    }


def _connection_entry(connection: Connection) -> dict[str, Any]:
    subscriber = connection.subscriber
    return {
        "id": connection.id,
        "node_id": subscriber.node_id,
        "proxy_type": subscriber.proxy_type,
        "node": subscriber.node_name,
        "pod": f"{subscriber.pod}.{subscriber.namespace}",
        "ip": subscriber.ip,
        "identity": subscriber.identity,
        "connected_since": _iso(connection.connected_at),
        "types": [_type_entry(s) for s in connection.state.status()],
    }


def syncz(hub: Hub) -> dict[str, Any]:
    """The controller's current version and one entry per connected stream (JSON-ready)."""
    return {
        "version": hub.current.version if hub.current.counter else "",
        "subscribers": [_connection_entry(c) for c in hub.connections()],
    }
