"""A ztunnel worker process (``python -m ztunnel.workers``): the data path only.

ztunnel (the parent) starts it with one end of a socketpair and hands it, in this order, the
config (the xDS resources it accepted), then each enrolled pod with its netns fd; certificates come
when the worker asks or when the parent renews them. The worker binds its own listeners in each pod
(``SO_REUSEPORT``: the kernel spreads new connections over the workers) and serves them with the
very code a single ztunnel runs (:class:`ztunnel.proxy.PodProxy`). It holds no xDS stream and no
CA client. It answers the parent's questions (metrics, connections) and drains when told, or when
the parent goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import structlog
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from mesh.errors import MeshError
from mesh.identity.errors import InvalidSpiffeId
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.clock import SystemClock
from mesh.rt.limits import raise_open_files_limit
from mesh.rt.logs import configure_logging, get_logger
from mesh.rt.loop import run
from mesh.rt.metrics import LoopTasks, Registry
from mesh.rt.net.memory import freeze_startup_heap, trim_when_idle, tune_malloc
from mesh.rt.tcp_metrics import TcpMetrics
from mesh.rt.xds import XdsState, apply_response
from ztunnel.context import DEFAULT_MAX_CONNECTIONS, NodeContext
from ztunnel.local_config import load_local_config
from ztunnel.manager import ServedPod, WorkloadManager
from ztunnel.revocation import CrlWatcher
from ztunnel.workers.certs import ParentCertificates, certificate_from_fields
from ztunnel.workers.channel import Message, WorkerChannel, WorkerChannelError
from ztunnel.workers.stats import families_as_json
from ztunnel.xds_config import converters, state_from_xds
from ztunnel.zds import ZdsError, decode_request

__all__ = ["Worker", "main", "worker_parser"]


def worker_parser() -> argparse.ArgumentParser:
    """The worker's flags; ztunnel passes them (see :mod:`ztunnel.workers.pool`)."""
    p = argparse.ArgumentParser(prog="ztunnel-worker", description="A ztunnel worker process (data path).")
    p.add_argument("--channel-fd", type=int, required=True, help="this end of the socketpair to ztunnel")
    p.add_argument("--index", type=int, required=True, help="this worker's number (in logs)")
    p.add_argument("--node", required=True)
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--local-config", type=Path, help="ztunnel's local config file, read here too")
    p.add_argument("--crl-file", type=Path, help="ztunnel's CRL file, applied here too")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    p.add_argument("--drain-deadline", type=float, default=5.0, help="when SIGTERM reaches a worker itself")
    p.add_argument("--log-format", choices=["json", "console"], default="json")
    p.add_argument("--log-level", default="info")
    return p


class Worker:
    """The running worker: a node context fed by the parent, and a workload manager without ZDS."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        clock = SystemClock()
        rng = random.Random()
        self.registry = Registry()  # no istio_build: the parent's is the node's one
        self.channel: WorkerChannel | None = None
        self.certs = ParentCertificates(ask=self._ask_certificate, clock=clock)
        self.ctx = NodeContext(
            node=args.node,
            trust_domain=args.trust_domain,
            certs=self.certs,
            metrics=TcpMetrics(self.registry),
            clock=clock,
            rng=rng,
            access_log=structlog.get_logger("access"),
            log=get_logger("ztunnel").bind(node=args.node, worker=args.index),
            max_connections=args.max_connections,
        )
        self.registry.register(self.ctx.budget)
        self.manager = WorkloadManager(self.ctx, socket_path="", rng=rng)
        self.crl: CrlWatcher | None = None
        if args.crl_file:  # the worker's connections and handshakes; the parent renews certificates
            self.crl = CrlWatcher(args.crl_file, self.ctx, self._served_pods, report_serials=False)
            self.registry.register(self.crl)
        self._converters = converters(None)  # the parent counts ignored fields once for the node
        self._xds = XdsState()
        self._handlers: dict[str, Callable[[Message], Awaitable[None] | None]] = {
            "config": self._on_config,
            "certificate": self._on_certificate,
            "certificate_failed": self._on_certificate_failed,
            "pod": self._on_pod,
            "stats": self._on_stats,
            "status": self._on_status,
            "ping": self._reply,  # a liveness check: the answer is the point
        }

    async def serve(self) -> int:
        """Serves the parent until it says drain or goes away; returns the exit code."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=self.args.channel_fd)
        channel = self.channel = WorkerChannel(sock, peer="ztunnel")
        channel.start()
        terminated = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, terminated.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # a terminal's ^C: the parent drains us
        self.registry.register(LoopTasks(loop, "ztunnel_event_loop_tasks"))
        if self.args.local_config:
            self.ctx.apply_state(load_local_config(self.args.local_config))
        background = [loop.create_task(trim_when_idle())]
        if self.crl is not None:
            self.crl.check()  # in force before the first pod is served
            background.append(loop.create_task(self.crl.run()))
        channel.post(Message("hello", {"index": self.args.index}))
        freeze_startup_heap()
        reading = loop.create_task(self._read(channel))
        waiting = loop.create_task(terminated.wait())
        await asyncio.wait((reading, waiting), return_when=asyncio.FIRST_COMPLETED)
        if reading.done():  # the parent said drain (with its deadline), or went away (0)
            deadline = reading.result() if reading.exception() is None else 0.0
        else:
            deadline = self.args.drain_deadline
        for task in (reading, waiting, *background):
            task.cancel()
        cut = await self.manager.stop_all(deadline=deadline)
        self.ctx.log.info("worker.stopped", connections_cut=cut)
        channel.post(Message("drained", {"cut": cut}))
        await self.certs.close()
        await channel.close()
        return 0

    async def _read(self, channel: WorkerChannel) -> float:
        """Handles the parent's messages; returns the drain deadline the parent gave."""
        while True:
            try:
                message = await channel.recv()
            except WorkerChannelError as exc:
                self.ctx.log.warning("worker.parent_gone", error=exc.message)
                return 0.0
            if message.kind == "drain":
                return float(message.fields.get("deadline", 0.0))
            handler = self._handlers.get(message.kind)
            if handler is None:
                self.ctx.log.warning("worker.unknown_message", kind=message.kind)
                continue
            try:
                result = handler(message)
                if result is not None:
                    await result
            except (MeshError, DecodeError, KeyError, TypeError, ValueError) as exc:
                self.ctx.log.warning("worker.bad_message", kind=message.kind, error=repr(exc))

    def _served_pods(self) -> Iterable[ServedPod]:
        """The pod proxies now (read each time: the manager replaces its dict when it stops)."""
        return self.manager.proxies.values()

    def _reply(self, message: Message, **fields: object) -> None:
        assert self.channel is not None
        self.channel.post(Message("reply", {"id": message.fields["id"], **fields}))

    def _ask_certificate(self, identity: WorkloadIdentity) -> None:
        if self.channel is not None:
            self.channel.post(Message("certificate_request", {"identity": identity.uri}))

    def _on_config(self, message: Message) -> None:
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(message.body)
        converter = self._converters[response.type_url]
        self._xds, event = apply_response(self._xds, response, converter)
        if event.rejected:  # the parent accepted them: the two builds disagree
            self.ctx.log.warning("worker.config_rejected", rejected=dict(event.rejected))
        self.ctx.apply_state(state_from_xds(self._xds))

    def _on_certificate(self, message: Message) -> None:
        self.certs.install(certificate_from_fields(message.fields))

    def _on_certificate_failed(self, message: Message) -> None:
        try:
            identity = WorkloadIdentity.parse(message.fields["identity"])
        except InvalidSpiffeId as exc:
            raise WorkerChannelError(f"a certificate failure names no identity: {exc}") from None
        self.certs.failed(identity, str(message.fields.get("error", "")))

    async def _on_pod(self, message: Message) -> None:
        try:
            request = decode_request(message.body)
        except ZdsError as exc:
            _close(message.fd)
            self._reply(message, error=exc.message)
            return
        error = await self.manager.handle(request, message.fd, set())  # takes the fd
        self._reply(message, error=error)

    def _on_stats(self, message: Message) -> None:
        self._reply(message, families=families_as_json(self.registry))

    def _on_status(self, message: Message) -> None:
        """The worker's connections, each pod's count of them, and the config it applies."""
        now = self.ctx.clock.now()
        state = self.ctx.state
        self._reply(
            message,
            connections=[c.row(now) for c in self.ctx.registry],
            active={uid: p.active for uid, p in self.manager.proxies.items()},
            config={
                "workloads": len(state.workloads),
                "services": len(state.services),
                "policies": sorted(state.policies),
            },
        )


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """The worker's entry point."""
    args = worker_parser().parse_args(argv)
    configure_logging(fmt=args.log_format, level=args.log_level)
    tune_malloc()
    raise_open_files_limit()
    try:
        return run(Worker(args).serve())
    except (MeshError, OSError) as exc:
        print(f"ztunnel worker {args.index}: {exc}", file=sys.stderr)
        return 2
