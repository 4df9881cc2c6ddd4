"""Two Envoys doing HBONE between two lab pods, for the ztunnel benchmark's comparison path.

The configs come from :mod:`mesh.testing.envoy_hbone` (the same ones ``perf.bench_hbone`` and the
interop tests use: TLS 1.3 only, ALPN h2, ztunnel's windows, SPIFFE SAN checks); only the listener
addresses change. Envoy A runs in the client pod's namespace with a plain TCP listener on
``127.0.0.1:15001`` and carries each connection as a CONNECT stream over mTLS to Envoy B, which
runs in the server pod's namespace on ``0.0.0.0:15008``, terminates CONNECT and connects to the
server on ``127.0.0.1``. Both run ``--concurrency 1 --disable-hot-restart`` with a distinct
``--base-id``, in their own session, and are stopped by PID (calibration traps 2-4).

Unlike ztunnel, the bare pair captures nothing: the client connects to Envoy A explicitly. With
``equal=True`` the pair does ztunnel's per-connection work (:mod:`perf._ztunnel_envoy_equal`): the
client connects to the server's address and is captured.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.tls import TlsMaterial
from mesh.testing.envoy_hbone import envoy_binary, hbone_client_config, hbone_server_config
from mesh.testing.pki import TestPki, chain_pem
from mesh.testing.processes import stop_process
from meshctl.nethttp import http_get
from perf._ztunnel_envoy_equal import equal_client_config, equal_server_config

__all__ = ["ENVOY_A_PORT", "ENVOY_B_PORT", "EnvoyPair", "PairSpec", "envoy_pair", "make_materials"]

ENVOY_A_PORT = 15001
ENVOY_B_PORT = 15008
_base_ids = itertools.count((os.getpid() * 16) % 2**20 + 2000)


@dataclass(frozen=True, slots=True)
class PairSpec:
    """Where the two Envoys run and what B connects to."""

    client_netns: str
    server_netns: str
    server_ip: str
    target_port: int
    """The server's port inside its pod (B connects to 127.0.0.1 on it)."""


@dataclass(frozen=True, slots=True)
class EnvoyPair:
    """Two running Envoys: the PIDs (A, B) and where the client connects (inside its pod)."""

    pids: tuple[int, int]
    listener: tuple[str, int]


def make_materials(client: tuple[str, str], server: tuple[str, str]) -> tuple[TlsMaterial, TlsMaterial]:
    """Throwaway credentials from the test PKI for (namespace, service account) of client and server."""
    pki = TestPki.create()
    out = []
    for ns, sa in (client, server):
        uri = pki.workload_uri(ns, sa)
        leaf = pki.issue_leaf(uri)
        out.append(
            TlsMaterial(
                identity=WorkloadIdentity.parse(uri),
                key_pem=leaf.key_pem,
                chain_pem=chain_pem([leaf.cert]),
                roots_pem=pki.root_pem,
            )
        )
    return out[0], out[1]


def _with_listener(config: dict[str, Any], host: str, port: int) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    listener["address"] = {"socket_address": {"address": host, "port_value": port}}
    return config


class _Envoy:
    """One Envoy started with ``ip netns exec`` (which execs, so the PID is Envoy's)."""

    def __init__(self, config: dict[str, Any], *, netns: str, workdir: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.netns = netns
        self.admin_file = workdir / f"{name}.admin"
        self.admin_file.unlink(missing_ok=True)
        self.log_path = workdir / f"{name}.log"
        cmd = ["ip", "netns", "exec", netns, str(envoy_binary()), "-c", str(config_path),
               "--concurrency", "1", "--disable-hot-restart", "--base-id", str(next(_base_ids)),
               "--admin-address-path", str(self.admin_file), "--log-level", "warn",
               "--log-path", str(self.log_path)]  # fmt: skip
        devnull = subprocess.DEVNULL
        self.process = subprocess.Popen(
            cmd, stdin=devnull, stdout=devnull, stderr=devnull, start_new_session=True
        )

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Until the admin says LIVE and the listener is bound; raises with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
                raise RuntimeError(
                    f"envoy in {self.netns} did not start (exit {self.process.returncode}):\n{tail}"
                )
            time.sleep(0.05)

    def _ready(self) -> bool:
        text = self.admin_file.read_text().strip() if self.admin_file.exists() else ""
        if not text:
            return False
        host, _, port = text.rpartition(":")
        try:
            status, body = http_get(host, int(port), "/ready", netns=self.netns, timeout=2)
            if status != 200 or body.strip() != b"LIVE":
                return False
            _, listeners = http_get(host, int(port), "/listeners?format=json", netns=self.netns, timeout=2)
        except OSError:
            return False
        statuses = json.loads(listeners).get("listener_statuses", [])
        return any(s.get("local_address", {}).get("socket_address", {}).get("port_value") for s in statuses)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; this PID only."""
        stop_process(self.process)


def _configs(
    spec: PairSpec, *, client: TlsMaterial, server: TlsMaterial, workdir: Path, equal: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(A's, B's) bootstrap; the equal-work ones only when the pods are captured (see ``captured``)."""
    b_config = hbone_server_config(
        material=server, upstream=("127.0.0.1", spec.target_port), clients=frozenset({client.identity})
    )
    a_config = hbone_client_config(
        material=client,
        server=(spec.server_ip, ENVOY_B_PORT),
        expected=frozenset({server.identity}),
        authority=f"{spec.server_ip}:{spec.target_port}",
    )
    b_config = _with_listener(b_config, "0.0.0.0", ENVOY_B_PORT)
    if not equal:
        return _with_listener(a_config, "127.0.0.1", ENVOY_A_PORT), b_config
    upstream = (spec.server_ip, spec.target_port)
    return (
        equal_client_config(a_config, log_path=workdir / "envoy-a-access.log"),
        equal_server_config(
            b_config, client=client.identity, upstream=upstream, log_path=workdir / "envoy-b-access.log"
        ),
    )


@contextlib.contextmanager
def envoy_pair(
    spec: PairSpec, *, client: TlsMaterial, server: TlsMaterial, workdir: Path, equal: bool = False
) -> Iterator[EnvoyPair]:
    """Starts Envoy B then Envoy A for ``spec``, yields them ready, and always stops both."""
    a_config, b_config = _configs(spec, client=client, server=server, workdir=workdir, equal=equal)
    envoy_b = _Envoy(
        b_config,
        netns=spec.server_netns,
        workdir=workdir,
        name="envoy-b",
    )
    try:
        envoy_b.wait_ready()
        envoy_a = _Envoy(
            a_config,
            netns=spec.client_netns,
            workdir=workdir,
            name="envoy-a",
        )
        try:
            envoy_a.wait_ready()
            target = (spec.server_ip, spec.target_port) if equal else ("127.0.0.1", ENVOY_A_PORT)
            yield EnvoyPair(pids=(envoy_a.process.pid, envoy_b.process.pid), listener=target)
        finally:
            envoy_a.stop()
    finally:
        envoy_b.stop()
