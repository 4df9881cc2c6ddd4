"""The ``istiod-lite`` command: starts from flags, issues for a pod found in the lab state directory,
stops cleanly on SIGTERM, and refuses a broken cacerts directory with a message naming the file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

import grpc
import pytest
import yaml

from mesh.testing import ca_pb2_grpc
from mesh.testing.pki import TestPki
from tests.component.ca_support import bearer, channel_options, request

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def _lab_state(root: Path) -> Path:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleep-1", "namespace": "default"},
        "spec": {"nodeName": "n1", "serviceAccountName": "sleep"},
        "status": {"phase": "Running"},
    }
    path = root / "objects" / "Pod" / "default" / "sleep-1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(pod))
    return root


def _started_event(stream: IO[str], *, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("event") == "istiod.started":
            return dict(event)
    raise AssertionError("istiod-lite did not log istiod.started in time")


def _command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "istiod_lite.app",
        "--listen", "127.0.0.1:0", "--readiness-listen", "127.0.0.1:0",
        "--state-dir", str(tmp_path / "state"), "--lab-state", str(tmp_path / "lab"), *extra,
    ]  # fmt: skip


def test_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-n1: {node: n1, identity: istio-system/ztunnel}\n")
    _lab_state(tmp_path / "lab")
    proc = subprocess.Popen(
        _command(tmp_path, "--lab-tokens", str(tokens)), stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        started = _started_event(proc.stderr, deadline=time.monotonic() + 30)
        root_pem = (tmp_path / "state" / "ca" / "root-cert.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(root_certificates=root_pem)
        with grpc.secure_channel(
            f"127.0.0.1:{started['ca.port']}", creds, options=channel_options()
        ) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            message = request(TestPki.create().new_csr(SLEEP).csr_pem, impersonate=SLEEP)
            response = stub.CreateCertificate(message, metadata=tuple(bearer("tok-n1")), timeout=10)
        assert response.cert_chain[-1].encode() == root_pem
        ready = urllib.request.urlopen(
            f"http://127.0.0.1:{started['readiness.port']}/healthz/ready", timeout=5
        )
        assert ready.status == 200
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{started['monitoring.port']}/metrics", timeout=5)
        text = metrics.read().decode()
        assert "citadel_server_success_cert_issuance_total 1.0" in text
        assert 'istio_build{component="istiod"' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("cacerts-missing-key", "lacks ca-key.pem"),
        ("no-tokens", "--auth lab needs --lab-tokens FILE"),
    ],
)
def test_cli_refuses_bad_configuration(tmp_path: Path, setup: str, message: str) -> None:
    extra: list[str] = []
    if setup == "cacerts-missing-key":
        cacerts = tmp_path / "cacerts"
        cacerts.mkdir()
        pki = TestPki.create()
        for name in ("ca-cert.pem", "root-cert.pem", "cert-chain.pem"):
            (cacerts / name).write_bytes(pki.root_pem)
        tokens = tmp_path / "tokens.yaml"
        tokens.write_text("t: {identity: a/b}\n")
        extra = ["--cacerts", str(cacerts), "--lab-tokens", str(tokens)]
    done = subprocess.run(_command(tmp_path, *extra), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert message in done.stderr
