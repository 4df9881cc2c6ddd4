"""A real Prometheus server in the lab, scraping the mesh as it would in a cluster.

Prometheus (the Debian package) runs in the lab's bridge namespace at ``<control plane>:9090``,
with its data under ``<state>/prometheus/``. Its scrape job is the
``kubernetes-pods`` job of Prometheus's and Istio's example configuration, unchanged: the same
``prometheus.io/scrape|port|path`` annotations and the same relabelling. The lab has no Kubernetes
API for ``kubernetes_sd_configs``, so the daemon writes the targets that discovery would produce
(one per pod, with the ``__meta_kubernetes_*`` labels) to a file Prometheus watches
(``file_sd_configs``). The mesh runs as pods too (``daemonset/``), annotated for scraping as on a
cluster: each node's ztunnel pod (:15020) and istiod_lite's replicas (:15014) are targets at their
pod IPs, which the bridge namespace routes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mesh.clock import Clock
from mesh.errors import MeshError
from meshctl.lab.errors import LabError
from meshctl.lab.objects import ObjKey
from meshctl.lab.settings import LabSettings
from meshctl.lab.store import StateDir, write_atomic
from meshctl.lab.supervisor import ProcessEvent, ProcessSpec, SupervisedProcess
from meshctl.nethttp import http_get

__all__ = [
    "PROMETHEUS_BINARY",
    "PROMETHEUS_PORT",
    "PrometheusRuntime",
    "prometheus_config",
    "prometheus_url",
    "scrape_targets",
]

PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMETHEUS_PORT = 9090
SCRAPE_INTERVAL = "5s"
"""Short, so the lab's graphs move within seconds of traffic (a cluster typically uses 15 s)."""


def prometheus_url(settings: LabSettings, control_plane: str) -> str:
    """Where the lab's Prometheus answers (inside the lab's bridge namespace)."""
    del settings  # one Prometheus per lab, at the control-plane address
    return f"http://{control_plane}:{PROMETHEUS_PORT}"


def prometheus_config(targets_file: Path) -> dict[str, Any]:
    """The prometheus.yml: Istio's ``kubernetes-pods`` job over file-based discovery."""
    meta = "__meta_kubernetes_pod_annotation_prometheus_io"
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
                "relabel_configs": [
                    {"source_labels": [f"{meta}_scrape"], "action": "keep", "regex": "true"},
                    {
                        "source_labels": [f"{meta}_path"],
                        "action": "replace",
                        "target_label": "__metrics_path__",
                        "regex": "(.+)",
                    },
                    {
                        "source_labels": ["__address__", f"{meta}_port"],
                        "action": "replace",
                        "regex": r"([^:]+)(?::\d+)?;(\d+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                    },
                    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                    {
                        "source_labels": ["__meta_kubernetes_namespace"],
                        "action": "replace",
                        "target_label": "namespace",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_name"],
                        "action": "replace",
                        "target_label": "pod",
                    },
                ],
            }
        ],
    }


def scrape_targets(objects: Mapping[ObjKey, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What Kubernetes pod discovery would give for the lab (pure): one target group per running pod
    with an IP (the mesh's own pods included)."""
    groups = []
    for (kind, namespace, name), pod in sorted(objects.items()):
        if kind != "Pod":
            continue
        ip = pod.get("status", {}).get("podIP")
        if not ip or pod.get("status", {}).get("phase") != "Running":
            continue
        metadata = pod.get("metadata", {})
        groups.append(
            _group(namespace, name, ip, metadata.get("labels") or {}, metadata.get("annotations") or {})
        )
    return groups


def _group(
    namespace: str, pod: str, ip: str, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod}
    for key, value in labels.items():
        meta[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = str(value)
    for key, value in annotations.items():
        meta[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = str(value)
    return {"targets": [ip], "labels": meta}


def _sanitize(name: str) -> str:
    """A label or annotation name as Prometheus's Kubernetes discovery spells it in a label name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class PrometheusRuntime:
    """Starts Prometheus for a lab daemon, keeps its targets file current, stops it."""

    def __init__(
        self,
        settings: LabSettings,
        paths: StateDir,
        control_plane: str,
        *,
        clock: Clock,
        on_event: Callable[[str, ProcessEvent], None],
    ) -> None:
        self.settings = settings
        self.root = paths.root / "prometheus"
        self.control_plane = control_plane
        self._clock = clock
        self._on_event = on_event
        self._task: asyncio.Task[int] | None = None
        self._targets_text = ""

    @property
    def targets_file(self) -> Path:
        """The file-based discovery file the daemon rewrites when pods change."""
        return self.root / "targets.json"

    def spec(self) -> ProcessSpec:
        """The Prometheus process, in the lab's bridge namespace (pure)."""
        return ProcessSpec(
            name="prometheus",
            argv=(
                PROMETHEUS_BINARY,
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address={self.control_plane}:{PROMETHEUS_PORT}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ),
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            log_path=self.root / "prometheus.log",
            pid_path=self.root / "prometheus.pid",
            netns=self.settings.bridge_netns,
        )

    async def start(self, objects: Mapping[ObjKey, Mapping[str, Any]], *, ready_within: float = 30.0) -> None:
        """Writes the config and targets, starts Prometheus and waits until it answers ready."""
        if not os.access(PROMETHEUS_BINARY, os.X_OK):
            raise LabError(
                f"{PROMETHEUS_BINARY} is missing",
                hint="install the Debian package 'prometheus' (make demo and make test do)",
            )
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "prometheus.yml", yaml.safe_dump(prometheus_config(self.targets_file)))
        self.sync(objects)
        spec = self.spec()
        process = SupervisedProcess(spec, clock=self._clock, on_event=lambda e: self._on_event(spec.name, e))
        self._task = asyncio.get_running_loop().create_task(process.run())
        await self._wait_ready(ready_within)

    def sync(self, objects: Mapping[ObjKey, Mapping[str, Any]]) -> None:
        """Rewrites the targets file when the set of pods (or their labels) changed."""
        text = json.dumps(scrape_targets(objects), indent=1) + "\n"
        if text != self._targets_text:
            write_atomic(self.targets_file, text)
            self._targets_text = text

    async def stop(self) -> None:
        """Stops Prometheus (SIGTERM, as the supervisor does); its data stays in the state directory."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _wait_ready(self, ready_within: float) -> None:
        deadline = self._clock.monotonic() + ready_within
        while self._clock.monotonic() < deadline:
            if self._task is None or self._task.done():
                break
            with contextlib.suppress(OSError, MeshError):
                status, _ = await asyncio.to_thread(
                    http_get, self.control_plane, PROMETHEUS_PORT, "/-/ready",
                    netns=self.settings.bridge_netns, timeout=1.0,
                )  # fmt: skip
                if status == 200:
                    return
            await asyncio.sleep(0.2)
        raise LabError(
            f"Prometheus did not become ready within {ready_within:.0f} s",
            hint=f"see {self.root / 'prometheus.log'}",
        )
