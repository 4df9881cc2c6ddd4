"""``meshctl canary start|status``: automated canary analysis with rollback (Flagger's job, built in).

``start`` shifts the weights of the route the user already has (see ``meshctl.canary_plan``)
through ``--steps``, checks the new version's golden signals from Prometheus (as the waypoint
reports them) after each ``--interval``, promotes at the end, and rolls back at once (weights
back to 100/0, the failed metric and its value printed) when a threshold is crossed. Its state
lives in the route object's annotation: a ``start`` after meshctl was stopped resumes the canary
at its step; ``status`` prints it. Runs against the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import re
import time
from collections.abc import Callable
from typing import Any

from mesh.errors import MeshError
from mesh.rt.loop import run as run_loop
from meshctl.canary_plan import (
    CanaryError,
    CanarySpec,
    CanaryState,
    RouteRef,
    Signals,
    find_route,
    judge,
    read_state,
    signal_queries,
    with_state,
    with_weight,
)
from meshctl.dashboard.cli import prometheus_endpoint
from meshctl.dashboard.graph import histogram_quantile
from meshctl.dashboard.sources import Prometheus
from meshctl.lab.api import Lab
from meshctl.lab.settings import default_state_dir
from meshctl.tables import format_table

__all__ = ["CanaryController", "register"]

_KINDS = ("VirtualService", "HTTPRoute", "DestinationRule")
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")
_PROGRESS_EVERY = 5.0
_MIN_WINDOW = 10


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``canary start|status`` to the meshctl CLI."""
    parser = subparsers.add_parser(
        "canary", help="shift traffic to a new version step by step, with rollback"
    )
    sub = parser.add_subparsers(dest="canary_command", required=True, metavar="COMMAND")
    start = sub.add_parser("start", help="run (or resume) a canary of SERVICE from one version to another")
    start.add_argument("service", help="the Service whose route splits traffic between the versions")
    start.add_argument("-n", "--namespace", default="default")
    start.add_argument("--from", dest="from_version", required=True, help="the version serving now (subset)")
    start.add_argument("--to", dest="to_version", required=True, help="the new version (subset)")
    start.add_argument("--steps", default="5,10,25,50,100", help="weights of the new version, in %%")
    start.add_argument("--interval", default="30s", help="time at each step before its check (e.g. 30s, 1m)")
    start.add_argument("--max-error-rate", default="1%", help="5xx share of the new version that rolls back")
    start.add_argument("--max-p99", default="500ms", help="p99 latency of the new version that rolls back")
    start.add_argument("--prometheus", default=None, help="Prometheus URL (default: the running lab's)")
    start.add_argument("--state", default=default_state_dir(), help="lab state directory")
    start.set_defaults(func=_start)
    status = sub.add_parser("status", help="the canary's step, metrics and decision history")
    status.add_argument("service")
    status.add_argument("-n", "--namespace", default="default")
    status.add_argument("--from", dest="from_version", required=True)
    status.add_argument("--to", dest="to_version", required=True)
    status.add_argument("--state", default=default_state_dir(), help="lab state directory")
    status.set_defaults(func=_status)


def _seconds(text: str, flag: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if not match:
        raise CanaryError(f"{flag} {text!r} is not a duration", hint="e.g. 500ms, 30s or 2m")
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]


def _spec(args: argparse.Namespace) -> CanarySpec:
    try:
        steps = tuple(int(s) for s in args.steps.split(","))
    except ValueError:
        raise CanaryError(f"--steps {args.steps!r}", hint="weights in %, e.g. 5,10,25,50,100") from None
    if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps):
        raise CanaryError(f"--steps {args.steps!r}", hint="rising weights from 1 to 100, ending with 100")
    rate = args.max_error_rate.strip().removesuffix("%")
    try:
        max_error_rate = float(rate) / 100
    except ValueError:
        raise CanaryError(f"--max-error-rate {args.max_error_rate!r}", hint="a percentage, e.g. 1%") from None
    interval = _seconds(args.interval, "--interval")
    if interval < 10:
        raise CanaryError(f"--interval {args.interval}", hint="at least 10s (two Prometheus scrapes)")
    return CanarySpec(
        service=args.service, namespace=args.namespace, from_version=args.from_version,
        to_version=args.to_version, steps=steps, interval=interval, max_error_rate=max_error_rate,
        max_p99_ms=_seconds(args.max_p99, "--max-p99") * 1000,
    )  # fmt: skip


class CanaryController:
    """Drives one canary through its steps on a lab (see the module docstring)."""

    def __init__(
        self, lab: Lab, spec: CanarySpec, prometheus: Prometheus, *, say: Callable[[str], None] = print
    ) -> None:
        self.lab, self.spec, self.prometheus, self.say = lab, spec, prometheus, say

    def route(self) -> tuple[RouteRef, dict[str, Any]]:
        """The rule the canary drives and its object as stored now."""
        objects = [o for kind in _KINDS for o in self.lab.objects(kind, self.spec.namespace)]
        ref = find_route(objects, self.spec)
        obj = next(o for o in objects if o["kind"] == ref.kind and o["metadata"]["name"] == ref.name)
        return ref, obj

    async def run(self) -> int:
        """Runs (or resumes) the canary; 0 when promoted, 1 when rolled back."""
        ref, obj = self.route()
        state = read_state(obj)
        if state is not None and state.phase == "Progressing":
            self.say(
                f"resuming the canary of {self.spec.service} at step {state.step + 1} ({state.weight} %)"
            )
        else:
            state = CanaryState(spec=dataclasses.asdict(self.spec))
        step_started = time.monotonic()
        while True:
            weight = self.spec.steps[state.step]
            self._write(ref, weight, state)
            self.say(f"step {state.step + 1}/{len(self.spec.steps)}: {self.spec.to_version} at {weight} %")
            step_started = time.monotonic() if state.failed_checks == 0 else step_started
            await self._wait(self.spec.interval)
            # Only this step's traffic (what came before it is another weight's, or another canary's),
            # and at least two scrapes of each series.
            window = max(math.ceil(time.monotonic() - step_started), _MIN_WINDOW)
            signals = await self.measure(ref, window)
            decision = judge(self.spec, signals, failed_checks=state.failed_checks)
            state.history.append({
                "at": round(time.time(), 1), "weight": weight,
                "requestsPerSecond": round(signals.requests_per_s, 3),
                "errorRate": round(signals.error_rate, 4),
                "p99Ms": None if signals.p99_ms is None else round(signals.p99_ms, 1),
                "decision": decision.action, "reason": decision.reason,
            })  # fmt: skip
            p99 = "-" if signals.p99_ms is None else f"{signals.p99_ms:.0f} ms"
            seen = f"{signals.requests_per_s:.1f} req/s, {100 * signals.error_rate:.1f} % errors, p99 {p99}"
            self.say(f"  {seen}: {decision.action} ({decision.reason})")
            if decision.action == "rollback":
                state.phase, state.message = "RolledBack", decision.reason
                self._write(ref, 0, state)
                self.say(f"rolled back: {self.spec.from_version} at 100 % ({decision.reason})")
                return 1
            if decision.action == "hold":
                state.failed_checks += 1
                continue
            state.failed_checks = 0
            if state.step + 1 == len(self.spec.steps):
                state.phase, state.message = "Promoted", f"{self.spec.to_version} serves 100 %"
                self._write(ref, 100, state)
                self.say(f"promoted: {self.spec.to_version} at 100 %")
                return 0
            state.step += 1

    async def measure(self, ref: RouteRef, window_s: int) -> Signals:
        """The new version's golden signals over the last ``window_s`` seconds."""
        queries = signal_queries(ref, window_s)
        requests, errors, buckets = await asyncio.gather(
            *(self.prometheus.query(queries[name]) for name in ("requests", "errors", "buckets"))
        )
        answered = sum(s.value for s in requests)
        failed = sum(s.value for s in errors)
        counts = [(float(s.labels.get("le", "+Inf")), s.value) for s in buckets]
        error_rate = failed / answered if answered else 0.0
        return Signals(answered / window_s, error_rate, histogram_quantile(0.99, counts))

    def _write(self, ref: RouteRef, weight: int, state: CanaryState) -> None:
        _, obj = self.route()  # re-read: the user may have changed other parts of it
        state.weight = weight
        updated = with_state(with_weight(obj, ref, self.spec, weight), state)
        for name in _SERVER_FIELDS:
            updated["metadata"].pop(name, None)
        updated.pop("status", None)
        self.lab.apply([updated])

    async def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _PROGRESS_EVERY))
            if deadline - time.monotonic() > 1:
                self.say(f"  checking in {deadline - time.monotonic():.0f} s")


def _start(args: argparse.Namespace) -> int:
    lab = Lab(args.state)
    if not lab.is_running():
        raise MeshError("no lab is running", hint="start one with 'meshctl lab up --observability'")
    spec = _spec(args)
    controller = CanaryController(lab, spec, Prometheus(prometheus_endpoint(args.state, args.prometheus)))
    controller.say = lambda text: print(text, flush=True)
    try:
        return run_loop(controller.run())
    except KeyboardInterrupt:
        print("canary: stopped; its state is kept on the route: 'meshctl canary start' again resumes it")
        return 130


def _status(args: argparse.Namespace) -> int:
    lab = Lab(args.state)
    spec = CanarySpec(args.service, args.namespace, args.from_version, args.to_version)
    controller = CanaryController(lab, spec, Prometheus(prometheus_endpoint(args.state, "http://unused")))
    ref, obj = controller.route()
    state = read_state(obj)
    if state is None:
        print(f"no canary has run on {ref.kind}/{ref.name}")
        return 0
    print(
        f"{ref.kind}/{ref.name}: {state.phase}, step {state.step + 1}, {spec.to_version} at {state.weight} %"
    )
    if state.message:
        print(f"  {state.message}")
    rows = [
        [time.strftime("%H:%M:%S", time.localtime(h["at"])), f"{h['weight']} %", f"{h['requestsPerSecond']}",
         f"{100 * h['errorRate']:.1f} %", "-" if h["p99Ms"] is None else f"{h['p99Ms']} ms", h["decision"],
         h["reason"]]
        for h in state.history
    ]  # fmt: skip
    print(format_table([["TIME", "WEIGHT", "REQ/S", "ERRORS", "P99", "DECISION", "WHY"], *rows]), end="")
    return 0 if state.phase != "RolledBack" else 1
