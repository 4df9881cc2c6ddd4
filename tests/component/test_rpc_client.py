"""Our gRPC client (mesh.rt.rpc, on our own HTTP/2 engine) against a real grpcio server, over TLS.

The server is grpcio's, as istiod-lite's is: unary and bidirectional calls, statuses in trailers and
trailers-only, deadlines, metadata, large messages past the flow-control windows, limits, a server
that goes away mid-call, and TLS that checks the server's name against the roots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from istiod_lite.app import MIN_CLIENT_PING_INTERVAL
from mesh.rpc import RpcError, StatusCode
from mesh.rt.rpc import PING_INTERVAL, RpcCall, RpcChannel, client_tls, parse_target
from mesh.testing.pki import TestPki

pytestmark = pytest.mark.timeout(30)

SERVER_NAME = "istiod.istio-system.svc"
ECHO, STREAM, FAIL, SLOW, META = "/t.T/Echo", "/t.T/Stream", "/t.T/Fail", "/t.T/Slow", "/t.T/Meta"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _fail(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "node-2 may not ask for 100% of it: denied")
    raise AssertionError("abort returns only by raising")


async def _slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(10)
    return request


async def _meta(request: bytes, context: Any) -> bytes:
    return repr(sorted((k, v) for k, v in context.invocation_metadata() if not k.startswith(":"))).encode()


STREAMS_ENDED_ON_SERVER: list[str] = []


async def _stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    try:
        async for request in requests:
            if request == b"stop":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "told to stop")
            yield request[::-1]
    finally:  # cancelled, or the requests ended: grpc decides which when the client goes away
        STREAMS_ENDED_ON_SERVER.append("ended")


def _handlers() -> grpc.GenericRpcHandler[bytes, bytes]:
    unary = {"Echo": _echo, "Fail": _fail, "Slow": _slow, "Meta": _meta}
    methods = {
        name: grpc.unary_unary_rpc_method_handler(fn, _identity, _identity) for name, fn in unary.items()
    }
    methods["Stream"] = grpc.stream_stream_rpc_method_handler(_stream, _identity, _identity)
    return grpc.method_handlers_generic_handler("t.T", methods)


async def _next(call: RpcCall) -> bytes:
    message = await call.read()
    assert message is not None, "the call ended instead"
    return bytes(message)


@dataclass
class Server:
    target: str
    pki: TestPki | None
    server: grpc.aio.Server

    def channel(self, **kwargs: Any) -> RpcChannel:
        tls = client_tls(self.pki.root_pem) if self.pki is not None else None
        return RpcChannel(self.target, tls=tls, server_name=SERVER_NAME if tls else None, **kwargs)


async def _start(pki: TestPki | None, port: int = 0, *, min_ping_ms: int | None = None) -> Server:
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    if min_ping_ms is not None:
        options += [("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers([_handlers()])
    if pki is None:
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        leaf = pki.issue_leaf(
            dns_sans=[SERVER_NAME], uri_sans=["spiffe://cluster.local/ns/istio-system/sa/istiod"]
        )
        creds = grpc.ssl_server_credentials([(leaf.key_pem, leaf.cert_pem)])
        bound = server.add_secure_port(f"127.0.0.1:{port}", creds)
    await server.start()
    return Server(f"127.0.0.1:{bound}", pki, server)


@pytest.fixture(params=["tls", "plaintext"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    running = await _start(TestPki.create() if request.param == "tls" else None)
    yield running
    await running.server.stop(None)


async def _with_channel(server: Server, body: Callable[[RpcChannel], Awaitable[None]], **kwargs: Any) -> None:
    channel = server.channel(**kwargs)
    try:
        await body(channel)
    finally:
        await channel.close()


async def test_unary_calls_share_one_connection_and_metadata_arrives(server: Server) -> None:
    async def body(channel: RpcChannel) -> None:
        answers = await asyncio.gather(*(channel.unary(ECHO, b"m%d" % i, timeout=5) for i in range(20)))
        assert answers == [b"m%d" % i for i in range(20)]
        meta = await channel.unary(
            ECHO.replace("Echo", "Meta"), b"", metadata=(("authorization", "Bearer t"),)
        )
        assert "('authorization', 'Bearer t')" in meta.decode()

    await _with_channel(server, body)


async def test_a_bidirectional_stream_carries_many_messages_and_ends_ok(server: Server) -> None:
    async def body(channel: RpcChannel) -> None:
        call = await channel.stream(STREAM)
        for i in range(50):
            await call.write(b"abc%d" % i)
            assert await _next(call) == (b"abc%d" % i)[::-1]
        await call.done_writing()
        assert await call.read() is None
        assert call.status is not None and call.status.code == StatusCode.OK

    await _with_channel(server, body)


async def test_messages_larger_than_the_windows_go_both_ways_byte_exact(server: Server) -> None:
    big = bytes(range(256)) * (24 * 1024 * 4)  # 24 MiB: past the 4 MiB stream and 16 MiB connection windows

    async def body(channel: RpcChannel) -> None:
        assert await channel.unary(ECHO, big, timeout=20) == big

    await _with_channel(server, body, max_message_bytes=32 << 20)


async def test_an_error_status_arrives_with_its_percent_decoded_message(server: Server) -> None:
    async def body(channel: RpcChannel) -> None:
        with pytest.raises(RpcError) as err:
            await channel.unary(FAIL, b"x", timeout=5)
        assert err.value.code == StatusCode.PERMISSION_DENIED
        assert err.value.details == "node-2 may not ask for 100% of it: denied"
        call = await channel.stream(STREAM)
        await call.write(b"ok")
        assert await _next(call) == b"ko"
        await call.write(b"stop")
        with pytest.raises(RpcError, match="INVALID_ARGUMENT: told to stop"):
            await call.read()
        with pytest.raises(RpcError, match="INVALID_ARGUMENT"):
            await call.write(b"more")

    await _with_channel(server, body)


async def test_closing_the_channel_ends_its_open_calls_on_the_server(server: Server) -> None:
    STREAMS_ENDED_ON_SERVER.clear()
    channel = server.channel()
    call = await channel.stream(STREAM)
    await call.write(b"ab")
    assert await _next(call) == b"ba"
    await channel.close()
    with pytest.raises(RpcError, match="UNAVAILABLE: the channel was closed"):
        await call.read()
    for _ in range(500):
        if STREAMS_ENDED_ON_SERVER:
            break
        await asyncio.sleep(0.02)
    assert STREAMS_ENDED_ON_SERVER == ["ended"]


@pytest.mark.parametrize(("ping_interval", "survives"), [(0.75, True), (0.1, False)])
async def test_keepalive_pings_at_the_servers_permitted_rate_keep_an_idle_stream(
    ping_interval: float, survives: bool
) -> None:
    """Scaled down: the server allows a PING per 0.5 s (istiod: 15 s; our default: one per 30 s).
    Pinging faster than allowed gets GOAWAY ENHANCE_YOUR_CALM from grpc, which is what the default
    interval avoids."""
    running = await _start(None, min_ping_ms=500)
    channel = RpcChannel(running.target, tls=None, ping_interval=ping_interval, ping_timeout=2.0)
    try:
        call = await channel.stream(STREAM)
        await call.write(b"12")
        assert await _next(call) == b"21"
        try:
            await asyncio.wait_for(call.read(), 3.5)  # idle: only PINGs cross
        except TimeoutError:
            alive = True
        except RpcError as err:
            assert "0xb" in err.details  # ENHANCE_YOUR_CALM
            alive = False
        assert alive is survives
    finally:
        await channel.close()
        await running.server.stop(None)


def test_our_keepalive_respects_the_rate_istiod_lite_permits() -> None:
    assert PING_INTERVAL >= MIN_CLIENT_PING_INTERVAL


async def test_a_deadline_ends_the_call_and_the_channel_stays_usable(server: Server) -> None:
    async def body(channel: RpcChannel) -> None:
        with pytest.raises(RpcError) as err:
            await channel.unary(SLOW, b"x", timeout=0.3)
        assert err.value.code == StatusCode.DEADLINE_EXCEEDED
        assert await channel.unary(ECHO, b"after", timeout=5) == b"after"

    await _with_channel(server, body)


async def test_unknown_methods_are_unimplemented(server: Server) -> None:
    async def body(channel: RpcChannel) -> None:
        with pytest.raises(RpcError) as err:
            await channel.unary("/t.T/Nope", b"x", timeout=5)
        assert err.value.code == StatusCode.UNIMPLEMENTED

    await _with_channel(server, body)


async def test_a_response_over_our_limit_is_refused_and_the_next_call_works(server: Server) -> None:
    async def body(channel: RpcChannel) -> None:
        with pytest.raises(RpcError) as err:
            await channel.unary(ECHO, b"x" * 2048, timeout=5)
        assert err.value.code == StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
            await channel.unary(ECHO, b"x" * 4096, timeout=5)  # too big to send, refused before it leaves
        assert await channel.unary(ECHO, b"small", timeout=5) == b"small"

    await _with_channel(server, body, max_message_bytes=1024 + 1000)


async def test_a_server_that_goes_away_fails_the_open_call_and_a_restarted_one_is_reached() -> None:
    pki = TestPki.create()
    first = await _start(pki)
    channel = first.channel()
    try:
        call = await channel.stream(STREAM)
        await call.write(b"12")
        assert await _next(call) == b"21"
        await first.server.stop(None)
        with pytest.raises(RpcError) as err:
            while True:
                await call.read()
        assert err.value.code in (StatusCode.UNAVAILABLE, StatusCode.CANCELLED)
        second = await _start(pki, port=parse_target(first.target)[1])
        try:
            assert await channel.unary(ECHO, b"again", timeout=5) == b"again"
        finally:
            await second.server.stop(None)
    finally:
        await channel.close()


async def test_tls_refuses_a_server_whose_name_or_roots_do_not_match() -> None:
    pki = TestPki.create()
    running = await _start(pki)
    try:
        wrong_name = RpcChannel(running.target, tls=client_tls(pki.root_pem), server_name="evil.example")
        other_roots = RpcChannel(
            running.target, tls=client_tls(TestPki.create().root_pem), server_name=SERVER_NAME
        )
        for channel in (wrong_name, other_roots):
            with pytest.raises(RpcError) as err:
                await channel.unary(ECHO, b"secret", timeout=5)
            assert err.value.code == StatusCode.UNAVAILABLE
            assert "certificate" in str(err.value)
            await channel.close()
    finally:
        await running.server.stop(None)


async def test_nothing_listening_is_unavailable_with_a_hint() -> None:
    channel = RpcChannel("127.0.0.1:9", tls=None)
    with pytest.raises(RpcError) as err:
        await channel.unary(ECHO, b"x", timeout=5)
    assert err.value.code == StatusCode.UNAVAILABLE
    assert "check that the server runs" in str(err.value)


@pytest.mark.parametrize("target", ["istiod", "istiod:", "istiod:0", "istiod:99999", ":15012", "[::1]"])
def test_targets_must_be_host_and_port(target: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        parse_target(target)


def test_targets_parse() -> None:
    assert parse_target("istiod.istio-system.svc:15012") == ("istiod.istio-system.svc", 15012)
    assert parse_target("[fd00::1]:15012") == ("fd00::1", 15012)


async def test_a_channel_over_replicas_moves_to_another_when_its_replica_goes_and_stays() -> None:
    """``a:port,b:port``: calls go to one replica; when it is gone the channel connects to the other
    and stays there; with none left the error names every replica."""
    replicas = [await _start(None), await _start(None)]
    channel = RpcChannel(",".join(r.target for r in replicas), tls=None)
    try:
        assert await channel.unary("/t.T/Echo", b"one") == b"one"
        (gone,) = [r for r in replicas if r.target == channel.connected_to]
        (other,) = [r for r in replicas if r is not gone]
        await gone.server.stop(None)
        answers = []
        for _ in range(20):  # a call in flight when the replica goes fails; the next connects elsewhere
            try:
                answers.append(await channel.unary("/t.T/Echo", b"two", timeout=2))
            except RpcError as err:
                assert err.code == StatusCode.UNAVAILABLE, err
        assert answers[-5:] == [b"two"] * 5 and channel.connected_to == other.target
        await other.server.stop(None)
        errors = []
        for _ in range(3):  # the first may be the call that saw the connection end
            with pytest.raises(RpcError) as raised:
                await channel.unary("/t.T/Echo", b"three", timeout=2)
            errors.append(raised.value)
        assert all(r.target in errors[-1].details for r in replicas), errors
    finally:
        await channel.close()


def test_a_target_list_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="'replica-b' is not host:port"):
        RpcChannel("replica-a:15012,replica-b", tls=None)
