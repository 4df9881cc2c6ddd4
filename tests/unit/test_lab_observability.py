"""The lab's Prometheus: its configuration passes promtool, and the discovered targets are what
Kubernetes pod discovery would give (annotations, labels; the mesh's pods as any other)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.ports import ISTIOD_DEBUG_PORT, METRICS_PORT
from meshctl.lab.mesh import mesh_objects
from meshctl.lab.observability import prometheus_config, scrape_targets
from meshctl.lab.settings import build_settings

SETTINGS = build_settings(lab_id="ob", node_count=2, mesh=True, observability=True)


def pod(namespace: str, name: str, ip: str, phase: str = "Running", **annotations: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"app": name, "service.istio.io/canonical-name": name},
            "annotations": {k.replace("_", "."): v for k, v in annotations.items()},
        },
        "status": {"phase": phase, "podIP": ip},
    }


def test_the_configuration_passes_promtool(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(tmp_path / "targets.json")))
    (tmp_path / "targets.json").write_text("[]\n")
    command = ["promtool", "check", "config", str(config)]  # promtool comes with the prometheus package
    checked = subprocess.run(command, check=False, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_targets_are_the_running_pods_the_mesh_included_with_kubernetes_meta_labels() -> None:
    objects = {
        ("Pod", "demo", "wp"): pod(
            "demo", "wp", "10.244.1.9", prometheus_io_scrape="true", prometheus_io_port="15020"
        ),
        ("Pod", "demo", "pending"): pod("demo", "pending", "", phase="Pending"),
        ("Pod", "demo", "gone"): pod("demo", "gone", "10.244.1.8", phase="Failed"),
        ("Pod", "istio-system", "ztunnel-x7k2p"): pod(
            "istio-system",
            "ztunnel-x7k2p",
            "10.244.2.3",
            prometheus_io_scrape="true",
            prometheus_io_port="15020",
        ),
        ("Service", "demo", "wp"): {"kind": "Service", "metadata": {"name": "wp"}},
    }
    groups = scrape_targets(objects)
    by_pod = {g["labels"]["__meta_kubernetes_pod_name"]: g for g in groups}
    assert sorted(by_pod) == ["wp", "ztunnel-x7k2p"]
    assert by_pod["ztunnel-x7k2p"]["targets"] == ["10.244.2.3"]
    assert by_pod["ztunnel-x7k2p"]["labels"]["__meta_kubernetes_namespace"] == "istio-system"
    wp = by_pod["wp"]["labels"]
    assert by_pod["wp"]["targets"] == ["10.244.1.9"]
    assert wp["__meta_kubernetes_namespace"] == "demo"
    assert wp["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert wp["__meta_kubernetes_pod_annotation_prometheus_io_port"] == "15020"
    assert wp["__meta_kubernetes_pod_label_service_istio_io_canonical_name"] == "wp"


def test_the_mesh_pods_are_annotated_for_the_scrape_job() -> None:
    """The lab no longer lists the mesh apart: its pods' own templates carry the annotations."""
    templates = {
        obj["metadata"]["name"]: obj["spec"]["template"]["metadata"].get("annotations") or {}
        for obj in mesh_objects(SETTINGS)
        if obj["kind"] in ("Deployment", "DaemonSet")
    }
    ports = {
        name: a.get("prometheus.io/port")
        for name, a in templates.items()
        if a.get("prometheus.io/scrape") == "true"
    }
    assert ports == {"istiod": str(ISTIOD_DEBUG_PORT), "ztunnel": str(METRICS_PORT)}


def test_observability_needs_the_mesh() -> None:
    with pytest.raises(Exception, match="observability"):
        build_settings(lab_id="ob", mesh=False, observability=True)
    assert build_settings(lab_id="ob", mesh=True, observability=True).to_dict()["observability"] is True
