"""A gRPC echo server and client on grpcio (unary ``test.Echo/Say``, raw bytes, no generated code),
for the lab's gRPC traffic through waypoints.

    python -m meshctl.apps.grpcecho serve --port 50051 [--version v1]
    python -m meshctl.apps.grpcecho call --target echo:50051 [--count 10] [--metadata k=v ...]

The server answers ``<version>:<request>`` and sets the trailing metadata ``x-served-by``; the
client prints one line per call: ``ok <reply>`` or ``error <status code name>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent import futures

import grpc

__all__ = ["METHOD", "main"]

METHOD = "/test.Echo/Say"


def _serve(port: int, version: str) -> int:
    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-served-by", version),))
        return version.encode() + b":" + request

    methods = {"Say": grpc.unary_unary_rpc_method_handler(say)}
    handler = grpc.method_handlers_generic_handler("test.Echo", methods)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(f"grpcecho: serving test.Echo/Say on :{port} as {version!r}", flush=True)
    server.wait_for_termination()
    return 0


def _call(target: str, count: int, metadata: tuple[tuple[str, str | bytes], ...], message: str) -> int:
    failures = 0
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for i in range(count):
            try:
                reply = say(f"{message}{i}".encode(), metadata=metadata, timeout=10)
                print(f"ok {reply.decode(errors='replace')}", flush=True)
            except grpc.RpcError as exc:
                failures += 1
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                print(f"error {code.name}", flush=True)
    return 1 if failures == count and count else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` or ``call`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="grpcecho", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve test.Echo/Say")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--version", default=os.environ.get("VERSION", ""), help="reported in replies")
    call = sub.add_parser("call", help="call test.Echo/Say")
    call.add_argument("--target", required=True, help="host:port")
    call.add_argument("--count", type=int, default=1)
    call.add_argument("--message", default="hello-")
    call.add_argument("--metadata", action="append", default=[], help="key=value (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.port, args.version)
    metadata = tuple((key, value) for key, _, value in (item.partition("=") for item in args.metadata))
    return _call(args.target, args.count, metadata, args.message)


if __name__ == "__main__":
    sys.exit(main())
