"""Where the dashboard's data comes from: Prometheus's HTTP API (PromQL), and istiod_lite's
``/debug/workloadz`` for what the live mesh has enrolled. Either may sit inside one of the lab's
namespaces (``netns``); requests run on a worker thread so the web server never blocks.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.errors import MeshError
from meshctl.dashboard.graph import Sample, parse_vector
from meshctl.nethttp import http_get

__all__ = ["Endpoint", "LiveMesh", "Prometheus", "SourceError"]


class SourceError(MeshError):
    """Prometheus or istiod_lite did not answer as expected."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An HTTP base URL, reached from inside ``netns`` when set (the lab's bridge or a node namespace)."""

    url: str
    netns: str | None = None

    def get_json(self, path: str, params: Mapping[str, str], *, timeout: float) -> Any:
        """GETs ``path`` with ``params``; returns the decoded JSON; raises SourceError."""
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise SourceError(f"{self.url!r} is not an http:// URL", hint="pass e.g. http://127.0.0.1:9090")
        target = parsed.path.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
        where = f"{self.url} (in network namespace {self.netns})" if self.netns else self.url
        try:
            status, body = http_get(
                parsed.hostname, parsed.port or 80, target, netns=self.netns, timeout=timeout
            )
        except OSError as exc:
            raise SourceError(f"{where} is not answering: {exc.strerror or exc}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise SourceError(f"{where}{path} answered {status} without JSON") from None
        if status >= 400:
            detail = document.get("error", "") if isinstance(document, dict) else ""
            raise SourceError(f"{where}{path} answered {status}: {detail}")
        return document


class Prometheus:
    """PromQL instant and range queries."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self._timeout = timeout

    async def query(self, expr: str) -> list[Sample]:
        """The instant vector of ``expr`` now."""
        answer = await asyncio.to_thread(
            self.endpoint.get_json, "/api/v1/query", {"query": expr}, timeout=self._timeout
        )
        try:
            return parse_vector(answer)
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"Prometheus's answer to {expr!r} is not a vector: {exc}") from None

    async def query_range(self, expr: str, *, start: float, end: float, step: float) -> list[list[float]]:
        """``[[unix time, value], ...]`` of ``expr`` (one series: sum it in the expression)."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        answer = await asyncio.to_thread(
            self.endpoint.get_json, "/api/v1/query_range", params, timeout=self._timeout
        )
        try:
            result = answer["data"]["result"]
            values = result[0]["values"] if result else []
            return [[float(t), float(v)] for t, v in values if v not in ("NaN", "+Inf", "-Inf")]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SourceError(f"Prometheus's answer to {expr!r} is not a matrix: {exc}") from None


class LiveMesh:
    """istiod_lite's view of the mesh: every workload and whether it is enrolled."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 3.0) -> None:
        self.endpoint = endpoint
        self._timeout = timeout

    async def workloads(self) -> list[dict[str, Any]]:
        """``/debug/workloadz``'s workloads; raises SourceError."""
        answer = await asyncio.to_thread(
            self.endpoint.get_json, "/debug/workloadz", {}, timeout=self._timeout
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("workloads"), list):
            raise SourceError("istiod_lite's /debug/workloadz has no workload list", hint="is it up to date?")
        return list(answer["workloads"])
