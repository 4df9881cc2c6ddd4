"""kmock (a test double of the Kubernetes API server) taught one path it cannot parse in 0.8."""

from __future__ import annotations

from typing import Any

import kmock
import pytest
from kmock._internal import parsing as kmock_parsing

__all__ = ["serve_namespaces"]


def _parse_path(original: Any) -> Any:
    """kmock 0.8's path parser, taught the cluster-scoped ``/api/v1/namespaces[/<name>]`` (it reads
    ``namespaces`` as the namespace prefix of a namespaced path and fails on the collection)."""

    def parse(path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            name = parts[3] if len(parts) == 4 else None
            return kmock_parsing.ParsedPath("", "v1", "namespaces", None, name, None)
        return original(path)

    return parse


def serve_namespaces(server: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets ``server`` list, watch and read Namespaces (for the duration of the test)."""
    monkeypatch.setattr(kmock_parsing, "parse_path", _parse_path(kmock_parsing.parse_path))
    server.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False)
