"""istiod_lite reports invalid objects that reached it without validation (the Kubernetes source):
a warning naming the object and its problems, and istiod_lite_config_invalid_total{kind}, once
per object version."""

from __future__ import annotations

from typing import Any

import structlog

from istiod_lite.push.invalid import InvalidConfig
from istiod_lite.sources.objects import parse_object
from istiod_lite.view import Informers
from mesh.rt.metrics import Registry, render


def peer_authentication(mode: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": "demo", "resourceVersion": version},
        "spec": {"mtls": {"mode": mode}},
    }


def test_each_invalid_version_is_counted_and_logged_once() -> None:
    informers = Informers()
    sink = informers.sink("test")
    registry = Registry()
    invalid = InvalidConfig(registry, structlog.get_logger())
    with structlog.testing.capture_logs() as logs:
        sink.upsert(parse_object(peer_authentication("STRICTT", "1")))
        assert invalid.check(informers.view()) == 1
        assert invalid.check(informers.view()) == 0  # the same version again: not counted twice
        sink.upsert(parse_object(peer_authentication("STRICT", "2")))
        assert invalid.check(informers.view()) == 0
        sink.upsert(parse_object(peer_authentication("PERMISIVE", "3")))
        assert invalid.check(informers.view()) == 1
    assert 'istiod_lite_config_invalid_total{kind="PeerAuthentication"} 2.0' in render(registry).decode()
    warnings = [e for e in logs if e["event"] == "config.invalid"]
    assert [w["object"] for w in warnings] == ["PeerAuthentication demo/strict"] * 2
    assert warnings[0]["problems"] == [
        "spec.mtls.mode: 'STRICTT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT"
    ]
