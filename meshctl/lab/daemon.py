"""The lab daemon: builds the network, then reconciles the state directory into pods and rules.

Started by ``meshctl lab up`` in its own session; its PID is in ``<state>/run/daemon.pid``.
SIGTERM or SIGINT stop every pod (CNI DEL included), remove the namespaces and exit.
Loop: when ``resource-version`` changes (polled every 0.1 s) or a pod reports, it reloads the
objects, plans (controllers), writes the plan, starts/stops pod runners, programs kube-proxy rules
and hosts files, and, when nothing is left to do, writes ``run/synced``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from mesh.clock import Clock
from mesh.rt.clock import SystemClock
from mesh.rt.logs import configure_logging, get_logger
from mesh.rt.loop import run as run_loop
from meshctl.lab._meta import is_terminating
from meshctl.lab.actions import Put, apply_actions
from meshctl.lab.cni import CniRunner
from meshctl.lab.controllers import plan
from meshctl.lab.errors import LabError
from meshctl.lab.kubeproxy import render_hosts, render_nat, service_ports
from meshctl.lab.mesh import control_plane_address, waypoint_template
from meshctl.lab.netops import ip_batch, netns_exec
from meshctl.lab.network import NETNS_ANNOTATION, PodIpam, build_network, node_object, remove_network
from meshctl.lab.objects import ObjKey
from meshctl.lab.observability import PrometheusRuntime
from meshctl.lab.pods import PodRunner, RuntimeContext
from meshctl.lab.store import Store, write_atomic
from meshctl.lab.supervisor import ProcessEvent, process_start_time
from meshctl.lab.tokenfile import ensure_lab_token_file
from meshctl.lab.topology import control_plane_lines

__all__ = ["LabDaemon", "main"]

_POLL = 0.1
RunnerKey = tuple[str, str, str]


class LabDaemon:
    """One lab's runtime (see the module docstring)."""

    def __init__(
        self, root: Path, *, clock: Clock, rng: random.Random, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.store = Store(root)
        self.settings = self.store.read_settings()
        self.clock, self.rng, self.log = clock, rng, log
        self.runners: dict[RunnerKey, PodRunner] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._stopping_keys: set[RunnerKey] = set()
        self._ipam = PodIpam(self.settings)
        self._chains: frozenset[str] = frozenset()
        self._nat_text = ""
        self._vips: list[tuple[str, str, str]] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        paths = self.store.paths
        self.waypoints = waypoint_template(self.settings) if self.settings.mesh else None
        self.prometheus = (
            PrometheusRuntime(
                self.settings,
                paths,
                control_plane_address(self.settings),
                clock=clock,
                on_event=self._prometheus_event,
            )
            if self.settings.observability
            else None
        )
        self.ctx = RuntimeContext(
            settings=self.settings,
            paths=paths,
            clock=clock,
            cni=CniRunner(cni_dir=paths.cni, bin_dirs=(str(paths.cni_bin), "/opt/cni/bin")),
            allocate_ip=self._ipam.allocate,
            release_ip=self._ipam.release,
            hosts_for=self._hosts_for,
            write_status=self._write_status,
            bin_dirs=(os.path.dirname(sys.executable),),
            tokens_file=paths.tokens,
            python_path=os.environ.get("PYTHONPATH", ""),
        )
        ensure_lab_token_file(self.ctx.tokens_file)

    async def run(self) -> int:
        """Runs until SIGTERM/SIGINT; always tears down what it built."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        pid = os.getpid()
        write_atomic(self.store.paths.daemon_pid, f"{pid} {process_start_time(pid) or 0}\n")
        try:
            await build_network(self.settings)
            with self.store.transaction() as txn:
                for node in self.settings.nodes:
                    txn.put(node_object(node, rng=self.rng, now=self.clock.now()))
            self.log.info("lab.network.ready", nodes=len(self.settings.nodes))
            if self.prometheus is not None:
                lines = control_plane_lines(self.settings, [control_plane_address(self.settings)])
                await ip_batch(lines, netns=self.settings.bridge_netns)
                await self.prometheus.start(self.store.load_all())
                self.log.info("lab.prometheus.started", targets=str(self.prometheus.targets_file))
            await self._loop()
            return 0
        except Exception:
            self.log.exception("lab.daemon.failed")
            return 1
        finally:
            await self._teardown()

    async def _loop(self) -> None:
        last = -1
        while not self._stop.is_set():
            rv = self.store.current_rv()
            if rv != last or self._wake.is_set():
                self._wake.clear()
                try:
                    if await self._reconcile():
                        continue
                except LabError as exc:
                    self.log.warning("lab.reconcile.failed", error=str(exc))
                    await asyncio.sleep(_POLL)
                    continue
                last = rv
                if self.store.current_rv() == rv and not self._wake.is_set():
                    self.store.write_synced(rv)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):
                    await self._wait_event()

    async def _wait_event(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    async def _reconcile(self) -> bool:
        """One pass; True when it wrote objects (so the caller reloads before acting)."""
        objects = self.store.load_all()
        nodes, now = self.settings.node_names(), self.clock.now()
        actions = plan(objects, nodes=nodes, rng=self.rng, now=now, waypoints=self.waypoints)
        if actions:
            with self.store.transaction() as txn:
                changed = apply_actions(txn, actions)
            for action in actions:
                if isinstance(action, Put) and action.obj["kind"] in ("Pod", "ReplicaSet"):
                    self.log.info(
                        "lab.object.created", kind=action.obj["kind"], name=action.obj["metadata"]["name"]
                    )
            if changed:
                return True
        self._vips = [
            (ns, name, obj["spec"]["clusterIP"])
            for (kind, ns, name), obj in objects.items()
            if kind == "Service" and obj["spec"].get("clusterIP")
        ]
        self._sync_pods(objects)
        await self._sync_rules(objects)
        if self.prometheus is not None:
            self.prometheus.sync(objects)
        return False

    def _sync_pods(self, objects: dict[ObjKey, dict[str, Any]]) -> None:
        live: set[RunnerKey] = set()
        for (kind, ns, name), pod in sorted(objects.items()):
            if kind != "Pod" or pod["spec"].get("nodeName") not in self.settings.node_names():
                continue
            key = (ns, name, pod["metadata"]["uid"])
            if is_terminating(pod):
                if key not in self.runners and key not in self._stopping_keys:  # never started here
                    self._remove_pod(key)
                continue
            live.add(key)
            if key not in self.runners:
                runner = PodRunner(pod, ctx=self.ctx)
                self.runners[key] = runner
                runner.sync_objects(objects)
                runner.start()
                self.log.info("lab.pod.starting", pod=runner.label, node=runner.node.name)
            else:
                self.runners[key].sync_objects(objects)
        for key in [k for k in self.runners if k not in live]:
            self._stop_runner(key)

    def _stop_runner(self, key: RunnerKey) -> None:
        runner = self.runners.pop(key)
        self._stopping_keys.add(key)  # its pod object stays until the sandbox is gone

        async def stop() -> None:
            try:
                await runner.stop()
                self.log.info("lab.pod.stopped", pod=runner.label)
                self._remove_pod(key)
            finally:
                self._stopping_keys.discard(key)

        task = asyncio.get_running_loop().create_task(stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _remove_pod(self, key: RunnerKey) -> None:
        ns, name, uid = key
        with self.store.transaction() as txn:
            current = txn.get(("Pod", ns, name))
            if current is not None and current["metadata"].get("uid") == uid and is_terminating(current):
                txn.remove(("Pod", ns, name))
        self._wake.set()

    async def _sync_rules(self, objects: dict[ObjKey, dict[str, Any]]) -> None:
        text, chains = render_nat(service_ports(objects), previous_chains=self._chains)
        if text != self._nat_text:
            await asyncio.gather(
                *(
                    netns_exec(n.netns, ["iptables-restore", "--noflush"], stdin=text)
                    for n in self.settings.nodes
                )
            )
            self._nat_text, self._chains = text, chains
        for runner in self.runners.values():
            if runner.ip is not None:
                runner.rewrite_hosts(self._hosts_for(runner.pod, runner.ip))

    def _hosts_for(self, pod: dict[str, Any], ip: str) -> str:
        meta = pod["metadata"]
        return render_hosts(
            self._vips,
            namespace=meta["namespace"],
            pod_name=meta["name"],
            pod_ip=ip,
            domain=self.settings.cluster_domain,
        )

    def _write_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]

        netns = self.settings.netns_of(pod)

        def change(obj: dict[str, Any]) -> bool:
            annotations = obj["metadata"].get("annotations") or {}
            if obj["metadata"].get("uid") != meta["uid"]:
                return False
            if obj.get("status") == status and annotations.get(NETNS_ANNOTATION) == netns:
                return False
            obj["metadata"]["annotations"] = {**annotations, NETNS_ANNOTATION: netns}
            obj["status"] = status
            return True

        with self.store.transaction() as txn:
            txn.update(("Pod", meta["namespace"], meta["name"]), change)
        self._wake.set()

    def _prometheus_event(self, name: str, event: ProcessEvent) -> None:
        self.log.info(
            "lab.prometheus.process", process=name, kind=event.kind, pid=event.pid, exit_code=event.exit_code
        )

    async def _teardown(self) -> None:
        self.log.info("lab.daemon.stopping", pods=len(self.runners))
        for key in list(self.runners):
            self._stop_runner(key)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        if self.prometheus is not None:
            await self.prometheus.stop()
        await remove_network(self.settings)
        with contextlib.suppress(FileNotFoundError):
            self.store.paths.daemon_pid.unlink()
        self.log.info("lab.daemon.stopped")


def main(argv: list[str] | None = None) -> int:
    """``python -m meshctl.lab.daemon --state DIR``."""
    parser = argparse.ArgumentParser(prog="meshctl-lab-daemon", description="The meshctl lab's pod runtime.")
    parser.add_argument("--state", required=True, help="the lab's state directory")
    args = parser.parse_args(argv)
    configure_logging(fmt="json", level=os.environ.get("MESH_LAB_LOG_LEVEL", "info"))
    daemon = LabDaemon(Path(args.state), clock=SystemClock(), rng=random.Random(), log=get_logger("lab"))
    return run_loop(daemon.run())


if __name__ == "__main__":
    sys.exit(main())
