"""The mesh inside the lab: istiod_lite, and a node agent and a ztunnel per node, as a cluster runs them.

istiod_lite runs in the lab's bridge namespace at the control-plane address (``10.240.0.2``), like a
Deployment reachable from every node; each node namespace runs its node agent (the CNI role) and
its ztunnel, like the two DaemonSets. The lab's CNI chain gets the mesh's plugin, which reaches
its own node's agent on an abstract unix socket (abstract sockets belong to a network namespace,
as the hostPath socket belongs to a node). Each node authenticates to istiod_lite with its own
bootstrap token, written under ``<state>/mesh/`` with mode 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mesh.clock import Clock
from mesh.ports import ISTIOD_DEBUG_PORT, ISTIOD_PORT, READINESS_PORT
from meshctl.lab.errors import LabError
from meshctl.lab.netops import ip_batch
from meshctl.lab.settings import LabSettings, NodeSettings
from meshctl.lab.store import StateDir, write_atomic
from meshctl.lab.supervisor import ProcessEvent, ProcessSpec, SupervisedProcess
from meshctl.lab.topology import control_plane_lines
from meshctl.lab.waypoints import WaypointTemplate
from meshctl.nethttp import http_get

__all__ = [
    "AGENT_SOCKET",
    "MeshLayout",
    "MeshRuntime",
    "cni_plugins",
    "control_plane_address",
    "control_plane_addresses",
    "istiod_name",
    "xds_targets",
    "plan_processes",
]

AGENT_SOCKET = "@ztunnel-cni/pluginevent.sock"
PLUGIN = "ztunnel-cni"
CA_PORT, READY_PORT, MONITORING_PORT = ISTIOD_PORT, READINESS_PORT, ISTIOD_DEBUG_PORT


@dataclass(frozen=True, slots=True)
class MeshLayout:
    """Where the mesh's files live inside the lab state directory."""

    root: Path

    @property
    def istiod_state(self) -> Path:
        """istiod_lite's own state (its self-signed root)."""
        return self.root / "istiod"

    @property
    def root_cert(self) -> Path:
        """The trust bundle ztunnels verify istiod_lite with."""
        return self.istiod_state / "ca" / "root-cert.pem"

    @property
    def tokens(self) -> Path:
        """The lab token file istiod_lite authenticates nodes with."""
        return self.root / "tokens.yaml"

    def token(self, node: str) -> Path:
        """One node's bootstrap token."""
        return self.root / f"token-{node}"

    @property
    def waypoint_tokens(self) -> Path:
        """The tokens of waypoint service accounts, one file per waypoint (``<ns>.<name>``)."""
        return self.root / "waypoint-tokens"

    def run_dir(self, node: str) -> Path:
        """One node's agent sockets and cache (like /var/run/ztunnel)."""
        return self.root / "run" / node

    def log(self, name: str) -> Path:
        """A component's log file."""
        return self.root / "logs" / f"{name}.log"


def control_plane_address(settings: LabSettings) -> str:
    """The first istiod_lite replica's address on the lab bridge."""
    return control_plane_addresses(settings)[0]


def control_plane_addresses(settings: LabSettings) -> list[str]:
    """Each istiod_lite replica's address on the lab bridge (.2, .3, ...)."""
    prefix = settings.node_cidr.split("/", 1)[0].rsplit(".", 1)[0]
    return [f"{prefix}.{2 + i}" for i in range(settings.istiod_replicas)]


def xds_targets(settings: LabSettings) -> str:
    """What the ztunnels and waypoints are given as ``--xds-address``: every replica (they fail over)."""
    return ",".join(f"{address}:{CA_PORT}" for address in control_plane_addresses(settings))


def istiod_name(replica: int) -> str:
    """The process (and pid/log file) name of one istiod_lite replica."""
    return "istiod" if replica == 0 else f"istiod-{replica}"


def cni_plugins() -> list[dict[str, Any]]:
    """The lab's chained CNI plugins when the mesh is on."""
    return [{"type": PLUGIN, "agent_socket": AGENT_SOCKET}]


def plan_processes(
    settings: LabSettings, layout: MeshLayout, *, state_root: Path, bin_dir: str
) -> list[ProcessSpec]:
    """istiod_lite's replicas first, then a node agent and a ztunnel per node (pure). The replicas
    share the state directory (the CA key, as a Deployment's replicas share the CA Secret)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONUNBUFFERED": "1"}
    if os.environ.get("PYTHONPATH"):  # the mesh runs the same code as the lab that started it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    specs = [
        ProcessSpec(
            name=istiod_name(replica),
            argv=(
                f"{bin_dir}/istiod-lite",
                "--state-dir",
                str(layout.istiod_state),
                "--lab-tokens",
                str(layout.tokens),
                "--lab-state",
                str(state_root),
                "--listen",
                f"{cp}:{CA_PORT}",
                "--readiness-listen",
                f"{cp}:{READY_PORT}",
                "--monitoring-listen",
                f"{cp}:{MONITORING_PORT}",
                "--trust-domain",
                settings.cluster_domain,
            ),
            env=env,
            log_path=layout.log(istiod_name(replica)),
            pid_path=layout.root / "pids" / f"{istiod_name(replica)}.pid",
            netns=settings.bridge_netns,
        )
        for replica, cp in enumerate(control_plane_addresses(settings))
    ]
    for node in settings.nodes:
        specs += _node_processes(settings, node, layout, state_root=state_root, bin_dir=bin_dir, env=env)
    return specs


def _node_processes(
    settings: LabSettings,
    node: NodeSettings,
    layout: MeshLayout,
    *,
    state_root: Path,
    bin_dir: str,
    env: dict[str, str],
) -> list[ProcessSpec]:
    run = layout.run_dir(node.name)
    agent = ProcessSpec(
        name=f"node-agent-{node.name}",
        argv=(
            f"{bin_dir}/ztunnel-node-agent",
            "--node",
            node.name,
            "--state-dir",
            str(state_root),
            "--run-dir",
            str(run),
            "--plugin-socket",
            AGENT_SOCKET,
        ),
        env=env,
        log_path=layout.log(f"node-agent-{node.name}"),
        pid_path=layout.root / "pids" / f"node-agent-{node.name}.pid",
        netns=node.netns,
    )
    ztunnel = ProcessSpec(
        name=f"ztunnel-{node.name}",
        argv=(
            f"{bin_dir}/ztunnel",
            "--node",
            node.name,
            "--node-ip",
            node.address,
            "--zds-socket",
            str(run / "ztunnel.sock"),
            "--xds-address",
            xds_targets(settings),
            "--root-cert",
            str(layout.root_cert),
            "--token-file",
            str(layout.token(node.name)),
            "--trust-domain",
            settings.cluster_domain,
            "--cluster-id",
            settings.cluster_id,
            "--cert-ttl",
            str(settings.cert_ttl),
            *(("--workers", str(settings.ztunnel_workers)) if settings.ztunnel_workers > 1 else ()),
        ),
        env=env,
        log_path=layout.log(f"ztunnel-{node.name}"),
        pid_path=layout.root / "pids" / f"ztunnel-{node.name}.pid",
        netns=node.netns,
    )
    return [agent, ztunnel]


def write_tokens(settings: LabSettings, layout: MeshLayout) -> None:
    """A fresh bootstrap token per node (as the ztunnel service account on that node)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    entries = {}
    for node in settings.nodes:
        token = secrets.token_urlsafe(32)
        entries[token] = {"node": node.name, "identity": "istio-system/ztunnel"}
        _write_secret(layout.token(node.name), token + "\n")
    _write_secret(layout.tokens, yaml.safe_dump(entries))


def _write_secret(path: Path, text: str) -> None:
    write_atomic(path, text)
    os.chmod(path, 0o600)


class MeshRuntime:
    """Starts and stops the mesh's processes for a lab daemon."""

    def __init__(
        self,
        settings: LabSettings,
        paths: StateDir,
        *,
        clock: Clock,
        on_event: Callable[[str, ProcessEvent], None],
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.layout = MeshLayout(paths.root / "mesh")
        self._clock = clock
        self._on_event = on_event
        self._tasks: dict[str, asyncio.Task[int]] = {}

    async def start(self, *, ready_within: float = 20.0) -> None:
        """Brings istiod_lite up and ready (the first replica creates the CA, the others then read it),
        then the node agents and ztunnels."""
        addresses = control_plane_addresses(self.settings)
        await ip_batch(control_plane_lines(self.settings, addresses), netns=self.settings.bridge_netns)
        write_tokens(self.settings, self.layout)
        self._install_plugin()
        specs = plan_processes(
            self.settings, self.layout, state_root=self.paths.root, bin_dir=os.path.dirname(sys.executable)
        )
        for replica, address in enumerate(addresses):
            self._spawn(specs[replica])
            await self._wait_istiod(replica, address, ready_within=ready_within)
        for spec in specs[len(addresses) :]:
            self._spawn(spec)

    async def stop(self) -> None:
        """SIGTERM to every mesh process (ztunnels drain), in reverse start order."""
        for name in reversed(list(self._tasks)):
            task = self._tasks.pop(name)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def waypoint_template(self) -> WaypointTemplate:
        """How the lab's waypoint pods reach istiod_lite (for the waypoint planner)."""
        settings = self.settings
        return WaypointTemplate(
            xds_address=xds_targets(settings),
            root_cert=str(self.layout.root_cert),
            token_dir=str(self.layout.waypoint_tokens),
            trust_domain=settings.cluster_domain,
            cluster_id=settings.cluster_id,
            cluster_domain=settings.cluster_domain,
            service_cidr=settings.service_cidr,
            path_normalization=settings.path_normalization,
        )

    def ensure_waypoint_tokens(self, gateways: list[dict[str, Any]]) -> None:
        """A lab token for each waypoint's service account (``<ns>/<gateway name>``), known to istiod_lite.

        Tokens are kept across daemon restarts (the pods hold them); istiod_lite re-reads the
        token file when it changes.
        """
        template = self.waypoint_template()
        entries: dict[str, Any] = {}
        if self.layout.tokens.exists():
            entries = yaml.safe_load(self.layout.tokens.read_text()) or {}
        changed = False
        for gateway in gateways:
            namespace, name = gateway["metadata"]["namespace"], gateway["metadata"]["name"]
            path = Path(template.token_file(namespace, name))
            token = path.read_text().strip() if path.exists() else ""
            if not token:
                token = secrets.token_urlsafe(32)
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_secret(path, token + "\n")
            if token not in entries:
                entries[token] = {"identity": f"{namespace}/{name}"}
                changed = True
        if changed:
            _write_secret(self.layout.tokens, yaml.safe_dump(entries))

    def _spawn(self, spec: ProcessSpec) -> None:
        process = SupervisedProcess(spec, clock=self._clock, on_event=lambda e: self._on_event(spec.name, e))
        self._tasks[spec.name] = asyncio.get_running_loop().create_task(process.run())

    def _install_plugin(self) -> None:
        self.paths.cni_bin.mkdir(parents=True, exist_ok=True)
        link = self.paths.cni_bin / PLUGIN
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(Path(sys.executable).parent / PLUGIN)
        conflist = {"cniVersion": "1.0.0", "name": f"{self.settings.lab_id}-net", "plugins": cni_plugins()}
        for old in self.paths.cni.glob("*.conflist"):
            old.unlink()
        write_atomic(self.paths.cni / "10-lab.conflist", json.dumps(conflist, indent=2) + "\n")

    async def _wait_istiod(self, replica: int, cp: str, *, ready_within: float) -> None:
        name = istiod_name(replica)
        deadline = self._clock.monotonic() + ready_within
        while self._clock.monotonic() < deadline:
            task = self._tasks[name]
            if task.done():
                break
            with contextlib.suppress(OSError, LabError):
                status, _ = await asyncio.to_thread(
                    http_get, cp, READY_PORT, "/healthz/ready", netns=self.settings.bridge_netns, timeout=1.0
                )
                if status == 200 and self.layout.root_cert.exists():
                    return
            await asyncio.sleep(0.1)
        log_tail = _tail(self.layout.log(name))
        raise LabError(
            f"istiod_lite ({name}) did not become ready within {ready_within:.0f} s",
            hint=f"see {self.layout.log(name)}; last lines:\n{log_tail}",
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
