"""The equal-work Envoy pair of the ztunnel benchmark (issue 16 part 2).

The bare pair (:mod:`perf._ztunnel_envoy`) is the least Envoy can do for HBONE. This one does, per
connection, what ztunnel does, as Istio's sidecars did it:

- **capture**: both pods get ztunnel's own capture rules (``ztunnel.cni.rules.plan_capture``,
  applied by the node agent's ``NetnsRules``, pod sysctls included); Envoy A listens on 15001 with
  the ``original_dst`` listener filter, and the CONNECT authority is each connection's original
  destination (``%DOWNSTREAM_LOCAL_ADDRESS%``); A's upstream sockets carry the mesh mark 0x539 so the
  rules skip them, as ztunnel's do;
- **policy**: Envoy B's network RBAC filter allows the client's SPIFFE identity (the same L4 rule an
  ``AuthorizationPolicy`` with that principal gives ztunnel). Envoy evaluates it once per HBONE
  connection; ztunnel checks each CONNECT stream;
- **telemetry**: a JSON access-log line per connection on both sides, with ztunnel's dotted keys;
- **delivery**: B connects to the server pod's own IP from the client's address (the
  ``original_src`` HTTP filter, marked 0x539, so the pod's connmark rules route the replies back).

What stays different: Envoy keeps one fixed HBONE upstream per pair (no per-destination lookup or
pool keyed by identity) and no xDS or certificate rotation runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mesh.identity.spiffe import WorkloadIdentity
from mesh.ports import MESH_MARK
from ztunnel.cni.apply import NetnsRules
from ztunnel.cni.rules import POD_SYSCTLS

__all__ = ["captured", "equal_client_config", "equal_server_config"]

_SOL_SOCKET, _SO_MARK = 1, 36
_ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
_ORIGINAL_SRC = "type.googleapis.com/envoy.extensions.filters.http.original_src.v3.OriginalSrc"
_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_LOG_FIELDS = {
    "src.addr": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "src.identity": "%DOWNSTREAM_PEER_URI_SAN%",
    "dst.addr": "%UPSTREAM_HOST%",
    "dst.identity": "%UPSTREAM_PEER_URI_SAN%",
    "authority": "%REQ(:AUTHORITY)%",
    "bytes_sent": "%BYTES_SENT%",
    "bytes_recv": "%BYTES_RECEIVED%",
    "duration": "%DURATION%",
    "response_flags": "%RESPONSE_FLAGS%",
}


def _access_log(path: Path) -> list[dict[str, Any]]:
    config = {"@type": _FILE_LOG, "path": str(path), "log_format": {"json_format": _LOG_FIELDS}}
    return [{"name": "envoy.access_loggers.file", "typed_config": config}]


def _chain_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    return filters


def equal_client_config(bare: dict[str, Any], *, log_path: Path) -> dict[str, Any]:
    """Envoy A doing ztunnel's outbound work: captured connections, per-connection authority, a log line."""
    config = copy.deepcopy(bare)
    listener = config["static_resources"]["listeners"][0]
    listener["address"] = {"socket_address": {"address": "0.0.0.0", "port_value": 15001}}
    listener["listener_filters"] = [
        {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": _ORIGINAL_DST}}
    ]
    tcp_proxy = _chain_filters(config)[0]["typed_config"]
    tcp_proxy["tunneling_config"]["hostname"] = "%DOWNSTREAM_LOCAL_ADDRESS%"
    tcp_proxy["access_log"] = _access_log(log_path)
    mark = {"level": _SOL_SOCKET, "name": _SO_MARK, "int_value": MESH_MARK, "state": "STATE_PREBIND"}
    config["static_resources"]["clusters"][0]["upstream_bind_config"] = {
        "source_address": {"address": "0.0.0.0", "port_value": 0},
        "socket_options": [mark],
    }
    return config


def equal_server_config(
    bare: dict[str, Any], *, client: WorkloadIdentity, upstream: tuple[str, int], log_path: Path
) -> dict[str, Any]:
    """Envoy B doing ztunnel's inbound work: L4 policy, delivery from the client's IP, a log line."""
    config = copy.deepcopy(bare)
    filters = _chain_filters(config)
    principal = {"authenticated": {"principal_name": {"exact": client.uri}}}
    rules = {
        "action": "ALLOW",
        "policies": {"client": {"permissions": [{"any": True}], "principals": [principal]}},
    }
    rbac = {"@type": _RBAC, "stat_prefix": "l4_policy", "rules": rules}
    filters.insert(0, {"name": "envoy.filters.network.rbac", "typed_config": rbac})
    hcm = filters[-1]["typed_config"]
    hcm["access_log"] = _access_log(log_path)
    original_src = {"@type": _ORIGINAL_SRC, "mark": MESH_MARK}
    hcm["http_filters"].insert(0, {"name": "envoy.filters.http.original_src", "typed_config": original_src})
    cluster = config["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"] = {"socket_address": {"address": upstream[0], "port_value": upstream[1]}}
    return config


@contextlib.contextmanager
def captured(*netns_names: str) -> Iterator[None]:
    """ztunnel's capture rules and pod sysctls in each namespace, removed again at the end, with the
    sysctls put back to what they were (release would write the kernel defaults: the benchmark sets
    ``tcp_tw_reuse`` in its client pods, and the direct path runs in these same pods)."""
    rules = NetnsRules()
    keys = [sysctl.key for sysctl in POD_SYSCTLS]
    before = {name: {key: _sysctl(name, key) for key in keys} for name in netns_names}
    try:
        for name in netns_names:
            asyncio.run(rules.ensure_capture(f"/var/run/netns/{name}"))
        yield
    finally:
        for name in netns_names:
            asyncio.run(rules.release(f"/var/run/netns/{name}"))
            for key, value in before[name].items():
                _sysctl(name, key, value)


def _sysctl(netns: str, key: str, value: str | None = None) -> str:
    """Reads ``key`` in the namespace, or writes ``value`` to it."""
    argv = ["sysctl", "-n", key] if value is None else ["sysctl", "-qw", f"{key}={value}"]
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True)
    return done.stdout.strip()
