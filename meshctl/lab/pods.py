"""One pod in the runtime: its sandbox (namespace, veth, names, CNI chain) and its containers.

The sandbox is created as kubelet + a container runtime do it: the runtime makes the namespace and
the primary network, then runs the CNI chain; a failure tears the sandbox down and retries with
backoff (phase Pending, reason ``FailedCreatePodSandBox``). A ``hostNetwork`` pod has no sandbox:
its containers run in the node's namespace with the node's address (and names), no CNI is called.
Before the sandbox, the pod's volumes are set up (:mod:`meshctl.lab.podvolumes`); while one cannot
be (a ConfigMap or Secret that is not there yet, a hostPath failing its type check, a missing
ServiceAccount) the pod stays Pending and says why, and starts when the objects appear. Then each
container runs as a supervised process inside the pod namespace, in its own mount namespace with
its volumes bind-mounted. Readiness is the kubelet's: the container's ``readinessProbe`` (httpGet on
the pod's IP from inside its namespace, tcpSocket, exec in the container) run every period and
counted against its thresholds (:mod:`meshctl.lab.prober`), the pod's status written each time a
container's readiness changes and a failure noted in the pod's log (the kubelet's event). Without a
probe a container is ready once started, or once every TCP ``containerPort`` listens when it has
some (the lab's own check). A probe the lab cannot run keeps the container not ready and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.clock import Clock
from mesh.rt.tasks import cancel_until_done
from meshctl.lab._meta import rfc3339
from meshctl.lab.cni import CniRequest, CniRunner, primary_result
from meshctl.lab.errors import LabError
from meshctl.lab.kubeproxy import render_resolv_conf
from meshctl.lab.netops import NETNS_DIR, ip_batch, run_cmd
from meshctl.lab.objects import ObjKey
from meshctl.lab.podspec import ContainerState, container_argv, container_env, render_pod_status
from meshctl.lab.podvolumes import VolumeRuntime
from meshctl.lab.prober import ProbeTarget, watch_readiness
from meshctl.lab.probes import Probe, ProbeSpecError, readiness_probe
from meshctl.lab.settings import LabSettings, NodeSettings
from meshctl.lab.store import StateDir
from meshctl.lab.supervisor import Backoff, ProcessEvent, ProcessSpec, SupervisedProcess, next_backoff
from meshctl.lab.topology import pod_lines, pod_node_lines
from meshctl.lab.volumes import VolumeLayout

__all__ = ["ETC_NETNS", "PodRunner", "RuntimeContext"]

ETC_NETNS = Path("/etc/netns")
_DEFAULT_GRACE = 2.0
_STOP_MARGIN = 5.0
"""Seconds past the grace period before a pod's task that did not end is cancelled again."""
_VOLUME_RETRY = 1.0
"""Seconds between volume set-up attempts when no object changed (a hostPath may appear)."""
_SANDBOX_BACKOFF = Backoff()


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """What every pod runner shares."""

    settings: LabSettings
    paths: StateDir
    clock: Clock
    cni: CniRunner
    allocate_ip: Callable[[str], str]
    release_ip: Callable[[str, str], None]
    hosts_for: Callable[[dict[str, Any], str], str]
    write_status: Callable[[dict[str, Any], dict[str, Any]], None]
    bin_dirs: tuple[str, ...]
    tokens_file: Path
    """The lab's token file (istiod_lite's lab authenticator), where pods' projected tokens go."""
    python_path: str = ""
    """The lab's PYTHONPATH, so pods run the same code as the lab (a checkout under test)."""
    backoff: Backoff = _SANDBOX_BACKOFF


def _netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


class PodRunner:
    """Creates, runs and removes one pod. ``run`` is the pod's task; ``teardown`` follows its cancel."""

    def __init__(self, pod: dict[str, Any], *, ctx: RuntimeContext) -> None:
        self.pod = pod
        self.ctx = ctx
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.node: NodeSettings = ctx.settings.node(pod["spec"]["nodeName"])
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.netns = ctx.settings.netns_of(pod)
        self.ip: str | None = None
        self.hosts_text = ""
        self.task: asyncio.Task[None] | None = None
        self._phase, self._reason, self._message = "Pending", "", ""
        self._start_time = ""
        self._cni_result: dict[str, Any] | None = None
        self._containers = [ContainerState(c["name"]) for c in pod["spec"]["containers"]]
        self._last_status: dict[str, Any] | None = None
        self.volumes = VolumeRuntime(
            pod,
            layout=VolumeLayout(str(ctx.paths.root), cluster_domain=ctx.settings.cluster_domain),
            clock=ctx.clock,
            tokens_file=ctx.tokens_file,
            lab_id=ctx.settings.lab_id,
        )
        self._objects: dict[ObjKey, dict[str, Any]] = {}
        self._objects_changed = asyncio.Event()
        self._token_task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        """``namespace/name``."""
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    @property
    def grace(self) -> float:
        """Seconds a container gets between SIGTERM and SIGKILL (``terminationGracePeriodSeconds``)."""
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", _DEFAULT_GRACE))

    @property
    def hosts_path(self) -> Path:
        """The hosts file ``ip netns exec`` mounts over /etc/hosts for this pod."""
        return ETC_NETNS / self.netns / "hosts"

    def start(self) -> None:
        """Starts the pod's task."""
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"pod {self.label}")

    def sync_objects(self, objects: dict[ObjKey, dict[str, Any]]) -> None:
        """The cluster's objects changed: a waiting pod tries its volumes again, a running one's
        configMap, secret and projected volumes are brought up to date."""
        self._objects = objects
        self._objects_changed.set()
        try:
            self.volumes.update(objects)
        except (LabError, OSError) as exc:
            self._note(f"cannot update volumes: {exc}")

    async def run(self) -> None:
        """Sets up the volumes and the sandbox (retrying), then supervises the containers."""
        self._publish()
        await self.wait_for_volumes()
        streak = 0
        while not await self._try_sandbox():
            delay, streak = next_backoff(
                self.ctx.backoff, policy="Always", exit_code=1, ran_for=0.0, streak=streak
            )
            await asyncio.sleep(delay or self.ctx.backoff.initial)
        self._phase = "Running"
        self._start_time = rfc3339(self.ctx.clock.now())
        self._token_task = asyncio.get_running_loop().create_task(self._refresh_tokens())
        results = await asyncio.gather(
            *(self._supervise(i, c) for i, c in enumerate(self.pod["spec"]["containers"]))
        )
        self._phase = "Succeeded" if all(code == 0 for code in results) else "Failed"
        self._publish()

    async def stop(self) -> None:
        """Stops the containers, runs CNI DEL and removes the sandbox (idempotent)."""
        if self.task is not None:
            # Beyond the grace period (a container's SIGTERM wait, which a second cancel would cut
            # short): a cancel the task lost must not leave the pod running after it was deleted.
            cancels = await cancel_until_done(self.task, every=self.grace + _STOP_MARGIN)
            if cancels > 1:
                self._note(f"the pod's task ran on after a cancel; it stopped after {cancels} cancels")
            if not self.task.cancelled() and (error := self.task.exception()) is not None:
                self._note(f"the pod's task failed: {error!r}")
        if self._token_task is not None:
            self._token_task.cancel()
        await self._teardown_sandbox()
        try:
            self.volumes.teardown()
        except (LabError, OSError) as exc:  # the pod goes anyway; its tokens expire
            self._note(f"cannot remove the pod's tokens: {exc}")

    async def wait_for_volumes(self) -> None:
        """Sets up the volumes; until they can be, the pod is Pending and says why (module docstring)."""
        while True:
            self._objects_changed.clear()
            try:
                why = self.volumes.prepare(self._objects)
            except (LabError, OSError) as exc:
                why = exc.message if isinstance(exc, LabError) else str(exc)
            if not why:
                break
            if why != self._message:
                self._note(why)
            reason = "FailedCreate" if why.startswith("error looking up service account") else "FailedMount"
            self._reason, self._message = reason, why
            self._publish()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_VOLUME_RETRY):
                    await self._objects_changed.wait()
        self._reason = self._message = ""

    async def _refresh_tokens(self) -> None:
        while (due := self.volumes.next_token_refresh()) is not None:
            await asyncio.sleep(max(due - self.ctx.clock.now(), 0.0))
            try:
                self.volumes.refresh_tokens()
            except (LabError, OSError) as exc:
                self._note(f"cannot refresh service-account tokens: {exc}")
                await asyncio.sleep(_VOLUME_RETRY)

    def _note(self, text: str) -> None:
        meta = self.pod["metadata"]
        path = self.ctx.paths.pod_log(meta["namespace"], meta["name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = rfc3339(self.ctx.clock.now())
        with open(path, "a") as log:
            log.write(f"[lab {stamp}] {self.label}: {text}\n")

    def rewrite_hosts(self, text: str) -> None:
        """Rewrites the hosts file in place (same inode, so running containers see the change)."""
        if not self.hosts_text or text == self.hosts_text:
            return
        with contextlib.suppress(FileNotFoundError):
            self.hosts_path.write_text(text)
            self.hosts_text = text

    async def _try_sandbox(self) -> bool:
        try:
            await self._create_sandbox()
        except (LabError, OSError) as exc:
            message = exc.message if isinstance(exc, LabError) else str(exc)
            self._reason, self._message = "FailedCreatePodSandBox", message
            await self._teardown_sandbox()
            self._publish()
            return False
        self._reason = self._message = ""
        return True

    async def _create_sandbox(self) -> None:
        node = self.node
        if self.host_network:  # the node's namespace, address and name files are the pod's
            self.ip = node.address
            return
        self.ip = self.ctx.allocate_ip(node.name)
        link = self.ctx.settings.pod_link(self.uid)
        await run_cmd(["ip", "netns", "add", self.netns])
        await ip_batch(
            pod_node_lines(node, link=link, pod_netns=self.netns, pod_ip=self.ip), netns=node.netns
        )
        await ip_batch(pod_lines(node, pod_ip=self.ip), netns=self.netns)
        self._write_name_files()
        domain = self.ctx.settings.cluster_domain
        namespace = self.pod["metadata"]["namespace"]
        search = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
        netns_path = f"{NETNS_DIR}/{self.netns}"
        primary = primary_result(
            pod_ip=self.ip, gateway=node.gateway, netns_path=netns_path, host_link=link, search=search
        )
        self._cni_result = await self.ctx.cni.add(self._cni_request(), primary)
        cache = self.ctx.paths.cni_cache / f"{self.uid}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(self._cni_result))

    def _write_name_files(self) -> None:
        directory = ETC_NETNS / self.netns
        directory.mkdir(parents=True, exist_ok=True)
        namespace = self.pod["metadata"]["namespace"]
        (directory / "resolv.conf").write_text(
            render_resolv_conf(namespace, domain=self.ctx.settings.cluster_domain)
        )
        self.hosts_text = self.ctx.hosts_for(self.pod, self.ip or "")
        self.hosts_path.write_text(self.hosts_text)

    def _cni_request(self) -> CniRequest:
        meta = self.pod["metadata"]
        return CniRequest(
            container_id=self.uid,
            netns_path=f"{NETNS_DIR}/{self.netns}",
            namespace=meta["namespace"],
            pod_name=meta["name"],
            pod_uid=self.uid,
            node_netns=self.node.netns,
        )

    async def _teardown_sandbox(self) -> None:
        self.hosts_text = ""
        if self.host_network:  # nothing of the node's is the pod's to remove
            self.ip = None
            return
        if self._cni_result is not None:
            await self.ctx.cni.delete(self._cni_request(), self._cni_result)
            self._cni_result = None
        with contextlib.suppress(FileNotFoundError):
            (self.ctx.paths.cni_cache / f"{self.uid}.json").unlink()
        if _netns_exists(self.netns):
            await run_cmd(["ip", "netns", "del", self.netns])
        shutil.rmtree(ETC_NETNS / self.netns, ignore_errors=True)
        if self.ip is not None:
            self.ctx.release_ip(self.node.name, self.ip)
            self.ip = None

    async def _supervise(self, index: int, container: dict[str, Any]) -> int:
        meta = self.pod["metadata"]
        state = self._containers[index]
        env = container_env(
            self.pod,
            container,
            pod_ip=self.ip or "",
            host_ip=self.node.address,
            bin_dirs=self.ctx.bin_dirs,
            python_path=self.ctx.python_path,
        )
        wrapper = await self._exec_prefix(state, container, env)
        spec = ProcessSpec(
            name=f"{meta['namespace']}/{meta['name']}/{container['name']}",
            argv=container_argv(container, env),
            env=env,
            log_path=self.ctx.paths.pod_log(meta["namespace"], meta["name"]),
            pid_path=self.ctx.paths.pids / f"{meta['namespace']}_{meta['name']}_{container['name']}.pid",
            netns=self.netns,
            cwd="/" if wrapper else container.get("workingDir", "/"),  # the exec step changes to it
            wrapper=wrapper,
        )
        probe = self._probe(container)
        ready_task: asyncio.Task[None] | None = None

        def on_event(event: ProcessEvent) -> None:
            nonlocal ready_task
            self._on_process_event(state, event, ready=probe is None)
            if ready_task is not None:
                ready_task.cancel()
                ready_task = None
            if event.kind == "started" and isinstance(probe, Probe):
                target = ProbeTarget(self.netns, self.ip or "", event.pid, spec.argv, spec.env)
                ready_task = asyncio.get_running_loop().create_task(
                    watch_readiness(probe, target, clock=self.ctx.clock, report=self._reporter(state))
                )

        process = SupervisedProcess(
            spec, clock=self.ctx.clock, on_event=on_event, backoff=self.ctx.backoff, grace=self.grace,
            policy=self.pod["spec"].get("restartPolicy", "Always"),
        )  # fmt: skip
        try:
            return await process.run()
        finally:
            if ready_task is not None:
                ready_task.cancel()

    async def _exec_prefix(
        self, state: ContainerState, container: dict[str, Any], env: dict[str, str]
    ) -> tuple[str, ...]:
        """The container's mount step; while it cannot be made, the container waits (retried)."""
        while True:
            try:
                return self.volumes.exec_prefix(container, env)
            except (LabError, OSError) as exc:
                self._note(f"container {container['name']}: {exc}")
                state.reason = "CreateContainerError"
                self._publish()
            await asyncio.sleep(_VOLUME_RETRY)

    def _probe(self, container: dict[str, Any]) -> Probe | ProbeSpecError | None:
        """The container's readiness probe; the error (noted once) when the lab cannot run it."""
        try:
            return readiness_probe(container)
        except ProbeSpecError as exc:
            self._note(f"{exc.message}; the container stays not ready ({exc.hint})")
            return exc

    def _reporter(self, state: ContainerState) -> Callable[[bool, str], None]:
        def report(ready: bool, failure: str) -> None:
            if failure:
                self._note(f"container {state.name}: Readiness probe failed: {failure}")
            state.ready = ready
            self._publish()

        return report

    def _on_process_event(self, state: ContainerState, event: ProcessEvent, *, ready: bool) -> None:
        """Records a process event; a started container is ready at once when ``ready`` (no check)."""
        stamp = rfc3339(event.at)
        state.restart_count = event.restarts
        if event.kind == "started":
            state.state, state.started_at, state.pid, state.ready = "running", stamp, event.pid, ready
        elif event.kind == "exited":
            state.state, state.ready, state.pid = "terminated", False, 0
            state.exit_code = state.last_exit_code = event.exit_code
            state.last_finished_at = stamp
        else:
            state.state, state.reason = "waiting", "CrashLoopBackOff"
        self._publish()

    def _publish(self) -> None:
        status = render_pod_status(
            phase=self._phase,
            containers=self._containers,
            pod_ip=self.ip,
            host_ip=self.node.address,
            start_time=self._start_time,
            reason=self._reason,
            message=self._message,
        )
        if status != self._last_status:
            self._last_status = status
            self.ctx.write_status(self.pod, status)
