"""``meshctl lab ...``: up, apply, delete, status, exec, logs, down."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from mesh.l7.normalize import MODES
from meshctl.lab.api import Lab, load_objects
from meshctl.lab.settings import DEFAULT_CERT_TTL, build_settings, default_state_dir

__all__ = ["register"]

_FOLLOW_POLL = 0.2


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(args.state, lab_id=getattr(args, "lab_id", None), progress=_progress)


def _load_all(
    files: list[str], node_names: tuple[str, ...], *, check_spec: bool = True
) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in files:
        objects.extend(load_objects(path, node_names=node_names, check_spec=check_spec))
    return objects


def _cmd_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    nodes = build_settings(node_count=args.nodes).node_names()
    objects = _load_all(args.filename, nodes)
    started = time.monotonic()
    lab.up(
        objects,
        nodes=args.nodes,
        timeout=args.timeout,
        wait=not args.no_wait,
        mesh=args.mesh,
        cert_ttl=args.cert_ttl,
        observability=args.observability,
        path_normalization=args.path_normalization,
        istiod_replicas=args.istiod_replicas,
        ztunnel_workers=args.ztunnel_workers,
    )
    print(f"lab {lab.lab_id} is up in {time.monotonic() - started:.1f} s\n")
    print(lab.status_text())
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    lab = _lab(args)
    for message in lab.apply(_load_all(args.filename, lab.settings.node_names())):
        print(message)
    if args.wait:
        lab.wait_ready(timeout=args.timeout)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    lab = _lab(args)
    for message in lab.delete(_load_all(args.filename, lab.settings.node_names(), check_spec=False)):
        print(message)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    print(_lab(args).status_text(), end="")
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    lab = _lab(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print(
            "meshctl lab exec: give a command after the pod, e.g. 'meshctl lab exec demo/client -- curl -s http://server/'",
            file=sys.stderr,
        )
        return 2
    return subprocess.run(lab.exec_argv(args.pod, command), env=lab.exec_env(), check=False).returncode


def _cmd_logs(args: argparse.Namespace) -> int:
    lab = _lab(args)
    pod = lab.find_pod(args.pod)
    path = lab.paths.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"])
    text = lab.logs(args.pod)
    sys.stdout.write(text)
    if not args.follow:
        return 0
    offset = len(text.encode())
    try:
        while True:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                offset += len(chunk)
            time.sleep(_FOLLOW_POLL)
    except (KeyboardInterrupt, FileNotFoundError):
        return 0


def _cmd_down(args: argparse.Namespace) -> int:
    lab = _lab(args)
    lab_id = lab.lab_id
    report = lab.down()
    print(f"lab {lab_id} is down" + ("" if report.found_anything else " (nothing was running)"))
    return 0


def register(subparsers: Any) -> None:
    """Adds ``lab`` and its subcommands to the ``meshctl`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state",
        default=default_state_dir(),
        help="state directory (default $MESH_LAB_STATE or %(default)s)",
    )
    lab = subparsers.add_parser(
        "lab", help="a whole cluster on this machine: nodes and pods as network namespaces",
        description="Run a Kubernetes-shaped cluster on this machine (needs root).",
    )  # fmt: skip
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    _add_lifecycle(sub, common)
    _add_changes(sub, common)
    _add_inspection(sub, common)


def _add_lifecycle(sub: Any, common: argparse.ArgumentParser) -> None:
    up = sub.add_parser("up", parents=[common], help="build the cluster (cleans what a crashed run left)")
    up.add_argument("-f", "--filename", action="append", default=[], help="YAML with objects (repeatable)")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--lab-id", default=None, help="prefix of everything the lab creates (default mlab)")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for pods to be ready")
    up.add_argument("--no-wait", action="store_true", help="return once the daemon is started")
    up.add_argument(
        "--mesh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the mesh: istiod_lite, a node agent and a ztunnel per node (default on)",
    )
    up.add_argument(
        "--cert-ttl",
        type=int,
        default=DEFAULT_CERT_TTL,
        help="workload certificate TTL in seconds the ztunnels ask for (default 86400; renewed at half life)",
    )
    up.add_argument(
        "--observability",
        action="store_true",
        help="also run Prometheus scraping the mesh (see it with 'meshctl dashboard')",
    )
    up.add_argument(
        "--path-normalization",
        choices=MODES,
        default="BASE",
        help="Istio's meshConfig.pathNormalization for every waypoint (default %(default)s)",
    )
    up.add_argument(
        "--istiod-replicas",
        type=int,
        default=1,
        help="istiod_lite replicas; the ztunnels and waypoints know them all and fail over (default 1)",
    )
    up.add_argument(
        "--ztunnel-workers",
        type=int,
        default=1,
        help="worker processes of each node's ztunnel (its --workers; default 1)",
    )
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", parents=[common], help="remove everything the lab created (idempotent)")
    down.add_argument("--lab-id", default=None, help="lab id when the state directory is gone (default mlab)")
    down.set_defaults(func=_cmd_down)


def _add_changes(sub: Any, common: argparse.ArgumentParser) -> None:
    apply = sub.add_parser("apply", parents=[common], help="create or update objects in the running lab")
    apply.add_argument(
        "-f", "--filename", action="append", required=True, help="YAML with objects (repeatable)"
    )
    apply.add_argument("--wait", action="store_true", help="wait until every pod is ready")
    apply.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait")
    apply.set_defaults(func=_cmd_apply)
    delete = sub.add_parser("delete", parents=[common], help="delete objects from the running lab")
    delete.add_argument(
        "-f", "--filename", action="append", required=True, help="YAML with objects (repeatable)"
    )
    delete.set_defaults(func=_cmd_delete)


def _add_inspection(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("status", parents=[common], help="nodes, pods and services").set_defaults(func=_cmd_status)
    exec_ = sub.add_parser("exec", parents=[common], help="run a command in a pod: exec POD -- CMD...")
    exec_.add_argument("pod", help="NAMESPACE/NAME or a unique name prefix (e.g. demo/client)")
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    exec_.set_defaults(func=_cmd_exec)
    logs = sub.add_parser("logs", parents=[common], help="a pod's output")
    logs.add_argument("pod", help="NAMESPACE/NAME or a unique name prefix")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    logs.set_defaults(func=_cmd_logs)
