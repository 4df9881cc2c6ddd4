"""ztunnel's local config file: Istio's example shape loads; every mistake names file, item, field."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from mesh.errors import ConfigError
from mesh.model import Action, Scope, StringMatch, TunnelProtocol
from ztunnel.local_config import load_local_config, parse_local_config

EXAMPLE = """
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  services:
    "default/example.com":
      80: 8080
services:
- name: example
  namespace: default
  hostname: example.com
  vips: ["/127.10.0.1"]
  ports:
    80: 8080
policies:
- name: deny-9999
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - - - notDestinationPorts: [9999]
        principals: [{Prefix: "cluster.local/ns/default/"}, Presence]
        sourceIps: ["10.0.0.0/8"]
"""


def test_istio_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(EXAMPLE)
    state = load_local_config(path)
    workload = state.workload_at(ip_address("127.0.0.1"))
    assert workload is not None and workload.protocol is TunnelProtocol.HBONE
    assert workload.target_port("default/example.com", 80) == 8080
    service = state.service_at(ip_address("127.10.0.1"))
    assert service is not None and service.key == "default/example.com"
    policy = state.policies["default/deny-9999"]
    assert (policy.scope, policy.action) == (Scope.NAMESPACE, Action.ALLOW)
    match = policy.rules[0][0][0]
    assert match.not_destination_ports == (9999,)
    assert match.principals == (StringMatch.prefix("cluster.local/ns/default/"), StringMatch.presence())
    assert match.source_ips == (ip_network("10.0.0.0/8"),)
    assert state.endpoints("default/example.com") == (workload,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workloads: {}", "workloads: must be a list"),
        ("workloads: [{name: a, namespace: b, protocol: QUIC}]", "workloads[0].protocol: 'QUIC' is neither"),
        (
            "workloads: [{name: a, namespace: b, workloadIps: [nope]}]",
            "workloads[0].workloadIps: 'nope' is not an IP",
        ),
        ("workloads: [{name: a, namespace: b, colour: red}]", "workloads[0]: unknown key(s) colour"),
        ("workloads: [{namespace: b}]", "name and namespace are required"),
        (
            "services: [{hostname: h, namespace: n, vips: [1.2.3.4]}]",
            "services[0].vips[0]: '1.2.3.4' must be \"<network>/<ip>\"",
        ),
        (
            "services: [{hostname: h, namespace: n, ports: {80: 70000}}]",
            "services[0].ports.80: 70000 is not a TCP port",
        ),
        ("policies: [{name: p, namespace: n, scope: Cluster}]", "policies[0].scope: 'Cluster' is not one of"),
        ("policies: [{name: p, namespace: n, action: Audit}]", "policies[0].action: 'Audit' is not one of"),
        (
            "policies: [{name: p, namespace: n, rules: [[[{sourceIps: [bad]}]]]}]",
            "policies[0].rules[0][0][0].sourceIps[0]",
        ),
        (
            "policies: [{name: p, namespace: n, rules: [[[{principals: [{Regex: x}]}]]]}]",
            "must be {Exact|Prefix|Suffix: text}",
        ),
        (
            "policies: [{name: p, namespace: n, rules: [[[{destinationPort: [1]}]]]}]",
            "unknown key(s) destinationPort",
        ),
        ("colours: []", "top level: unknown key(s) colours"),
        ("workloads: [", "not valid YAML"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_local_config(text, source="local.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("local.yaml: ")


def test_missing_file_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOCAL_XDS_PATH"):
        load_local_config(tmp_path / "absent.yaml")
