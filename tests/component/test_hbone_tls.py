"""HBONE's TLS: what the contexts allow, who is accepted, handshake timeouts, credential rotation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.certs import NoValidCertificate
from mesh.rt.hbone import HandshakeError, HboneConfig, HboneServer
from mesh.rt.hbone.client import connect
from mesh.rt.net.sockets import PlainSocketFactory
from mesh.rt.tls import (
    TLS13_SUITES,
    PeerRejectedError,
    TlsMaterial,
    client_context,
    server_context,
)
from mesh.testing.hbone import Collector, hbone_rig, material_for
from mesh.testing.pki import TestPki, write_pem_files
from mesh.testing.polling import wait_until


@pytest.mark.parametrize("factory", [server_context, client_context])
def test_contexts_allow_only_tls13_aes_gcm_h2_without_tickets(factory: object) -> None:
    pki = TestPki.create()
    ctx: ssl.SSLContext = factory(material_for(pki))  # type: ignore[operator]
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    tls13 = sorted(c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3")
    assert tls13 == sorted(TLS13_SUITES)
    assert ctx.options & ssl.OP_NO_TICKET
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is False


async def test_handshake_is_tls13_aes_gcm_h2_without_sni() -> None:
    async with hbone_rig() as rig:
        seen: list[str | None] = []
        contexts = rig.server._contexts
        ctx = contexts.server(rig.server_material)

        def record_sni(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            seen.append(name)

        ctx.sni_callback = record_sni
        conn = await rig.client()
        assert conn.transport is not None
        ssl_object = conn.transport.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3"
        assert ssl_object.cipher()[0] == "TLS_AES_128_GCM_SHA256"  # our first choice
        assert ssl_object.selected_alpn_protocol() == "h2"
        assert seen == [None]  # the client sent no SNI
        assert conn.peer_identity == rig.server_material.identity
        (server_conn,) = rig.server.connections
        assert server_conn.peer_identity == rig.client_material.identity
        conn.close()


async def test_client_refuses_a_server_with_an_unexpected_identity() -> None:
    async with hbone_rig() as rig:
        other = WorkloadIdentity.parse(rig.pki.workload_uri("server-ns", "someone-else"))
        with pytest.raises(PeerRejectedError) as caught:
            await rig.client(expected=frozenset({other}))
        assert caught.value.reason == "identity_mismatch"
        assert rig.handler.requests == []


async def test_client_accepts_any_of_the_expected_identities() -> None:
    async with hbone_rig() as rig:
        other = WorkloadIdentity.parse(rig.pki.workload_uri("server-ns", "svc-san"))
        conn = await rig.client(expected=frozenset({other, rig.server_material.identity}))
        assert conn.peer_identity == rig.server_material.identity
        conn.close()


async def test_server_refuses_a_client_from_another_ca() -> None:
    async with hbone_rig() as rig:
        stranger = material_for(TestPki.create(), "client-ns", "client", roots_pem=rig.pki.root_pem)
        with pytest.raises(HandshakeError):
            await rig.client(material=stranger)
        await wait_until(lambda: rig.server.handshake_failures + rig.server.peer_rejections >= 1)
        assert rig.handler.requests == []


async def test_server_refuses_a_client_in_another_trust_domain() -> None:
    async with hbone_rig() as rig:
        foreign = TestPki(trust_domain="other.local", root=rig.pki.root, now=rig.pki.now)
        same_ca_other_domain = material_for(foreign, "client-ns", "client")
        with pytest.raises(HandshakeError):
            await rig.client(material=same_ca_other_domain)
        await wait_until(lambda: rig.server.peer_rejections >= 1)
        assert rig.handler.requests == []


async def test_client_refuses_a_server_from_another_ca() -> None:
    async with hbone_rig() as rig:
        other_roots = material_for(TestPki.create(), "client-ns", "client")
        client = material_for(rig.pki, "client-ns", "client", roots_pem=other_roots.roots_pem)
        with pytest.raises(HandshakeError):
            await rig.client(material=client)


async def test_server_refuses_a_certificate_with_two_uri_sans() -> None:
    async with hbone_rig() as rig:
        two = rig.pki.issue_leaf(
            uri_sans=[rig.pki.workload_uri("client-ns", "client"), rig.pki.workload_uri("x", "y")]
        )
        with pytest.raises(HandshakeError):
            await rig.client(material=material_for(rig.pki, "client-ns", "client", leaf=two))
        await wait_until(lambda: rig.server.peer_rejections >= 1)


_AES256_ONLY = "TLS_AES_256_GCM_SHA384"


def _openssl_peer_files(tmp_path: Path, pki: TestPki) -> list[str]:
    files = write_pem_files(tmp_path, pki.issue_leaf(pki.workload_uri("peer-ns", "peer")), roots=pki.roots)
    return ["-cert", str(files.cert_chain), "-key", str(files.key), "-CAfile", str(files.roots)]


def test_a_peer_that_offers_only_aes_256_gcm_is_served_with_it(tmp_path: Path) -> None:
    """We prefer AES-128-GCM (cheaper; RFC 8446's mandatory suite) but keep AES-256-GCM, rustls's first."""
    pki = TestPki.create()
    ctx = server_context(material_for(pki, "server-ns", "server"))
    ciphers: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                ciphers.append(str(tls.cipher()))

        server = threading.Thread(target=serve)
        server.start()
        port = listener.getsockname()[1]
        done = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-alpn", "h2",
             "-ciphersuites", _AES256_ONLY, *_openssl_peer_files(tmp_path, pki)],
            input=b"", capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        server.join(timeout=10)
    assert len(ciphers) == 1, done.stdout.decode(errors="replace")[-2000:]
    assert _AES256_ONLY in ciphers[0], done.stdout.decode(errors="replace")[-2000:]


def test_our_client_takes_aes_256_gcm_from_a_server_that_only_has_it(tmp_path: Path) -> None:
    pki = TestPki.create()
    with socket.socket() as probe:  # a free port for s_server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-tls1_3", "-alpn", "h2", "-Verify", "1",
         "-ciphersuites", _AES256_ONLY, "-naccept", "1", *_openssl_peer_files(tmp_path, pki)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        startup = [server.stdout.readline()]
        while startup[-1] not in (b"ACCEPT\n", b"") and len(startup) < 10:  # a few notices come first
            startup.append(server.stdout.readline())
        assert startup[-1] == b"ACCEPT\n", startup
        ctx = client_context(material_for(pki, "client-ns", "client"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
            assert _AES256_ONLY in str(tls.cipher())
            assert tls.version() == "TLSv1.3"
    finally:
        server.kill()
        server.wait(timeout=10)


def _raw_client_context(*, alpn: list[str], tls12: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.mark.parametrize(("alpn", "tls12"), [(["h2"], True), (["http/1.1"], False), ([], False)])
async def test_server_refuses_tls12_and_missing_h2(alpn: list[str], tls12: bool, tmp_path: Path) -> None:
    async with hbone_rig() as rig:
        ctx = _raw_client_context(alpn=alpn, tls12=tls12)
        pem = tmp_path / "client.pem"  # the raw client presents the valid workload certificate
        pem.write_bytes(rig.client_material.key_pem + b"\n" + rig.client_material.chain_pem)
        ctx.load_cert_chain(pem)
        try:
            reader, writer = await asyncio.open_connection(*rig.address, ssl=ctx, server_hostname="")
        except (ssl.SSLError, ConnectionError):
            pass  # refused during the handshake
        else:
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed right after it
            writer.close()
        assert rig.handler.requests == []
        await wait_until(lambda: rig.server.handshake_failures + rig.server.peer_rejections >= 1)


@pytest.mark.parametrize("trickle", [False, True])
async def test_handshake_timeout_closes_silent_and_trickling_clients(trickle: bool) -> None:
    async with hbone_rig(config=HboneConfig(handshake_timeout=0.4)) as rig:
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(rig.address)
        sock.setblocking(False)
        started = time.monotonic()
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
        data = b"?"
        async with asyncio.timeout(5):
            try:
                for byte in hello if trickle else b"":  # slowloris: one byte every 50 ms
                    await loop.sock_sendall(sock, bytes([byte]))
                    await asyncio.sleep(0.05)
                data = await loop.sock_recv(sock, 100)
            except (BrokenPipeError, ConnectionResetError):
                data = b""
        elapsed = time.monotonic() - started
        sock.close()
        assert data == b""
        assert 0.3 <= elapsed <= 2.0
        await wait_until(lambda: rig.server.handshake_failures == 1)


async def test_a_slowloris_crowd_is_cut_at_the_handshake_timeout_while_a_real_client_is_served() -> None:
    """Catalogue 34, scaled to one process: 300 connections that never send a ClientHello and 30 that
    send one byte every 100 ms. Each is closed at the handshake timeout and leaves nothing behind in
    the server (each once stayed tracked, with its 256 KiB read buffer); a real client opening tunnels
    alongside is served throughout; descriptors return to their baseline afterwards."""
    loop = asyncio.get_running_loop()
    async with hbone_rig(config=HboneConfig(handshake_timeout=1.0)) as rig:
        baseline = len(os.listdir("/proc/self/fd"))
        connected_at: dict[socket.socket, float] = {}

        async def connected() -> socket.socket:  # not create_connection: the server shares this loop
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, rig.address)
            connected_at[sock] = time.monotonic()
            return sock

        silent = [await connected() for _ in range(300)]
        trickling = [await connected() for _ in range(30)]

        async def trickle(sock: socket.socket) -> None:
            for byte in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64:
                try:
                    sock.send(bytes([byte]))  # one byte always fits; no loop future to cancel
                except OSError:
                    return  # the server closed it
                await asyncio.sleep(0.1)

        async def lifetime(sock: socket.socket) -> float:
            with contextlib.suppress(OSError):
                while await loop.sock_recv(sock, 100):
                    pass
            return time.monotonic() - connected_at[sock]

        async def real_client() -> list[float]:
            latencies = []
            conn = await rig.client()
            for _ in range(15):
                begun = time.monotonic()
                status, stream = await conn.open_stream(rig.echo_authority)
                collector = Collector()
                stream.attach(collector)
                stream.write(b"ping")
                assert status == 200 and await collector.wait_bytes(4) == b"ping"
                stream.close()
                latencies.append(time.monotonic() - begun)
                await asyncio.sleep(0.1)
            conn.close()
            return latencies

        trickles = [asyncio.create_task(trickle(sock)) for sock in trickling]
        async with asyncio.timeout(15):
            client_task = asyncio.create_task(real_client())
            lifetimes = await asyncio.gather(*(lifetime(sock) for sock in (*silent, *trickling)))
            served = await client_task
        for task in trickles:
            task.cancel()
        await asyncio.gather(*trickles, return_exceptions=True)
        for sock in (*silent, *trickling):
            sock.close()
        assert max(served) < 1.0, served
        assert min(lifetimes) >= 0.9 and max(lifetimes) <= 2.5, (min(lifetimes), max(lifetimes))
        await wait_until(lambda: rig.server.handshake_failures >= 330)
        await wait_until(lambda: not rig.server.connections)  # a failed handshake leaves nothing tracked
        await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= baseline, within=5)


async def test_rotated_server_credentials_apply_to_new_connections() -> None:
    async with hbone_rig() as rig:
        first = await rig.client()
        renewed = material_for(rig.pki, "server-ns", "server")  # a new leaf, same identity
        rig.server_material = renewed
        second = await rig.client()
        assert first.transport is not None and second.transport is not None
        der_first = first.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        der_second = second.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der_first != der_second
        assert second.transport.get_extra_info("ssl_object").session_reused is False
        first.close()
        second.close()


async def test_removed_root_is_not_trusted_by_new_connections() -> None:
    async with hbone_rig() as rig:
        conn = await rig.client()
        conn.close()
        new_pki = TestPki.create()
        server_now = material_for(new_pki, "server-ns", "server")  # trusts only the new root
        rig.server_material = server_now
        with pytest.raises(HandshakeError):
            await rig.client(expected=frozenset({server_now.identity}), material=rig.client_material)


async def test_a_server_with_no_valid_certificate_refuses_the_handshake_and_keeps_nothing() -> None:
    def no_certificate() -> TlsMaterial:
        raise NoValidCertificate("no valid certificate for the server yet", hint="it is being fetched")

    async with hbone_rig() as rig:
        server = HboneServer(rig.handler, credentials=no_certificate)
        address = await server.listen("127.0.0.1")
        try:
            sock = await PlainSocketFactory().connect(address)
            async with asyncio.timeout(5):
                with pytest.raises(HandshakeError):
                    await connect(
                        sock, context=client_context(rig.client_material),
                        expected=frozenset({rig.server_material.identity}),
                    )  # fmt: skip
            assert server.handshake_failures == 1
            assert not server.connections
        finally:
            await server.close()
