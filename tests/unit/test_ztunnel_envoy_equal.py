"""The equal-work Envoy pair's configs (issue 16 part 2): what each adds to the bare HBONE pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mesh.identity.spiffe import WorkloadIdentity
from mesh.ports import MESH_MARK
from mesh.rt.tls import TlsMaterial
from mesh.testing.envoy_hbone import hbone_client_config, hbone_server_config
from perf._ztunnel_envoy_equal import equal_client_config, equal_server_config

CLIENT = WorkloadIdentity("cluster.local", "plain", "client")
SERVER = WorkloadIdentity("cluster.local", "plain", "server")


def _material(identity: WorkloadIdentity) -> TlsMaterial:
    return TlsMaterial(identity=identity, key_pem=b"k", chain_pem=b"c", roots_pem=b"r")


def _bare_client() -> dict[str, Any]:
    return hbone_client_config(
        material=_material(CLIENT), server=("10.0.0.2", 15008), expected=frozenset({SERVER}), authority="x:1"
    )


def _bare_server() -> dict[str, Any]:
    return hbone_server_config(material=_material(SERVER), upstream=("127.0.0.1", 6379))


def _listener(config: dict[str, Any]) -> dict[str, Any]:
    listener: dict[str, Any] = config["static_resources"]["listeners"][0]
    return listener


def test_client_takes_captured_connections_and_tunnels_each_to_its_original_destination() -> None:
    bare = _bare_client()
    config = equal_client_config(bare, log_path=Path("/tmp/a.log"))
    listener = _listener(config)
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15001}
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.original_dst"]
    tcp_proxy = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert tcp_proxy["tunneling_config"]["hostname"] == "%DOWNSTREAM_LOCAL_ADDRESS%"
    assert tcp_proxy["access_log"][0]["typed_config"]["path"] == "/tmp/a.log"
    bind = config["static_resources"]["clusters"][0]["upstream_bind_config"]
    assert [(o["level"], o["name"], o["int_value"]) for o in bind["socket_options"]] == [(1, 36, MESH_MARK)]
    assert "listener_filters" not in _listener(bare)  # the bare config is left alone


def test_server_checks_the_client_identity_and_delivers_from_its_address() -> None:
    config = equal_server_config(
        _bare_server(), client=CLIENT, upstream=("10.0.0.2", 6379), log_path=Path("/tmp/b.log")
    )
    filters = _listener(config)["filter_chains"][0]["filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.http_connection_manager",
    ]
    rules = filters[0]["typed_config"]["rules"]
    assert rules["action"] == "ALLOW"
    assert rules["policies"]["client"]["principals"] == [
        {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/plain/sa/client"}}}
    ]
    hcm = filters[1]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == [
        "envoy.filters.http.original_src",
        "envoy.filters.http.router",
    ]
    assert hcm["http_filters"][0]["typed_config"]["mark"] == MESH_MARK
    assert hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]["src.identity"] == (
        "%DOWNSTREAM_PEER_URI_SAN%"
    )
    cluster = config["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "10.0.0.2", "port_value": 6379}
