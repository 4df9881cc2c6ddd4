"""The lab's Python API, used by the CLI, the tests, the demo and the e2e/ztunnel work.

lab = Lab(state_dir="/tmp/x", lab_id="t1")
lab.up(load_objects("samples/cluster.yaml"))
lab.exec_in_pod("demo/client", ["curl", "-s", "http://server/"])
lab.down()
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshctl.lab._meta import is_terminating, pod_ready
from meshctl.lab.actions import apply_actions
from meshctl.lab.applying import plan_apply, plan_delete
from meshctl.lab.cleanup import (
    CleanupReport,
    check_lab_id_free,
    cleanup_lab,
    record_lab_id,
    reset_state,
)
from meshctl.lab.cni import CONFLIST_NAME, default_conflist
from meshctl.lab.errors import LabError, LabNotRunningError
from meshctl.lab.mesh import MESH_NAMESPACE, awaiting_enrolment, mesh_installed, mesh_objects
from meshctl.lab.objects import parse_documents, validate_object
from meshctl.lab.settings import (
    DEFAULT_CERT_TTL,
    DEFAULT_LAB_ID,
    LabSettings,
    build_settings,
    check_lab_id,
    default_state_dir,
)
from meshctl.lab.status import render_status
from meshctl.lab.store import Store, write_atomic
from meshctl.lab.supervisor import process_start_time, read_pid_file

__all__ = ["Lab", "load_objects"]

_POLL = 0.05
_LOG_TAIL = 2000
Progress = Callable[[str], None]


def load_objects(
    path: str | Path, *, node_names: Sequence[str] | None = None, check_spec: bool = True
) -> list[dict[str, Any]]:
    """Every object in a YAML file, validated (errors name the file, the object and the field);
    ``check_spec=False`` for objects to delete."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror}", hint="check the path given with -f") from exc
    return parse_documents(text, source=str(path), node_names=node_names, check_spec=check_spec)


class Lab:
    """One lab, identified by its state directory (see docs/lab-state.md)."""

    def __init__(
        self,
        state_dir: str | Path | None = None,
        *,
        lab_id: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.store = Store(state_dir or default_state_dir())
        self.paths = self.store.paths
        self._lab_id = check_lab_id(lab_id) if lab_id else None
        self._progress = progress or (lambda _: None)
        self._daemon_proc: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------------------------- lifecycle
    @property
    def lab_id(self) -> str:
        """The lab id from lab.yaml, else the one given, else ``mlab``."""
        if self.paths.settings_file.exists():
            return self.settings.lab_id
        return self._lab_id or DEFAULT_LAB_ID

    @property
    def settings(self) -> LabSettings:
        """The lab's settings (lab.yaml)."""
        return self.store.read_settings()

    def daemon_pid(self) -> int | None:
        """The PID of the running lab daemon, or None."""
        return read_pid_file(self.paths.daemon_pid)

    def is_running(self) -> bool:
        """True when the lab daemon is alive."""
        return self.daemon_pid() is not None

    def up(
        self,
        objects: Sequence[dict[str, Any]] = (),
        *,
        nodes: int = 2,
        timeout: float = 60.0,
        wait: bool = True,
        mesh: bool = False,
        cert_ttl: int = DEFAULT_CERT_TTL,
        observability: bool = False,
        path_normalization: str = "BASE",
        istiod_replicas: int = 1,
        ztunnel_workers: int = 1,
    ) -> None:
        """Cleans leftovers, starts the daemon, applies ``objects`` and waits until all pods are ready.

        An interrupt (Ctrl-C) or a failure while coming up tears everything down again.
        """
        if self.is_running():
            raise LabError(
                f"a lab is already running with state directory {self.paths.root}",
                hint="change it with 'meshctl lab apply', or stop it with 'meshctl lab down'",
            )
        lab_id = self._lab_id or self.lab_id
        settings = build_settings(
            lab_id=lab_id,
            node_count=nodes,
            mesh=mesh,
            cert_ttl=cert_ttl,
            observability=observability,
            path_normalization=path_normalization,
            istiod_replicas=istiod_replicas,
            ztunnel_workers=ztunnel_workers,
        )
        if mesh:  # the mesh is installed from daemonset/, as meshctl install --lab does
            objects = [*mesh_objects(settings), *objects]
        objects = self._validate(objects, settings.node_names())
        _preflight()
        self.store.check_writable()
        check_lab_id_free(settings.lab_id, self.paths.root)
        previous = self.lab_id if self.paths.settings_file.exists() else settings.lab_id
        if previous != settings.lab_id:
            cleanup_lab(self.paths, previous, progress=self._progress)
        report = cleanup_lab(self.paths, settings.lab_id, progress=self._progress)
        if report.found_anything:
            self._progress("cleaned up what a previous run left behind")
        try:
            self._start(settings, objects)
            if wait:
                self.wait_ready(timeout=timeout)
        except BaseException:
            self._progress("tearing down the partly started lab")
            self.down()
            raise

    def _start(self, settings: LabSettings, objects: Sequence[dict[str, Any]]) -> None:
        reset_state(self.paths, keep_logs=False)
        for directory in (self.paths.logs, self.paths.run, self.paths.cni_bin):
            directory.mkdir(parents=True, exist_ok=True)
        if not list(self.paths.cni.glob("*.conflist")):
            write_atomic(
                self.paths.cni / CONFLIST_NAME, json.dumps(default_conflist(settings.lab_id), indent=2) + "\n"
            )
        self.store.write_settings(settings)
        record_lab_id(settings.lab_id, self.paths.root)
        default_ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
        self._write_apply([default_ns, *objects])
        self._spawn_daemon()
        pid = self.daemon_pid()
        self._progress(
            f"lab {settings.lab_id}: daemon started (pid {pid}), building {len(settings.nodes)} nodes"
        )

    def _spawn_daemon(self) -> None:
        with open(self.paths.daemon_log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "meshctl.lab.daemon", "--state", str(self.paths.root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        write_atomic(self.paths.daemon_pid, f"{proc.pid} {process_start_time(proc.pid) or 0}\n")
        self._daemon_proc = proc

    def down(self) -> CleanupReport:
        """Stops everything the lab created (idempotent; Ctrl-C is ignored while it runs)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            proc = self._daemon_proc
            if proc is not None and proc.poll() is None and self.daemon_pid() is None:
                proc.terminate()  # started by us, but interrupted before its pid file was written
            report = cleanup_lab(self.paths, self.lab_id, progress=self._progress)
            if proc is not None:
                proc.wait(timeout=5)
                self._daemon_proc = None
            return report
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until every pod is Running and ready (with the mesh installed: and enrolled when it
        belongs in the mesh) and the daemon has programmed the data plane.

        Raises :class:`LabError` naming the pods that are not ready (with their reasons) on timeout,
        or with the end of the daemon log if the daemon died.
        """
        deadline = time.monotonic() + timeout
        reported = ""
        while True:
            if not self.is_running():
                raise LabError(
                    f"the lab daemon is not running; end of {self.paths.daemon_log}:\n{self._log_tail()}",
                    hint="fix the cause, then 'meshctl lab down' and 'meshctl lab up'",
                )
            rv = self.store.current_rv()
            pending = self._not_ready()
            nodes = self.store.list("Node")
            if nodes and not pending and self.store.synced_rv() == rv:
                return
            total = len([p for p in self.store.list("Pod") if not is_terminating(p)])
            line = f"nodes {len(nodes)}/{len(self.settings.nodes)}, pods ready {total - len(pending)}/{total}"
            if line != reported:
                self._progress(line)
                reported = line
            if time.monotonic() > deadline:
                raise LabError(
                    f"the lab is not ready after {timeout:.0f} s: "
                    + ("; ".join(pending) or f"the daemon has not caught up; see {self.paths.daemon_log}"),
                    hint="see 'meshctl lab status' and 'meshctl lab logs POD'",
                )
            time.sleep(_POLL)

    def _not_ready(self) -> list[str]:
        result = []
        pods = self.store.list("Pod")
        for pod in pods:
            status = pod.get("status") or {}
            name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            if is_terminating(pod):
                result.append(f"{name} terminating")
            elif not pod_ready(pod) and status.get("phase") != "Succeeded":
                why = status.get("message") or status.get("reason") or status.get("phase", "Pending")
                result.append(f"{name} {why}")
        if mesh_installed(self.store.list("DaemonSet", MESH_NAMESPACE)):
            waiting = awaiting_enrolment(pods, self.store.list("Namespace"))
            result += [f"{name} not enrolled in the mesh yet" for name in waiting]
        return result

    def _log_tail(self) -> str:
        try:
            return self.paths.daemon_log.read_text(errors="replace")[-_LOG_TAIL:]
        except FileNotFoundError:
            return "(no log)"

    # ------------------------------------------------------------------------------------ objects
    def _validate(
        self, objects: Sequence[dict[str, Any]], node_names: Sequence[str], *, check_spec: bool = True
    ) -> list[dict[str, Any]]:
        names = frozenset(node_names)
        return [
            validate_object(o, source="api", index=i, node_names=names, check_spec=check_spec)
            for i, o in enumerate(objects, 1)
        ]

    def _write_apply(self, objects: Sequence[dict[str, Any]]) -> list[str]:
        with self.store.transaction() as txn:
            current = self.store.load_all()
            actions, messages = plan_apply(
                current,
                objects,
                service_cidr=self.settings.service_cidr,
                rng=random.Random(),
                now=time.time(),
            )
            apply_actions(txn, actions)
        return messages

    def _require_running(self) -> None:
        if not self.is_running():
            raise LabNotRunningError(str(self.paths.root))

    def apply(self, objects: Sequence[dict[str, Any]]) -> list[str]:
        """Creates or updates objects in the running lab; returns kubectl-style messages."""
        self._require_running()
        return self._write_apply(self._validate(objects, self.settings.node_names()))

    def delete(self, objects: Sequence[dict[str, Any]]) -> list[str]:
        """Deletes objects (a Namespace with everything in it); pods stop in the background."""
        self._require_running()
        objects = self._validate(objects, self.settings.node_names(), check_spec=False)
        with self.store.transaction() as txn:
            actions, messages = plan_delete(self.store.load_all(), objects, now=time.time(), graceful=True)
            apply_actions(txn, actions)
        return messages

    def objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored objects of one kind (optionally one namespace)."""
        return self.store.list(kind, namespace)

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Pods that are not being deleted."""
        return [p for p in self.store.list("Pod", namespace) if not is_terminating(p)]

    def find_pod(self, ref: str) -> dict[str, Any]:
        """A pod by ``ns/name``, ``ns/prefix`` or a name prefix that matches exactly one pod."""
        self.store.read_settings()  # a clear error when there is no lab at all
        namespace, _, name = ref.rpartition("/")
        pods = self.pods(namespace or None)
        exact = [p for p in pods if p["metadata"]["name"] == name]
        matches = exact or [p for p in pods if p["metadata"]["name"].startswith(name)]
        if len(matches) == 1:
            return matches[0]
        labels = ", ".join(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in matches)
        if matches:
            raise LabError(f"{ref!r} matches several pods: {labels}", hint="give NAMESPACE/NAME")
        raise LabError(f"no pod matches {ref!r}", hint="see 'meshctl lab status' for the pods")

    def pod_ip(self, namespace: str, name: str) -> str:
        """The IP of a pod (``name`` may be a unique prefix, e.g. the Deployment's name)."""
        ip = (self.find_pod(f"{namespace}/{name}").get("status") or {}).get("podIP")
        if not ip:
            raise LabError(f"pod {namespace}/{name} has no IP yet", hint="wait with Lab.wait_ready()")
        return str(ip)

    def pod_netns(self, pod: str | dict[str, Any]) -> str:
        """The network namespace name of a pod (a reference or a Pod object)."""
        obj = self.find_pod(pod) if isinstance(pod, str) else pod
        return self.settings.netns_of(obj)

    def exec_argv(self, pod: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside a pod (with its hosts and resolv.conf).

        When the pod's first container mounts volumes and runs, ``argv`` runs in that container's
        mount namespace too (``nsenter``), so it sees the volumes at their mount paths, as
        ``kubectl exec`` does."""
        obj = self.find_pod(pod)
        first = obj["spec"]["containers"][0]
        if first.get("volumeMounts"):
            meta = obj["metadata"]
            pid = read_pid_file(self.paths.pids / f"{meta['namespace']}_{meta['name']}_{first['name']}.pid")
            if pid is not None:
                return ["nsenter", f"--target={pid}", "--mount", "--net", "--", *argv]
        return ["ip", "netns", "exec", self.pod_netns(obj), *argv]

    def exec_env(self) -> dict[str, str]:
        """The environment for commands run in pods: this environment with the lab's Python first on PATH."""
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def exec_in_pod(
        self,
        pod: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` in the pod's namespace and returns its output (text)."""
        return subprocess.run(
            self.exec_argv(pod, argv), input=input, capture_output=True, text=True,
            timeout=timeout, check=check, env=self.exec_env(),
        )  # fmt: skip

    def logs(self, pod: str) -> str:
        """The pod's log (all its containers, plus the runtime's notes)."""
        obj = self.find_pod(pod)
        path = self.paths.pod_log(obj["metadata"]["namespace"], obj["metadata"]["name"])
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def set_cni_chain(self, plugins: Sequence[dict[str, Any]], *, name: str | None = None) -> Path:
        """Writes the chained CNI plugins (used for pods created from now on); returns the conflist path."""
        data = default_conflist(self.lab_id)
        data["plugins"] = list(plugins)
        if name:
            data["name"] = name
        path = self.paths.cni / CONFLIST_NAME
        write_atomic(path, json.dumps(data, indent=2) + "\n")
        return path

    def status_text(self) -> str:
        """The ``meshctl lab status`` report."""
        settings = self.settings
        pid = self.daemon_pid()
        state = (
            f"daemon running (pid {pid})" if pid else "daemon NOT running (clean up with 'meshctl lab down')"
        )
        header = f"lab {settings.lab_id}: {state}; state {self.paths.root}"
        return render_status(
            header=header,
            nodes=self.store.list("Node"),
            pods=self.store.list("Pod"),
            services=self.store.list("Service"),
            slices=self.store.list("EndpointSlice"),
            namespaces=self.store.list("Namespace"),
        )

    @contextmanager
    def running(self, objects: Sequence[dict[str, Any]] = (), **up_args: Any) -> Iterator[Lab]:
        """``with lab.running(objs): ...`` brings the lab up and always takes it down."""
        self.up(objects, **up_args)
        try:
            yield self
        finally:
            self.down()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _preflight() -> None:
    """Root and the network tools, checked before anything is created."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces)", hint="run it with sudo")
    for tool, package in (("ip", "iproute2"), ("iptables-restore", "iptables"), ("sysctl", "procps")):
        if shutil.which(tool) is None:
            raise LabError(f"the lab needs the {tool} command", hint=f"install it: apt-get install {package}")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
