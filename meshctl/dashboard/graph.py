"""The service graph from Istio's standard metrics (pure): Kiali's approach, on the queries Istio's
dashboards use.

Nodes are workloads (``namespace/workload``). An HTTP edge comes from ``istio_requests_total`` and
``istio_request_duration_milliseconds`` as the waypoint reports them (``reporter="waypoint"``; a
proxy reporting as ``destination`` or ``source`` counts when no waypoint saw the pair); a TCP edge
from ztunnel's ``istio_tcp_*`` (``reporter="destination"``, which also sees unmeshed callers, else
``source``). The TCP legs into and out of a waypoint are the transport of the HTTP edges that name
it (``via``), so they are not drawn twice. An edge is locked when its traffic was mutual TLS
(``connection_security_policy="mutual_tls"``); a caller is unmeshed when the live mesh says its
pods are not enrolled, or, without the live mesh, when none of its traffic is mutual TLS. From the
live mesh each node also carries ``enrolled`` and the authorization ``policies`` selecting it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EdgeKey",
    "Graph",
    "QUERIES",
    "Sample",
    "build_graph",
    "histogram_quantile",
    "edge_series_queries",
    "parse_vector",
]

_PAIR = "source_workload, source_workload_namespace, destination_workload, destination_workload_namespace"
_WAYPOINT_LABEL = "gateway_networking_k8s_io_gateway_name"
"""The waypoint pod's Gateway label, as Prometheus's pod discovery maps it onto its series."""


def _by(*extra: str) -> str:
    return ", ".join((_PAIR, "reporter", *extra))


_HTTP_BY = _by("response_code", "connection_security_policy", "namespace", _WAYPOINT_LABEL)
QUERIES: Mapping[str, str] = {
    "http_rate": f"sum by ({_HTTP_BY}) (rate(istio_requests_total[{{window}}]))",
    "http_buckets": f"sum by ({_by('le')}) (rate(istio_request_duration_milliseconds_bucket[{{window}}]))",
    "tcp_opened": f"sum by ({_by('connection_security_policy')})"
    " (rate(istio_tcp_connections_opened_total[{window}]))",
    "tcp_bytes": f"sum by ({_by('connection_security_policy')})"
    " (rate(istio_tcp_sent_bytes_total[{window}]) + rate(istio_tcp_received_bytes_total[{window}]))",
}
"""PromQL per signal; ``{window}`` is the rate window (e.g. ``1m``)."""

_HTTP_REPORTERS = ("waypoint", "destination", "source")
_TCP_REPORTERS = ("destination", "source")


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant vector: its labels and value."""

    labels: Mapping[str, str]
    value: float


EdgeKey = tuple[str, str, str]
"""(source node id, target node id, protocol ``http`` or ``tcp``)."""


@dataclass(slots=True)
class _Edge:
    source: str
    target: str
    protocol: str
    rate: float = 0.0
    errors: float = 0.0
    bytes_per_s: float = 0.0
    mtls_rate: float = 0.0
    p50: float | None = None
    p99: float | None = None
    via: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Graph:
    """Nodes and edges, ready for JSON (see :meth:`to_json`)."""

    nodes: dict[str, dict[str, Any]]
    edges: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...]}`` sorted, for the page and for scripts."""
        return {"nodes": [self.nodes[k] for k in sorted(self.nodes)], "edges": self.edges}


def parse_vector(answer: Mapping[str, Any]) -> list[Sample]:
    """The samples of a Prometheus ``/api/v1/query`` answer; raises ValueError if it is not one."""
    if answer.get("status") != "success":
        raise ValueError(f"Prometheus answered {answer.get('status')!r}: {answer.get('error', '')}")
    data = answer.get("data") or {}
    if data.get("resultType") != "vector":
        raise ValueError(f"expected an instant vector, got {data.get('resultType')!r}")
    samples = []
    for item in data.get("result") or []:
        value = float(item["value"][1])
        if not math.isnan(value):  # NaN: a quantile with no observations in the window
            samples.append(Sample({str(k): str(v) for k, v in item["metric"].items()}, value))
    return samples


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus's ``histogram_quantile``: ``buckets`` are (upper bound ``le``, cumulative rate);
    linear interpolation inside the bucket the rank falls in, from 0 for the first bucket; a rank
    in the ``+Inf`` bucket answers the highest finite bound. None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][0] != math.inf or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == math.inf:
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _node_id(namespace: str, workload: str) -> str:
    return f"{namespace or 'unknown'}/{workload or 'unknown'}"


def _pair(labels: Mapping[str, str]) -> tuple[str, str]:
    return (
        _node_id(labels.get("source_workload_namespace", ""), labels.get("source_workload", "")),
        _node_id(labels.get("destination_workload_namespace", ""), labels.get("destination_workload", "")),
    )


def _preferred(samples: Iterable[Sample], order: Sequence[str]) -> list[Sample]:
    """Per source/destination pair, only the samples of the first reporter in ``order`` that saw it
    (the same traffic is reported at each end: count it once)."""
    best: dict[tuple[str, str], int] = {}
    kept = [s for s in samples if s.labels.get("reporter") in order]
    for sample in kept:
        rank = order.index(sample.labels["reporter"])
        pair = _pair(sample.labels)
        best[pair] = min(rank, best.get(pair, rank))
    return [s for s in kept if order.index(s.labels["reporter"]) == best[_pair(s.labels)]]


def build_graph(
    results: Mapping[str, Sequence[Sample]],
    *,
    workloads: Sequence[Mapping[str, Any]] | None = None,
    namespace: str = "",
) -> Graph:
    """The graph from the :data:`QUERIES` results; ``workloads`` is istiod_lite's ``/debug/workloadz``
    list when the live mesh answered; ``namespace`` keeps the edges with an end in it."""
    edges: dict[EdgeKey, _Edge] = {}
    waypoints: set[str] = set()

    def edge(labels: Mapping[str, str], protocol: str) -> _Edge:
        source, target = _pair(labels)
        key = (source, target, protocol)
        if key not in edges:
            edges[key] = _Edge(source, target, protocol)
        return edges[key]

    for sample in _preferred(results.get("http_rate", ()), _HTTP_REPORTERS):
        e = edge(sample.labels, "http")
        e.rate += sample.value
        if sample.labels.get("response_code", "").startswith("5"):
            e.errors += sample.value
        if (
            sample.labels.get("connection_security_policy") == "mutual_tls"
            or sample.labels["reporter"] == "waypoint"
        ):
            e.mtls_rate += sample.value  # a waypoint is reached over HBONE only
        gateway = sample.labels.get(_WAYPOINT_LABEL)
        if sample.labels["reporter"] == "waypoint" and gateway:
            e.via.add(_node_id(sample.labels.get("namespace", ""), gateway))
            waypoints.add(_node_id(sample.labels.get("namespace", ""), gateway))
    buckets: dict[EdgeKey, list[tuple[float, float]]] = {}
    for sample in _preferred(results.get("http_buckets", ()), _HTTP_REPORTERS):
        key = (*_pair(sample.labels), "http")
        buckets.setdefault(key, []).append((float(sample.labels.get("le", "+Inf")), sample.value))
    for key, counts in buckets.items():
        if key in edges:
            edges[key].p50 = histogram_quantile(0.5, counts)
            edges[key].p99 = histogram_quantile(0.99, counts)
    for sample in _preferred(results.get("tcp_opened", ()), _TCP_REPORTERS):
        e = edge(sample.labels, "tcp")
        e.rate += sample.value
        if sample.labels.get("connection_security_policy") == "mutual_tls":
            e.mtls_rate += sample.value
    for sample in _preferred(results.get("tcp_bytes", ()), _TCP_REPORTERS):
        e = edge(sample.labels, "tcp")
        e.bytes_per_s += sample.value
        if sample.labels.get("connection_security_policy") == "mutual_tls" and not e.rate:
            e.mtls_rate = max(e.mtls_rate, sample.value)
    for w in workloads or ():  # the live mesh names each workload's waypoint as <ns>/<hostname>
        ns, slash, hostname = str(w.get("waypoint", "")).partition("/")
        if slash:
            waypoints.add(_node_id(ns, hostname.split(".")[0]))
    kept = [
        e
        for e in edges.values()
        if not (e.protocol == "tcp" and (e.source in waypoints or e.target in waypoints))
        and (not namespace or namespace in (e.source.split("/")[0], e.target.split("/")[0]))
    ]
    return Graph(_nodes(kept, waypoints, workloads), [_edge_json(e) for e in sorted(kept, key=_order)])


def _order(e: _Edge) -> EdgeKey:
    return (e.source, e.target, e.protocol)


def _edge_json(e: _Edge) -> dict[str, Any]:
    return {
        "id": f"{e.source}->{e.target}:{e.protocol}",
        "source": e.source,
        "target": e.target,
        "protocol": e.protocol,
        "rate": round(e.rate, 3),
        "rateUnit": "req/s" if e.protocol == "http" else "conn/s",
        "errorPercent": round(100.0 * e.errors / e.rate, 2) if e.rate else 0.0,
        "bytesPerSecond": round(e.bytes_per_s, 1),
        "p50Ms": None if e.p50 is None else round(e.p50, 2),
        "p99Ms": None if e.p99 is None else round(e.p99, 2),
        "mtls": bool(e.mtls_rate) and e.mtls_rate >= 0.999 * max(e.rate, e.mtls_rate),
        "via": sorted(e.via),
    }


def _nodes(
    edges: Sequence[_Edge], waypoints: set[str], workloads: Sequence[Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    enrolled: dict[str, bool] = {}
    policies: dict[str, set[str]] = {}
    for w in workloads or ():
        node = _node_id(str(w.get("namespace", "")), str(w.get("workload") or w.get("name") or ""))
        enrolled[node] = enrolled.get(node, False) or w.get("protocol") == "HBONE"
        policies.setdefault(node, set()).update(str(p) for p in w.get("policies") or ())
    sends_mtls: dict[str, bool] = {}
    for e in edges:
        sends_mtls[e.source] = sends_mtls.get(e.source, False) or _edge_json(e)["mtls"]
    nodes: dict[str, dict[str, Any]] = {}
    for node in {n for e in edges for n in (e.source, e.target)} | {w for e in edges for w in e.via}:
        namespace, _, workload = node.partition("/")
        # not in the live mesh (or no live mesh): judged by its traffic
        unmeshed = not enrolled[node] if node in enrolled else node in sends_mtls and not sends_mtls[node]
        nodes[node] = {
            "id": node,
            "namespace": namespace,
            "workload": workload,
            "kind": "waypoint" if node in waypoints else ("unknown" if workload == "unknown" else "workload"),
            "unmeshed": unmeshed and node not in waypoints,
            "enrolled": enrolled.get(node),
            "policies": sorted(policies.get(node, ())),
        }
    return nodes


def edge_series_queries(source: str, target: str, protocol: str, window: str = "1m") -> dict[str, str]:
    """PromQL for one edge's golden signals over time (for ``query_range``), by node ids."""
    src_ns, _, src = source.partition("/")
    dst_ns, _, dst = target.partition("/")
    select = (
        f'source_workload="{_quote(src)}",source_workload_namespace="{_quote(src_ns)}",'
        f'destination_workload="{_quote(dst)}",destination_workload_namespace="{_quote(dst_ns)}"'
    )
    if protocol == "tcp":
        tcp = f'reporter="destination",{select}'
        return {
            "conn/s": f"sum(rate(istio_tcp_connections_opened_total{{{tcp}}}[{window}]))",
            "bytes/s": f"sum(rate(istio_tcp_sent_bytes_total{{{tcp}}}[{window}]))"
            f" + sum(rate(istio_tcp_received_bytes_total{{{tcp}}}[{window}]))",
        }
    http = f'reporter=~"waypoint|destination",{select}'
    rate = f"sum(rate(istio_requests_total{{{http}}}[{window}]))"
    buckets = f"sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{http}}}[{window}]))"
    return {
        "req/s": rate,
        "error %": f'100 * sum(rate(istio_requests_total{{{http},response_code=~"5.."}}[{window}])) / {rate}',
        "p50 ms": f"histogram_quantile(0.5, {buckets})",
        "p99 ms": f"histogram_quantile(0.99, {buckets})",
    }


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
