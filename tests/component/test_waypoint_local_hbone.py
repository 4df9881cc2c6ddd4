"""The waypoint on a local config serving HBONE with its certificate from files (``--cert-chain``,
``--key``, ``--root-cert``): a real HBONE client's CONNECT stream carries HTTP/1.1 through the
waypoint process to a real HTTP server (``meshctl.apps.httpecho``), with the client's verified
identity in the metrics; bad files and flag combinations are refused naming what is wrong."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mesh.errors import ConfigError
from mesh.http1 import serialize_request
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.certs import NoValidCertificate
from mesh.testing.clock import FakeClock
from mesh.testing.hbone import material_for, request_over_hbone
from mesh.testing.pki import TestPki, key_pem, write_pem_files
from mesh.testing.ports import free_port
from tests.component.test_waypoint_local import httpecho, local_config, local_waypoint
from waypoint.identity import FileCredentials

pytestmark = pytest.mark.timeout(90)

WAYPOINT = ("demo", "waypoint")


def _files(tmp: Path, pki: TestPki) -> tuple[Path, Path, Path]:
    files = write_pem_files(
        tmp, pki.issue_leaf(pki.workload_uri(*WAYPOINT)), roots=pki.roots, name="waypoint"
    )
    return files.cert_chain, files.key, files.roots


async def _get_over_hbone(
    pki: TestPki, port: int, path: str, headers: list[tuple[str, str]]
) -> tuple[int, bytes]:
    """One CONNECT stream to the waypoint as ``demo/client`` (authority ``server:80``, a virtual host
    of the config), one HTTP/1.1 request in it."""
    return await request_over_hbone(
        ("127.0.0.1", port),
        client=material_for(pki, "demo", "client"),
        server=WorkloadIdentity.parse(pki.workload_uri(*WAYPOINT)),
        authority="server:80",
        request=serialize_request("GET", path, [("host", "server"), *headers], b""),
    )


async def test_a_connect_stream_reaches_the_backend_through_the_local_waypoint(tmp_path: Path) -> None:
    pki = TestPki.create()
    chain, key, roots = _files(tmp_path, pki)
    v1, v2 = free_port(), free_port()
    flags = ("--hbone-listen", "127.0.0.1:0", "--cert-chain", str(chain), "--key", str(key),
             "--root-cert", str(roots))  # fmt: skip
    with (
        httpecho(v1, "--version", "v1"),
        httpecho(v2, "--version", "v2"),
        local_waypoint(tmp_path, local_config(v1, v2, free_port()), extra=flags) as running,
    ):
        ports = running.started["ports"]
        status, body = await _get_over_hbone(pki, ports["hbone"], "/hello", [("x-canary-test", "true")])
        ready = await asyncio.to_thread(_get, ports["readiness"], "/healthz/ready")
        metrics = await asyncio.to_thread(_get, ports["metrics"], "/metrics")
    assert status == 200
    assert json.loads(body)["version"] == "v2"  # the header route, as on the plain listener
    assert ready == "ready\n"
    assert f'source_principal="{pki.workload_uri("demo", "client")}"' in metrics
    assert 'connection_security_policy="mutual_tls"' in metrics


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return str(reply.read().decode())


def _other_key(tmp: Path, pki: TestPki) -> None:
    (tmp / "waypoint-key.pem").write_bytes(key_pem(pki.issue_leaf(pki.workload_uri(*WAYPOINT)).key))


def _other_ca(tmp: Path, pki: TestPki) -> None:
    (tmp / "waypoint-roots.pem").write_bytes(TestPki.create().root_pem)


def _other_trust_domain(tmp: Path, pki: TestPki) -> None:
    other = TestPki.create(trust_domain="other.example")
    write_pem_files(tmp, other.issue_leaf(other.workload_uri(*WAYPOINT)), roots=other.roots, name="waypoint")


def _expired(tmp: Path, pki: TestPki) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    leaf = pki.issue_leaf(
        pki.workload_uri(*WAYPOINT), not_before=past, not_after=past + dt.timedelta(hours=1)
    )
    write_pem_files(tmp, leaf, roots=pki.roots, name="waypoint")


def _no_uri_san(tmp: Path, pki: TestPki) -> None:
    write_pem_files(tmp, pki.issue_leaf(uri_sans=[], dns_sans=["waypoint"]), roots=pki.roots, name="waypoint")


def _key_as_roots(tmp: Path, pki: TestPki) -> None:
    (tmp / "waypoint-roots.pem").write_bytes((tmp / "waypoint-key.pem").read_bytes())


def _no_key(tmp: Path, pki: TestPki) -> None:
    (tmp / "waypoint-key.pem").unlink()


def _empty_chain(tmp: Path, pki: TestPki) -> None:
    (tmp / "waypoint-chain.pem").write_text("not pem\n")


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (_other_key, "cannot be loaded: KEY_VALUES_MISMATCH"),
        (_other_ca, "is refused: unable to get local issuer certificate"),
        (_other_trust_domain, "is refused: its SPIFFE ID is outside --trust-domain 'cluster.local'"),
        (_expired, "is refused: certificate has expired"),
        (_no_uri_san, "is refused: the peer certificate has 0 URI SANs"),
        (_key_as_roots, "--root-cert"),
        (_no_key, "cannot read --key"),
        (_empty_chain, "holds no PEM certificate"),
    ],
)
def test_bad_certificate_files_are_refused_naming_the_problem(
    tmp_path: Path, spoil: Callable[[Path, TestPki], None], says: str
) -> None:
    pki = TestPki.create()
    chain, key, roots = _files(tmp_path, pki)
    spoil(tmp_path, pki)
    with pytest.raises(ConfigError) as caught:
        FileCredentials.load(cert_chain=chain, key=key, root_cert=roots, trust_domain="cluster.local")
    assert says in str(caught.value), caught.value


def test_the_identity_is_the_leafs_and_it_is_served_only_while_valid(tmp_path: Path) -> None:
    pki = TestPki.create()
    chain, key, roots = _files(tmp_path, pki)
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    credentials = FileCredentials.load(
        cert_chain=chain, key=key, root_cert=roots, trust_domain="cluster.local", clock=clock
    )
    assert credentials.identity.uri == pki.workload_uri(*WAYPOINT)
    assert credentials.ready and credentials.server_material().identity == credentials.identity
    clock.advance(25 * 3600)  # the test leaf lives 24 h
    assert not credentials.ready
    with pytest.raises(NoValidCertificate, match="is not valid now"):
        credentials.server_material()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--cert-chain", "c.pem"), "needs --cert-chain, --key and --root-cert together"),
        (("--cert-chain", "c.pem", "--key", "k.pem"), "needs --cert-chain, --key and --root-cert together"),
        (
            ("--xds-address", "127.0.0.1:1", "--cert-chain", "c.pem", "--key", "k.pem"),
            "are for --local-config",
        ),
    ],
)
def test_flag_combinations_are_refused(tmp_path: Path, flags: tuple[str, ...], says: str) -> None:
    config = tmp_path / "w.yaml"
    config.write_text(yaml.safe_dump(local_config(1, 2, 3)))
    local = () if "--xds-address" in flags else ("--local-config", str(config))
    done = subprocess.run([sys.executable, "-m", "waypoint.app", *local, *flags],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
