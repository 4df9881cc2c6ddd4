"""Istio's workload API, authorization, ZDS and CA protos as upstream defines them: the table our
generated code is checked against (tests/unit/test_api_upstream.py).

Written from istio/ztunnel at commit 62d826530e5ce85764e309170205b293efcbc80b, files
proto/workload.proto, proto/authorization.proto, proto/zds.proto and proto/citadel.proto (the same
messages istio/istio vendors under pkg/workloadapi and istio/api's security/v1alpha1). Nothing here
is read from our .proto files: when upstream adds a field, add its row here first.

MESSAGES: full name -> rows of (number, field name, type, label, oneof name or "").
Types are scalar names or full message/enum names; labels are optional, repeated or
proto3_optional (an explicit ``optional`` in proto3). Map fields appear as repeated ``...Entry``
messages, as protobuf encodes them.
"""

from __future__ import annotations

MESSAGES: dict[str, list[tuple[int, str, str, str, str]]] = {
    "istio.workload.Address": [
        (1, "workload", "istio.workload.Workload", "optional", "type"),
        (2, "service", "istio.workload.Service", "optional", "type"),
    ],
    "istio.workload.Service": [
        (1, "name", "string", "optional", ""),
        (2, "namespace", "string", "optional", ""),
        (3, "hostname", "string", "optional", ""),
        (4, "addresses", "istio.workload.NetworkAddress", "repeated", ""),
        (5, "ports", "istio.workload.Port", "repeated", ""),
        (6, "subject_alt_names", "string", "repeated", ""),
        (7, "waypoint", "istio.workload.GatewayAddress", "optional", ""),
        (8, "load_balancing", "istio.workload.LoadBalancing", "optional", ""),
        (9, "ip_families", "istio.workload.IPFamilies", "optional", ""),
        (10, "extensions", "istio.workload.Extension", "repeated", ""),
        (11, "canonical", "bool", "optional", ""),
        (12, "ingress_use_waypoint", "bool", "optional", ""),
        (13, "weighted_waypoints", "istio.workload.WeightedWaypoint", "repeated", ""),
        (14, "visibility", "istio.workload.Service.Visibility", "optional", ""),
    ],
    "istio.workload.LoadBalancing": [
        (1, "routing_preference", "istio.workload.LoadBalancing.Scope", "repeated", ""),
        (2, "mode", "istio.workload.LoadBalancing.Mode", "optional", ""),
        (3, "health_policy", "istio.workload.LoadBalancing.HealthPolicy", "optional", ""),
    ],
    "istio.workload.Workload": [
        (20, "uid", "string", "optional", ""),
        (1, "name", "string", "optional", ""),
        (2, "namespace", "string", "optional", ""),
        (3, "addresses", "bytes", "repeated", ""),
        (21, "hostname", "string", "optional", ""),
        (4, "network", "string", "optional", ""),
        (5, "tunnel_protocol", "istio.workload.TunnelProtocol", "optional", ""),
        (6, "trust_domain", "string", "optional", ""),
        (7, "service_account", "string", "optional", ""),
        (8, "waypoint", "istio.workload.GatewayAddress", "optional", ""),
        (19, "network_gateway", "istio.workload.GatewayAddress", "optional", ""),
        (9, "node", "string", "optional", ""),
        (10, "canonical_name", "string", "optional", ""),
        (11, "canonical_revision", "string", "optional", ""),
        (12, "workload_type", "istio.workload.WorkloadType", "optional", ""),
        (13, "workload_name", "string", "optional", ""),
        (14, "native_tunnel", "bool", "optional", ""),
        (23, "application_tunnel", "istio.workload.ApplicationTunnel", "optional", ""),
        (22, "services", "istio.workload.Workload.ServicesEntry", "repeated", ""),
        (16, "authorization_policies", "string", "repeated", ""),
        (17, "status", "istio.workload.WorkloadStatus", "optional", ""),
        (18, "cluster_id", "string", "optional", ""),
        (24, "locality", "istio.workload.Locality", "optional", ""),
        (25, "network_mode", "istio.workload.NetworkMode", "optional", ""),
        (26, "extensions", "istio.workload.Extension", "repeated", ""),
        (27, "capacity", "google.protobuf.UInt32Value", "optional", ""),
    ],
    "istio.workload.Workload.ServicesEntry": [
        (1, "key", "string", "optional", ""),
        (2, "value", "istio.workload.PortList", "optional", ""),
    ],
    "istio.workload.Locality": [
        (1, "region", "string", "optional", ""),
        (2, "zone", "string", "optional", ""),
        (3, "subzone", "string", "optional", ""),
    ],
    "istio.workload.PortList": [
        (1, "ports", "istio.workload.Port", "repeated", ""),
    ],
    "istio.workload.Port": [
        (1, "service_port", "uint32", "optional", ""),
        (2, "target_port", "uint32", "optional", ""),
        (3, "app_protocol", "istio.workload.AppProtocol", "optional", ""),
    ],
    "istio.workload.ApplicationTunnel": [
        (1, "protocol", "istio.workload.ApplicationTunnel.Protocol", "optional", ""),
        (2, "port", "uint32", "optional", ""),
    ],
    "istio.workload.GatewayAddress": [
        (1, "hostname", "istio.workload.NamespacedHostname", "optional", "destination"),
        (2, "address", "istio.workload.NetworkAddress", "optional", "destination"),
        (3, "hbone_mtls_port", "uint32", "optional", ""),
    ],
    "istio.workload.WeightedWaypoint": [
        (1, "destination", "istio.workload.GatewayAddress", "optional", ""),
        (2, "weight", "uint32", "optional", ""),
    ],
    "istio.workload.NetworkAddress": [
        (1, "network", "string", "optional", ""),
        (2, "address", "bytes", "optional", ""),
        (3, "length", "uint32", "proto3_optional", ""),
    ],
    "istio.workload.NamespacedHostname": [
        (1, "namespace", "string", "optional", ""),
        (2, "hostname", "string", "optional", ""),
    ],
    "istio.workload.Extension": [
        (1, "name", "string", "optional", ""),
        (2, "config", "google.protobuf.Any", "optional", ""),
    ],
    "istio.security.Authorization": [
        (1, "name", "string", "optional", ""),
        (2, "namespace", "string", "optional", ""),
        (3, "scope", "istio.security.Scope", "optional", ""),
        (4, "action", "istio.security.Action", "optional", ""),
        (5, "rules", "istio.security.Rule", "repeated", ""),
        (6, "dry_run", "bool", "optional", ""),
        (7, "extensions", "istio.workload.Extension", "repeated", ""),
    ],
    "istio.security.Rule": [
        (1, "clauses", "istio.security.Clause", "repeated", ""),
    ],
    "istio.security.Clause": [
        (2, "matches", "istio.security.Match", "repeated", ""),
    ],
    "istio.security.Match": [
        (1, "namespaces", "istio.security.StringMatch", "repeated", ""),
        (2, "not_namespaces", "istio.security.StringMatch", "repeated", ""),
        (11, "service_accounts", "istio.security.ServiceAccountMatch", "repeated", ""),
        (12, "not_service_accounts", "istio.security.ServiceAccountMatch", "repeated", ""),
        (3, "principals", "istio.security.StringMatch", "repeated", ""),
        (4, "not_principals", "istio.security.StringMatch", "repeated", ""),
        (5, "source_ips", "istio.security.Address", "repeated", ""),
        (6, "not_source_ips", "istio.security.Address", "repeated", ""),
        (7, "destination_ips", "istio.security.Address", "repeated", ""),
        (8, "not_destination_ips", "istio.security.Address", "repeated", ""),
        (9, "destination_ports", "uint32", "repeated", ""),
        (10, "not_destination_ports", "uint32", "repeated", ""),
        (13, "extensions", "istio.workload.Extension", "repeated", ""),
    ],
    "istio.security.Address": [
        (1, "address", "bytes", "optional", ""),
        (2, "length", "uint32", "optional", ""),
    ],
    "istio.security.ServiceAccountMatch": [
        (1, "namespace", "string", "optional", ""),
        (2, "serviceAccount", "string", "optional", ""),
    ],
    "istio.security.StringMatch": [
        (1, "exact", "string", "optional", "match_type"),
        (2, "prefix", "string", "optional", "match_type"),
        (3, "suffix", "string", "optional", "match_type"),
        (4, "presence", "google.protobuf.Empty", "optional", "match_type"),
    ],
    "istio.workload.zds.ZdsHello": [
        (1, "version", "istio.workload.zds.Version", "optional", ""),
    ],
    "istio.workload.zds.WorkloadInfo": [
        (1, "name", "string", "optional", ""),
        (2, "namespace", "string", "optional", ""),
        (3, "service_account", "string", "optional", ""),
    ],
    "istio.workload.zds.AddWorkload": [
        (1, "uid", "string", "optional", ""),
        (2, "workload_info", "istio.workload.zds.WorkloadInfo", "optional", ""),
    ],
    "istio.workload.zds.KeepWorkload": [
        (1, "uid", "string", "optional", ""),
    ],
    "istio.workload.zds.DelWorkload": [
        (2, "uid", "string", "optional", ""),
    ],
    "istio.workload.zds.SnapshotSent": [],
    "istio.workload.zds.Ack": [
        (1, "error", "string", "optional", ""),
    ],
    "istio.workload.zds.WorkloadRequest": [
        (1, "add", "istio.workload.zds.AddWorkload", "optional", "payload"),
        (5, "keep", "istio.workload.zds.KeepWorkload", "optional", "payload"),
        (2, "del", "istio.workload.zds.DelWorkload", "optional", "payload"),
        (3, "snapshot_sent", "istio.workload.zds.SnapshotSent", "optional", "payload"),
    ],
    "istio.workload.zds.WorkloadResponse": [
        (1, "ack", "istio.workload.zds.Ack", "optional", "payload"),
    ],
    "istio.v1.auth.IstioCertificateRequest": [
        (1, "csr", "string", "optional", ""),
        (3, "validity_duration", "int64", "optional", ""),
        (4, "metadata", "google.protobuf.Struct", "optional", ""),
    ],
    "istio.v1.auth.IstioCertificateResponse": [
        (1, "cert_chain", "string", "repeated", ""),
    ],
}

# Enum full name -> (value name, number) in declaration order.
ENUMS: dict[str, list[tuple[str, int]]] = {
    "istio.workload.Service.Visibility": [("PUBLIC", 0), ("NAMESPACE", 1)],
    "istio.workload.LoadBalancing.Scope": [
        ("UNSPECIFIED_SCOPE", 0),
        ("REGION", 1),
        ("ZONE", 2),
        ("SUBZONE", 3),
        ("NODE", 4),
        ("CLUSTER", 5),
        ("NETWORK", 6),
    ],
    "istio.workload.LoadBalancing.Mode": [
        ("UNSPECIFIED_MODE", 0),
        ("STRICT", 1),
        ("FAILOVER", 2),
        ("PASSTHROUGH", 3),
    ],
    "istio.workload.LoadBalancing.HealthPolicy": [("ONLY_HEALTHY", 0), ("ALLOW_ALL", 1)],
    "istio.workload.ApplicationTunnel.Protocol": [("NONE", 0), ("PROXY", 1)],
    "istio.workload.IPFamilies": [("AUTOMATIC", 0), ("IPV4_ONLY", 1), ("IPV6_ONLY", 2), ("DUAL", 3)],
    "istio.workload.NetworkMode": [("STANDARD", 0), ("HOST_NETWORK", 1)],
    "istio.workload.WorkloadStatus": [("HEALTHY", 0), ("UNHEALTHY", 1)],
    "istio.workload.WorkloadType": [("DEPLOYMENT", 0), ("CRONJOB", 1), ("POD", 2), ("JOB", 3)],
    "istio.workload.AppProtocol": [
        ("UNKNOWN", 0),
        ("HTTP11", 1),
        ("HTTP2", 2),
        ("GRPC", 3),
        ("TCP", 4),
        ("TLS", 5),
    ],
    "istio.workload.TunnelProtocol": [("NONE", 0), ("HBONE", 1), ("LEGACY_ISTIO_MTLS", 2)],
    "istio.security.Scope": [("GLOBAL", 0), ("NAMESPACE", 1), ("WORKLOAD_SELECTOR", 2)],
    "istio.security.Action": [("ALLOW", 0), ("DENY", 1)],
    "istio.workload.zds.Version": [("NOT_USED", 0), ("V1", 1)],
}

# Message -> (reserved names, reserved numbers).
RESERVED: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "istio.workload.Workload": ((), (15,)),
    "istio.workload.GatewayAddress": (("hbone_single_tls_port",), (4,)),
    "istio.workload.zds.WorkloadInfo": (("trust_domain",), (4,)),
}

# Which messages each upstream file defines (our four .proto files must define the same).
FILES: dict[str, list[str]] = {
    "workload.proto": [
        "istio.workload.Address",
        "istio.workload.Service",
        "istio.workload.LoadBalancing",
        "istio.workload.Workload",
        "istio.workload.Workload.ServicesEntry",
        "istio.workload.Locality",
        "istio.workload.PortList",
        "istio.workload.Port",
        "istio.workload.ApplicationTunnel",
        "istio.workload.GatewayAddress",
        "istio.workload.WeightedWaypoint",
        "istio.workload.NetworkAddress",
        "istio.workload.NamespacedHostname",
        "istio.workload.Extension",
    ],
    "authorization.proto": [
        "istio.security.Authorization",
        "istio.security.Rule",
        "istio.security.Clause",
        "istio.security.Match",
        "istio.security.Address",
        "istio.security.ServiceAccountMatch",
        "istio.security.StringMatch",
    ],
    "zds.proto": [
        "istio.workload.zds.ZdsHello",
        "istio.workload.zds.WorkloadInfo",
        "istio.workload.zds.AddWorkload",
        "istio.workload.zds.KeepWorkload",
        "istio.workload.zds.DelWorkload",
        "istio.workload.zds.SnapshotSent",
        "istio.workload.zds.Ack",
        "istio.workload.zds.WorkloadRequest",
        "istio.workload.zds.WorkloadResponse",
    ],
    "citadel.proto": ["istio.v1.auth.IstioCertificateRequest", "istio.v1.auth.IstioCertificateResponse"],
}
