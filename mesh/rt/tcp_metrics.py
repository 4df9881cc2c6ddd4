"""The proxies' L4 counters with Istio's names (``istio_tcp_*``); the labels, the connection record
and the access-log line are pure, in ``mesh.telemetry``. Byte counters follow Istio's quirk: for
``reporter=source`` received and sent are flipped (the counter is from the destination's point of
view); access logs are not.
"""

from __future__ import annotations

from mesh.rt.metrics import Counter, CounterChild, Registry
from mesh.telemetry import LABELS, ConnectionRecord

__all__ = ["TcpMetrics"]

_Series = tuple[CounterChild, CounterChild, CounterChild, CounterChild]


class TcpMetrics:
    """The four stable L4 counters (ztunnel's, and a waypoint's for TCP it passes through)."""

    def __init__(self, registry: Registry) -> None:
        self.opened = Counter(
            "istio_tcp_connections_opened", "Total TCP connections opened", LABELS, registry=registry
        )
        self.closed = Counter(
            "istio_tcp_connections_closed", "Total TCP connections closed", LABELS, registry=registry
        )
        self.received = Counter(
            "istio_tcp_received_bytes",
            "Size of total bytes received during request",
            LABELS,
            registry=registry,
        )
        self.sent = Counter("istio_tcp_sent_bytes", "Size of total bytes sent", LABELS, registry=registry)
        self._series: dict[tuple[str, ...], _Series] = {}

    def _children(self, values: tuple[str, ...]) -> _Series:
        """The four counters' series for one label set: one lookup per connection instead of four."""
        series = self._series.get(values)
        if series is None:
            series = (
                self.opened.labels(*values),
                self.closed.labels(*values),
                self.received.labels(*values),
                self.sent.labels(*values),
            )
            self._series[values] = series
        return series

    def connection_opened(self, record: ConnectionRecord) -> None:
        """Counts an open (flags ``-``)."""
        self._children(record.label_values("-"))[0].inc()

    def connection_closed(
        self, record: ConnectionRecord, *, bytes_from_client: int, bytes_to_client: int, response_flags: str
    ) -> None:
        """Counts a close and its bytes; a refused connection counts as opened and closed."""
        opened, closed, received, sent = self._children(record.label_values(response_flags))
        if response_flags not in ("", "-"):
            opened.inc()
        closed.inc()
        # Istio reports bytes from the destination's point of view on both sides.
        received.inc(bytes_from_client)
        sent.inc(bytes_to_client)
