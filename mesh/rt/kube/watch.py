"""List, then watch from the list's resourceVersion: the informer loop shared by istiod_lite's
Kubernetes source and the node agent's pod source.

One thread per resource drives the synchronous ``kubernetes`` client (its ``ApiClient`` for
auth, TLS and the connection pool; responses are read raw, as JSON lines) and hands results to
the event loop with ``call_soon_threadsafe``; the caller's caches are only touched on the loop.

Per resource: a paginated list replaces the cache for that kind; the watch asks for bookmarks
and resumes from the last resourceVersion seen. The server ending a watch (its timeout, or
our read timeout on a quiet stream) just resumes it. "410 Gone" -- an HTTP 410 or an ERROR
event with code 410 -- means the resourceVersion is too old: re-list (which also removes what
was deleted meanwhile), then watch again. Any other failure (connection refused or broken,
a 5xx, garbage on the stream) waits with capped, jittered exponential backoff and resumes the
watch from the last resourceVersion. A resource may carry a field selector (the node agent
watches the pods of its own node only).

A 404 on the collection means the API server does not serve that resource: a CRD (Istio's,
the Gateway API's) that is not installed, or not at the version asked for. The next of the
resource's versions is tried; when none is served the kind counts as listed and empty, one
warning says so, and the list is retried every ``WatchSettings.not_served_retry`` seconds, so
installing the CRD later is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from mesh.errors import MeshError

__all__ = [
    "Deliver",
    "Resource",
    "WatchError",
    "WatchSettings",
    "backoff_delay",
    "list_once",
    "make_api_client",
    "watch_resources",
]


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource to list and watch, cluster-wide.

    ``older_versions`` are tried in order when the API server does not serve ``version``
    (a CRD installed from an older release); every version must share one schema.
    """

    kind: str
    group: str
    version: str
    plural: str
    older_versions: tuple[str, ...] = ()
    field_selector: str = ""
    """Lists and watches only the matching objects (``spec.nodeName=node1``)."""

    @property
    def path(self) -> str:
        """The collection URL path at the preferred version."""
        return self.path_at(self.version)

    @property
    def versions(self) -> tuple[str, ...]:
        """The preferred version, then the older ones."""
        return (self.version, *self.older_versions)

    def path_at(self, version: str) -> str:
        """The collection URL path at ``version``."""
        if not self.group:
            return f"/api/{version}/{self.plural}"
        return f"/apis/{self.group}/{version}/{self.plural}"


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Timeouts, page size and backoff of the list/watch loops."""

    watch_timeout: int = 300
    connect_timeout: float = 10.0
    read_timeout: float = 330.0
    page_size: int = 500
    backoff_initial: float = 0.2
    backoff_max: float = 30.0
    not_served_retry: float = 30.0
    """Seconds between lists of a resource the API server does not serve (a CRD not installed)."""


class WatchError(MeshError):
    """The API server answered a list or watch with an error other than 410 Gone."""


class _ExpiredError(Exception):
    """410 Gone: the resourceVersion is too old; re-list."""


class _NotServedError(Exception):
    """404 on the collection: the API server does not serve the resource at this version."""


def backoff_delay(failures: int, *, initial: float, maximum: float, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling, capped, 50-100 % jitter."""
    if failures <= 0:
        return 0.0
    ceiling = min(maximum, initial * 2.0 ** min(failures - 1, 32))
    return ceiling * (0.5 + 0.5 * rng.random())


def make_api_client(*, kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """An ``ApiClient`` from the in-cluster service account, else from a kubeconfig file."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    return k8s.ApiClient(configuration)


def _lines(response: urllib3.HTTPResponse) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


Deliver = Callable[..., None]
"""Called on the event loop with ``("replace", kind, [parsed])``, ``("upsert", parsed)`` or
``("delete", kind, namespace, name)``."""
Parse = Callable[[str, dict[str, Any]], Any]
"""Turns one API object of a resource's kind (list items carry no ``kind``) into what the caller
caches; None (or a MeshError, logged) skips it."""


class _Watcher:
    """The list/watch loop of one resource, run in its own thread."""

    def __init__(
        self,
        resource: Resource,
        api: k8s.ApiClient,
        *,
        settings: WatchSettings,
        parse: Parse,
        deliver: Deliver,
        stop: threading.Event,
        rng: random.Random,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.resource = resource
        self._parse_object = parse
        self._api = api
        self._settings = settings
        self._deliver = deliver
        self._stop = stop
        self._rng = rng
        self._log = log.bind(**{"k8s.resource": resource.plural})
        self._response: urllib3.HTTPResponse | None = None
        self._version = resource.version
        self._not_served = False
        self.resource_version = ""

    def interrupt(self) -> None:
        """Unblocks a read in progress (called from another thread when stopping)."""
        response = self._response
        if response is not None:
            # already closed, or its connection already went back to the pool
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                response.shutdown()

    def run(self) -> None:
        """Lists and watches until the stop event is set."""
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self._list()
                if self._watch():
                    failures = 0
                continue
            except _ExpiredError:
                self._log.info("source.kube.relist", reason="410 Gone")
                self.resource_version = ""
                failures += 1
                if failures == 1:
                    continue  # the first 410 re-lists at once
            except _NotServedError:
                if self._try_older_version():
                    continue
                self._stop.wait(self._settings.not_served_retry)
                continue
            except Exception as exc:  # the loop must outlive any failure; it is logged and retried
                if self._stop.is_set():
                    break
                failures += 1
                self._log.warning(
                    "source.kube.retry", error=f"{type(exc).__name__}: {exc}", failures=failures
                )
            s = self._settings
            self._stop.wait(
                backoff_delay(failures, initial=s.backoff_initial, maximum=s.backoff_max, rng=self._rng)
            )

    def _try_older_version(self) -> bool:
        """After a 404: moves to the next version (True), or reports the resource absent (False)."""
        self.resource_version = ""
        versions = self.resource.versions
        position = versions.index(self._version)
        if position + 1 < len(versions):
            self._version = versions[position + 1]
            return True
        self._version = versions[0]
        if not self._not_served:
            self._not_served = True
            self._log.warning(
                "source.kube.not_served",
                versions=",".join(versions),
                hint=f"install the CRD that serves {self.resource.plural}.{self.resource.group or 'core'}"
                f" to use {self.resource.kind}s; it is looked for again every"
                f" {self._settings.not_served_retry:g} s",
            )
            self._deliver("replace", self.resource.kind, [])
        return False

    def _request(self, params: list[tuple[str, Any]], *, read_timeout: float) -> urllib3.HTTPResponse:
        method, url, headers, _, _ = self._api.param_serialize(
            "GET", self.resource.path_at(self._version), query_params=params, auth_settings=["BearerToken"]
        )
        timeout = (self._settings.connect_timeout, read_timeout)
        response: urllib3.HTTPResponse = self._api.call_api(
            method, url, header_params=headers, _request_timeout=timeout
        ).response
        self._response = response
        if self._stop.is_set():  # stopped while connecting: interrupt() may have missed this response
            self.interrupt()
        if response.status == 410:
            response.drain_conn()
            raise _ExpiredError()
        if response.status == 404:
            response.drain_conn()
            raise _NotServedError()
        if response.status != 200:
            body = response.read(512).decode("utf-8", "replace")
            raise WatchError(f"GET {self.resource.path_at(self._version)} answered {response.status}: {body}")
        return response

    def _list(self) -> None:
        items: list[Any] = []
        token = ""
        while True:
            params: list[tuple[str, Any]] = [("limit", self._settings.page_size), *self._selector()]
            if token:
                params.append(("continue", token))
            response = self._request(params, read_timeout=self._settings.read_timeout)
            body = json.loads(response.read())
            items.extend(self._parse(raw) for raw in body.get("items") or ())
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        self.resource_version = str(meta.get("resourceVersion") or "")
        objects = [o for o in items if o is not None]
        if self._not_served:
            self._not_served = False
            self._log.info("source.kube.served", version=self._version)
        self._deliver("replace", self.resource.kind, objects)

    def _watch(self) -> bool:
        """Follows one watch request to its end; True when it delivered at least one event."""
        s = self._settings
        params: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", s.watch_timeout),
            *self._selector(),
        ]
        if self.resource_version:
            params.append(("resourceVersion", self.resource_version))
        response = self._request(params, read_timeout=s.read_timeout)
        delivered = False
        try:
            for line in _lines(response):
                delivered = self._event(json.loads(line)) or delivered
        except urllib3.exceptions.ReadTimeoutError:
            pass  # a quiet stream: resume from the last resourceVersion
        return delivered

    def _event(self, event: dict[str, Any]) -> bool:
        kind, raw = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if raw.get("code") == 410:
                raise _ExpiredError()
            path = self.resource.path_at(self._version)
            raise WatchError(f"watch of {path} failed: {raw.get('code')} {raw.get('message')}")
        version = (raw.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            meta = raw.get("metadata") or {}
            if kind == "DELETED" and isinstance(meta.get("name"), str):
                self._deliver("delete", self.resource.kind, meta.get("namespace") or "", meta["name"])
            elif kind != "DELETED" and (obj := self._parse(raw)) is not None:
                self._deliver("upsert", obj)
        if version:
            self.resource_version = str(version)
        return kind != "BOOKMARK"

    def _selector(self) -> list[tuple[str, Any]]:
        return [("fieldSelector", self.resource.field_selector)] if self.resource.field_selector else []

    def _parse(self, raw: Any) -> Any:
        if not isinstance(raw, dict):
            self._log.warning("source.kube.skipped", problem="the object is not a JSON object")
            return None
        try:
            return self._parse_object(self.resource.kind, raw)
        except MeshError as exc:
            self._log.warning("source.kube.skipped", problem=exc.message)
            return None


async def watch_resources(
    api: k8s.ApiClient,
    resources: Iterable[Resource],
    *,
    parse: Parse,
    deliver: Deliver,
    settings: WatchSettings,
    rng: random.Random,
    log: structlog.typing.FilteringBoundLogger,
) -> None:
    """Lists and watches each resource in a thread of its own and calls ``deliver`` on this event
    loop with what they see, until cancelled; then stops and joins the threads."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def on_loop(op: str, *args: Any) -> None:
        if not stop.is_set():
            loop.call_soon_threadsafe(deliver, op, *args)

    watchers = [
        _Watcher(r, api, settings=settings, parse=parse, deliver=on_loop, stop=stop, rng=rng, log=log)
        for r in resources
    ]
    threads = [
        threading.Thread(target=w.run, name=f"watch-{w.resource.plural}", daemon=True) for w in watchers
    ]
    for thread in threads:
        thread.start()
    try:
        await asyncio.Future()
    finally:
        stop.set()
        for watcher in watchers:
            watcher.interrupt()
        await asyncio.to_thread(_join, threads, settings.connect_timeout)


async def list_once(
    api: k8s.ApiClient,
    resources: Sequence[Resource],
    *,
    parse: Parse,
    within: float,
    settings: WatchSettings | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> dict[str, list[Any]]:
    """One listing of each resource (the same loop as ``watch_resources``: pages, older versions,
    retries), by kind; a resource the API server does not serve lists as empty. Raises WatchError
    naming the resources not listed ``within`` seconds (the log says why: RBAC, network)."""
    listed: dict[str, list[Any]] = {}
    done = asyncio.Event()
    wanted = {r.kind for r in resources}

    def deliver(op: str, *args: Any) -> None:
        if op == "replace" and args[0] not in listed:
            listed[args[0]] = args[1]
            if wanted <= listed.keys():
                done.set()

    task = asyncio.create_task(
        watch_resources(
            api, resources, parse=parse, deliver=deliver, settings=settings or WatchSettings(),
            rng=random.Random(), log=log or structlog.get_logger(),
        )
    )  # fmt: skip
    try:
        async with asyncio.timeout(within):
            await done.wait()
    except TimeoutError:
        missing = ", ".join(sorted(wanted - listed.keys()))
        raise WatchError(
            f"could not list {missing} within {within:g} s",
            hint="check that the cluster is reachable and you may list them (the warnings above say why)",
        ) from None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return listed


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
