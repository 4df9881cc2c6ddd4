"""CA throughput: certificates signed per second on one core (median of 3).

    .venv/bin/python -m perf.bench_ca [--count 2000] [--clients 1,8,32] [--repeats 3] [--smoke]

Two measurements:

* ``pure``: the in-process signing path of one request, pinned to one CPU: CSR validation
  (PEM parse, self-signature, key and SAN checks), TTL cap, leaf signing, PEM answer chain.
* ``grpc``: end to end. ``istiod-lite`` runs as its own process pinned to CPU 0 (lab auth,
  lab-state pod index, JSON audit log to a file, TLS); the load generator is this process pinned
  to CPU 1, with N concurrent clients (one TLS channel each) sending node-agent requests with
  impersonation. CSRs are made before the clock starts: their cost is the client's, not the CA's.

Target (issue 2): at least 500 certificates per second on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from istiod_lite.ca.authority import create_root
from istiod_lite.ca.csr import validate_csr
from istiod_lite.ca.signing import cap_ttl, issue_workload_certificate
from mesh.api.istio.v1.auth import ca_pb2
from mesh.testing import ca_pb2_grpc
from mesh.testing.pki import TestPki

__all__ = ["Result", "bench_grpc", "bench_pure", "main"]

TD = "cluster.local"
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
TOKEN = "bench-n1"
SERVER_CPU, CLIENT_CPU = 0, 1


@dataclass(frozen=True, slots=True)
class Result:
    """One run: certificates issued and wall seconds."""

    count: int
    wall: float

    @property
    def per_second(self) -> float:
        return self.count / self.wall


@contextlib.contextmanager
def _pinned(cpu: int) -> Iterator[None]:
    """Runs the block with this process on one CPU (no-op where affinity is unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu % os.cpu_count()})  # type: ignore[operator]
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _csrs(n: int) -> list[str]:
    pki = TestPki.create()
    return [pki.new_csr(SLEEP).csr_pem.decode() for _ in range(n)]


def bench_pure(count: int, *, csrs: list[str]) -> Result:
    """Validates and signs ``count`` CSRs in this process, pinned to one CPU."""
    now = time.time()
    authority = create_root(trust_domain=TD, now=now)
    with _pinned(SERVER_CPU):
        start = time.perf_counter()
        for i in range(count):
            csr = validate_csr(csrs[i % len(csrs)], trust_domain=TD)
            ttl = cap_ttl(86400)
            issued = issue_workload_certificate(
                authority, csr.public_key, identity=csr.identity, ttl=ttl, now=now
            )
            assert issued.cert_chain
        return Result(count, time.perf_counter() - start)


@contextlib.contextmanager
def _server(workdir: Path) -> Iterator[tuple[int, bytes]]:
    """``istiod-lite`` pinned to CPU 0; yields (port, root PEM)."""
    tokens = workdir / "tokens.yaml"
    tokens.write_text(f"{TOKEN}: {{node: n1, identity: istio-system/ztunnel}}\n")
    pod = workdir / "lab" / "objects" / "Pod" / "default" / "sleep-1.yaml"
    pod.parent.mkdir(parents=True, exist_ok=True)
    pod.write_text(
        "metadata: {name: sleep-1, namespace: default}\nspec: {nodeName: n1, serviceAccountName: sleep}\n"
    )
    log = workdir / "istiod.log"
    command = [
        sys.executable, "-m", "istiod_lite.app",
        "--listen", "127.0.0.1:0", "--readiness-listen", "127.0.0.1:0", "--state-dir", str(workdir / "state"),
        "--lab-tokens", str(tokens), "--lab-state", str(workdir / "lab"),
    ]  # fmt: skip
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stderr=sink)
    if hasattr(os, "sched_setaffinity"):
        # Pinned before it has imported anything: every thread it starts later inherits the mask.
        os.sched_setaffinity(proc.pid, {SERVER_CPU % (os.cpu_count() or 1)})
    try:
        port = _wait_port(log, proc)
        yield port, (workdir / "state" / "ca" / "root-cert.pem").read_bytes()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"istiod-lite exited with {proc.returncode}: {log.read_text()[-2000:]}")
        for line in log.read_text().splitlines():
            if '"istiod.started"' in line:
                return int(json.loads(line)["ca.port"])
        time.sleep(0.05)
    raise RuntimeError("istiod-lite did not start within 30 s")


async def _client(address: str, root: bytes, requests: list[ca_pb2.IstioCertificateRequest], n: int) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    options = [("grpc.ssl_target_name_override", "istiod.istio-system.svc")]
    async with grpc.aio.secure_channel(address, creds, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        await stub.CreateCertificate(requests[0], metadata=metadata)  # handshake outside the timing
        await _barrier.wait()
        for i in range(n):
            response = await stub.CreateCertificate(
                requests[i % len(requests)], metadata=metadata, timeout=30
            )
            assert response.cert_chain


class _Barrier:
    """Starts the timed phase only once every client has connected."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    async def wait(self) -> None:
        assert self.event is not None
        await self.event.wait()


_barrier = _Barrier()


async def _load(address: str, root: bytes, *, clients: int, count: int, csrs: list[str]) -> Result:
    requests = [_request(c) for c in csrs]
    _barrier.event = asyncio.Event()
    per_client = max(1, count // clients)
    tasks = [asyncio.create_task(_client(address, root, requests, per_client)) for _ in range(clients)]
    await asyncio.sleep(0.2)  # bounded: lets every client finish its handshake before the gate opens
    start = time.perf_counter()
    _barrier.event.set()
    await asyncio.gather(*tasks)
    return Result(per_client * clients, time.perf_counter() - start)


def _request(csr: str) -> ca_pb2.IstioCertificateRequest:
    message = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=86400)
    message.metadata.update({"ImpersonatedIdentity": SLEEP})
    return message


def bench_grpc(count: int, *, clients: int, repeats: int, csrs: list[str]) -> list[Result]:
    """``repeats`` end-to-end runs of ``count`` requests from ``clients`` concurrent clients."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp,
        _server(Path(tmp)) as (port, root),
        _pinned(CLIENT_CPU),
    ):
        return [
            asyncio.run(_load(f"127.0.0.1:{port}", root, clients=clients, count=count, csrs=csrs))
            for _ in range(repeats)
        ]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Runs both measurements and prints certificates per second (median of ``--repeats``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="certificates per run")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args(argv)
    count, repeats, clients = args.count, args.repeats, [int(c) for c in args.clients.split(",")]
    if args.smoke:
        count, repeats, clients = 20, 1, [2]
    csrs = _csrs(min(count, 200))
    results: dict[str, float] = {}
    pure = [bench_pure(count, csrs=csrs) for _ in range(repeats)]
    results["pure"] = statistics.median(r.per_second for r in pure)
    print(f"pure signing path, 1 CPU:        {results['pure']:8.0f} certs/s  (median of {repeats})")
    for n in clients:
        runs = bench_grpc(count, clients=n, repeats=repeats, csrs=csrs)
        results[f"grpc_{n}"] = statistics.median(r.per_second for r in runs)
        rate = results[f"grpc_{n}"]
        print(f"gRPC+TLS, server on 1 CPU, {n:3d} clients: {rate:8.0f} certs/s  (median of {repeats})")
    return results


if __name__ == "__main__":
    main()
