"""Real applications across two nodes: curl to an HTTP server and redis-cli to a redis-server, by pod
IP and by Service name, with a tshark capture on the lab bridge while they talk. The wire carries TLS
to port 15008 only and no byte of the payload; the ztunnels log both SPIFFE identities."""

from __future__ import annotations

import json
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.meshview import ISTIOD, ZTUNNEL, mesh_pods
from tests.e2e.conftest import CLIENT_NODE, HTTP_PORT, SERVER_NODE, MeshLab, spiffe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

CLIENT = "demo/client"
REDIS_PORT = 6379
HBONE = "15008"
FIELDS = (
    "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.len",
    "tls.handshake.type", "tls.handshake.extensions_alpn_str",
    "tls.handshake.extensions.supported_version", "tls.handshake.extensions_server_name",
)  # fmt: skip


def redis_objects() -> list[dict[str, Any]]:
    """A real redis-server on the server node, behind the ``redis`` Service."""
    command = ["redis-server", "--port", str(REDIS_PORT), "--protected-mode", "no", "--save", ""]
    deploy = b.deployment(
        "redis", "demo", command=command, ports=[REDIS_PORT], node=SERVER_NODE, service_account="server"
    )
    svc = b.service("redis", "demo", selector={"app": "redis"}, port=REDIS_PORT, target_port=REDIS_PORT)
    svc["spec"]["ports"][0]["name"] = "tcp-redis"
    return [deploy, svc]


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the module's traffic did and saw."""

    marker: str
    client_ip: str
    server_ip: str
    redis_ip: str
    http: dict[str, subprocess.CompletedProcess[str]]
    redis: dict[str, subprocess.CompletedProcess[str]]
    pcap: Path
    logged_before: dict[str, int]
    """Access-log entries per node before the traffic (earlier tests' entries are not this traffic's)."""


# One UDP datagram (not captured by the mesh, which takes TCP only) that marks the end of the traffic.
POKE = (
    "import socket, sys; "
    "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(), (sys.argv[1], 9))"
)


@contextmanager
def tshark(netns: str, interface: str, pcap: Path, bpf: str) -> Iterator[None]:
    """tshark writing ``pcap`` while the block runs (started when it says so; stopped with SIGINT)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "tshark", "-q", "-i", interface, "-w", str(pcap), "-f", bpf],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_capturing(proc)
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # tshark writes out what it captured and exits
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def _wait_capturing(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    said: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            said.append(proc.stderr.readline())
            if "Capturing on" in said[-1]:
                return
    raise AssertionError(f"tshark did not start capturing within 20 s: {''.join(said)}")


def wait_written(mesh: MeshLab, pcap: Path, *, to_ip: str) -> None:
    """Sends a UDP token from the client to ``to_ip`` until the capture file holds it.

    The capture reaches the file in batches (libpcap's buffer timeout); once the token, sent after
    all the traffic, is in the file, so is everything before it. Sent before the traffic, it shows
    that the capture is live.
    """
    token = f"e2e-flush-{secrets.token_hex(8)}"

    def written() -> bool:
        mesh.exec(CLIENT, "python", "-c", POKE, to_ip, token)
        return pcap.exists() and token.encode() in pcap.read_bytes()

    mesh.wait_for(written, what=f"the capture to reach {pcap}", timeout=15)


def _mesh_pod_ips(mesh: MeshLab) -> list[str]:
    """The IPs of the mesh's own pods (ztunnels, istiod_lite): what they send (xDS, certificates,
    metrics scrapes) is not the apps' traffic. ztunnel relays the apps' traffic from the apps' own
    addresses (its sockets are in their network namespaces), so that stays in the capture."""
    return sorted({pod.ip for app in (ISTIOD, ZTUNNEL) for pod in mesh_pods(mesh.lab, app)})


@pytest.fixture(scope="module")
def traffic(mesh: MeshLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """Adds redis, then runs curl and redis-cli from the demo client under a capture of the bridge."""
    mesh.lab.apply(redis_objects())
    mesh.lab.wait_ready(timeout=30)
    mesh.wait_converged()
    marker = f"e2e-secret-{secrets.token_hex(8)}"
    pcap = tmp_path_factory.mktemp("wire") / "bridge.pcap"
    server_ip, redis_ip = mesh.pod_ip("demo/server"), mesh.pod_ip("demo/redis")
    settings = mesh.lab.settings
    logged_before = {node: len(mesh.access_log(node)) for node in (CLIENT_NODE, SERVER_NODE)}
    bpf = "(tcp or udp port 9) and (" + " or ".join(f"net {n.pod_cidr}" for n in settings.nodes) + ")"
    bpf += " and not (" + " or ".join(f"host {ip}" for ip in _mesh_pod_ips(mesh)) + ")"
    with tshark(settings.bridge_netns, "br0", pcap, bpf):
        wait_written(mesh, pcap, to_ip=server_ip)  # "Capturing on" can come before packets do
        http = {
            "pod-ip": mesh.curl(CLIENT, f"http://{server_ip}:{HTTP_PORT}/{marker}/by-ip"),
            "service": mesh.curl(CLIENT, f"http://server/{marker}/by-name"),
        }
        redis = {
            "set": mesh.exec(CLIENT, "redis-cli", "-h", "redis", "SET", f"key-{marker}", f"value-{marker}"),
            "get": mesh.exec(CLIENT, "redis-cli", "-h", redis_ip, "GET", f"key-{marker}"),
        }
        wait_written(mesh, pcap, to_ip=server_ip)
    try:
        yield Traffic(
            marker=marker, client_ip=mesh.pod_ip(CLIENT), server_ip=server_ip, redis_ip=redis_ip,
            http=http, redis=redis, pcap=pcap, logged_before=logged_before,
        )  # fmt: skip
    finally:
        mesh.lab.delete(redis_objects())


def test_curl_reaches_the_server_on_the_other_node_by_ip_and_by_name(mesh: MeshLab, traffic: Traffic) -> None:
    for how, done in traffic.http.items():
        assert done.returncode == 0, (
            f"curl by {how} failed: {done.stderr}\n{mesh.diagnostics(['demo/server'])}"
        )
        answer = json.loads(done.stdout)
        assert (answer["namespace"], answer["node"]) == ("demo", SERVER_NODE), answer
        assert answer["pod"].startswith("server-"), answer
        assert answer["path"] == f"/{traffic.marker}/by-{'ip' if how == 'pod-ip' else 'name'}", answer
        # the server sees the client's own address: ztunnel connects from it on the server's node
        assert answer["client"].rpartition(":")[0] == traffic.client_ip, answer
    assert mesh.pod("demo/server")["spec"]["nodeName"] == SERVER_NODE
    assert mesh.pod(CLIENT)["spec"]["nodeName"] == CLIENT_NODE


def test_redis_cli_talks_to_redis_server_on_the_other_node(mesh: MeshLab, traffic: Traffic) -> None:
    set_, get = traffic.redis["set"], traffic.redis["get"]
    assert (set_.returncode, set_.stdout.strip()) == (0, "OK"), f"{set_.stderr}\n{mesh.diagnostics()}"
    assert (get.returncode, get.stdout.strip()) == (0, f"value-{traffic.marker}"), get.stderr


def _packets(pcap: Path) -> list[dict[str, str]]:
    argv = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]
    for field in FIELDS:
        argv += ["-e", field]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(FIELDS, line.split("\t"), strict=True)) for line in out.splitlines() if line.strip()]


def test_the_wire_between_nodes_is_tls_to_15008_and_no_payload(traffic: Traffic) -> None:
    wire = traffic.pcap.read_bytes()
    for secret in (traffic.marker.encode(), b"by-name", b"server-", b"redis"):
        assert secret not in wire, f"{secret!r} crossed the bridge in clear"
    packets = _packets(traffic.pcap)
    data = [p for p in packets if p["tcp.len"] not in ("", "0")]
    plain = [p for p in data if HBONE not in (p["tcp.srcport"], p["tcp.dstport"])]
    assert not plain, f"payload outside the HBONE port: {plain[:5]}"
    for ip in (traffic.server_ip, traffic.redis_ip):
        towards = [
            p for p in data if (p["ip.src"], p["ip.dst"], p["tcp.dstport"]) == (traffic.client_ip, ip, HBONE)
        ]
        assert towards, f"no HBONE payload from {traffic.client_ip} to {ip}:15008 in {len(packets)} packets"
    # redis is a fresh destination, so its tunnel's handshake is on the wire: TLS 1.3, ALPN h2, no SNI
    hellos = [
        p for p in packets if p["ip.dst"] == traffic.redis_ip and "1" in p["tls.handshake.type"].split(",")
    ]
    assert hellos, "no ClientHello toward the redis pod's 15008"
    assert all(
        p["tcp.dstport"] == HBONE and p["tls.handshake.extensions_alpn_str"] == "h2" for p in hellos
    ), hellos
    assert all(p["tls.handshake.extensions_server_name"] == "" for p in hellos), hellos
    answers = [
        p for p in packets if p["ip.src"] == traffic.redis_ip and "2" in p["tls.handshake.type"].split(",")
    ]
    assert answers and all(p["tls.handshake.extensions.supported_version"] == "0x0304" for p in answers), (
        answers
    )


def _identities(entry: dict[str, Any]) -> tuple[Any, Any]:
    return entry.get("src.identity"), entry.get("dst.identity")


def test_access_logs_show_both_spiffe_identities(mesh: MeshLab, traffic: Traffic) -> None:
    expected = (spiffe("demo", "client"), spiffe("demo", "server"))
    for node, direction in ((SERVER_NODE, "inbound"), (CLIENT_NODE, "outbound")):
        for ip, port in ((traffic.server_ip, HTTP_PORT), (traffic.redis_ip, REDIS_PORT)):

            def logged(node: str = node, direction: str = direction, addr: str = f"{ip}:{port}") -> list[Any]:
                return [
                    e for e in mesh.access_log(node)[traffic.logged_before[node]:]
                    if e.get("direction") == direction and e.get("dst.addr") == addr
                ]  # fmt: skip

            entries = mesh.wait_for(logged, what=f"{direction} access-log line on {node} for {ip}:{port}")
            assert [_identities(e) for e in entries] == [expected] * len(entries), entries
            assert all(e["bytes_sent"] > 0 and e["bytes_recv"] > 0 for e in entries), entries
