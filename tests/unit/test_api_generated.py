"""The committed generated protobuf code matches the .proto sources (run `make proto` if not)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.v1.auth import ca_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.api.istio.workload.zds import zds_pb2

ROOT = Path(__file__).resolve().parents[2]


def _generated(where: Path, root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root) for pattern in ("*_pb2*.py", "*_pb2*.pyi") for p in where.rglob(pattern)
    )


@pytest.mark.timeout(60)
def test_generated_code_is_fresh(tmp_path: Path) -> None:
    env_py = Path(sys.executable)
    subprocess.run(
        [str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"PY": str(env_py), "PATH": "/usr/bin:/bin"},
    )
    fresh = _generated(tmp_path, tmp_path)
    committed = sorted(_generated(ROOT / "mesh" / "api", ROOT) + _generated(ROOT / "mesh" / "testing", ROOT))
    assert fresh == committed, "generated file set differs; run `make proto` and commit"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stale generated code: {stale}; run `make proto` and commit"


@pytest.mark.parametrize(
    ("message", "full_name"),
    [
        (workload_pb2.Address, "istio.workload.Address"),
        (workload_pb2.Workload, "istio.workload.Workload"),
        (authorization_pb2.Authorization, "istio.security.Authorization"),
        (ca_pb2.IstioCertificateRequest, "istio.v1.auth.IstioCertificateRequest"),
        (zds_pb2.WorkloadRequest, "istio.workload.zds.WorkloadRequest"),
    ],
)
def test_istio_message_names(message: type, full_name: str) -> None:
    assert message.DESCRIPTOR.full_name == full_name  # type: ignore[attr-defined]


def test_istio_field_numbers_on_the_wire() -> None:
    workload = workload_pb2.Workload(uid="Kubernetes//Pod/ns/p", service_account="sa", node="n1")
    numbers = {f.name: f.number for f in workload_pb2.Workload.DESCRIPTOR.fields}
    assert numbers["uid"] == 20 and numbers["services"] == 22 and numbers["capacity"] == 27
    assert numbers["authorization_policies"] == 16 and numbers["application_tunnel"] == 23
    # uid is field 20, length-delimited: tag = (20 << 3) | 2 = 162 = 0xa2 0x01 as a varint.
    assert bytes([0xA2, 0x01]) in workload.SerializeToString()
    request = ca_pb2.IstioCertificateRequest(csr="x", validity_duration=60)
    assert request.SerializeToString() == b"\n\x01x\x18<"
    zds = {f.name: f.number for f in zds_pb2.WorkloadRequest.DESCRIPTOR.fields}
    assert zds == {"add": 1, "keep": 5, "del": 2, "snapshot_sent": 3}
