"""Catalogue 11, revocation: a CRL that revokes a client's certificate, put in force by ztunnel.

The live tunnel carried by the revoked certificate is torn down within 2 s of the CRL being applied,
a handshake with that certificate is refused from then on, and the pod itself gets a fresh
certificate and connects again.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from mesh.certs import IssuedCertificate
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone.pool import HbonePool
from mesh.rt.net.netns import InPodSocketFactory
from mesh.rt.tls import TlsMaterial
from mesh.testing.pki import build_crl
from tests.netns.ztunnel_support import (
    Pod,
    client_hbone_pool,
    metric_total,
    run_in,
    running_mesh,
    tcp_echo,
)
from ztunnel.revocation import CrlWatcher

CLIENT = WorkloadIdentity("cluster.local", "demo", "client")

# One connection through the mesh (up once a first echo came back), an echo every 50 ms; prints the
# CLOCK_MONOTONIC time it broke.
_HOLD = r"""
import socket, sys, time
conn = socket.create_connection((sys.argv[1], 9000), 5)
conn.settimeout(2)
conn.sendall(b"hello\n")
conn.recv(16)
print("connected", flush=True)
end = time.monotonic() + 20
try:
    while time.monotonic() < end:
        conn.sendall(b"ping\n")
        if not conn.recv(16):
            break
        time.sleep(0.05)
except OSError:
    pass
print(time.monotonic(), flush=True)
"""


class _Presenting:
    """A certificate source that keeps presenting one (revoked) certificate, as a thief would."""

    def __init__(self, material: TlsMaterial) -> None:
        self._material = material

    async def client_material(self, identity: WorkloadIdentity) -> TlsMaterial:
        return self._material


async def test_a_revoked_client_certificate_is_cut_off_refused_and_replaced(
    pods: list[Pod], tmp_path: Path
) -> None:
    client, server = pods
    crl_file = tmp_path / "ca-crl.pem"
    async with running_mesh(pods, tmp_path) as mesh, tcp_echo(server):
        watcher = CrlWatcher(crl_file, mesh.ctx, mesh.manager.proxies.values)
        mesh.registry.register(watcher)
        holder = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", client.netns, sys.executable, "-c", _HOLD, server.ip,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert holder.stdout is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 10)).strip() == b"connected"
        revoked: IssuedCertificate = mesh.ctx.certs.current(CLIENT)
        stolen = mesh.ctx.material(revoked)
        authority = mesh.authority
        crl_file.write_bytes(build_crl(authority.cert, authority.key, [revoked.serial, 12345]))
        applied_at = time.monotonic()
        watcher.check()
        broke_at = float((await asyncio.wait_for(holder.stdout.readline(), 10)).strip())
        await holder.wait()
        assert broke_at - applied_at < 2.0, "the revoked client's live tunnel is torn down"
        assert metric_total(mesh.registry, "ztunnel_crl_connections_closed_total") == 1
        assert metric_total(mesh.registry, "ztunnel_crl_revoked_serials") == 2

        fd = os.open(f"/var/run/netns/{client.netns}", os.O_RDONLY)
        thief = HbonePool(sockets=InPodSocketFactory(fd), certs=_Presenting(stolen), clock=mesh.ctx.clock)
        try:
            async with client_hbone_pool(mesh, client, server) as (_, key):
                with pytest.raises(Exception, match=r"(?i)revoked|closed|reset|handshake"):
                    await asyncio.wait_for(thief.open_stream(key, f"{server.ip}:9000"), 5)
        finally:
            await thief.close()
            os.close(fd)

        for _ in range(100):  # the pod's own certificate is replaced, and it connects again
            if mesh.ctx.certs.usable(CLIENT) and mesh.ctx.certs.current(CLIENT).serial != revoked.serial:
                break
            await asyncio.sleep(0.05)
        assert mesh.ctx.certs.current(CLIENT).serial != revoked.serial
        probe = (
            f"import socket; s = socket.create_connection(('{server.ip}', 9000), 5); "
            "s.sendall(b'x'); print(s.recv(1))"
        )
        code, out, err = await run_in(client, sys.executable, "-c", probe)
        assert code == 0 and out.strip() == "b'x'", (out, err)
