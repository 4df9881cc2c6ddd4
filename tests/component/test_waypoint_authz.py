"""The waypoint process enforcing L7 policy (Envoy HTTP RBAC on the virtual host) between raw
clients and a backend that records every request it gets: bypass forms of ``/admin`` are answered
403 ``RBAC: access denied`` and reach nothing; what is allowed reaches the backend normalized, as
judged; a WebSocket upgrade is judged like any request; an AUDIT match is logged and let through."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh.testing.ports import free_port
from tests.component.test_waypoint_local import cluster, local_waypoint

pytestmark = pytest.mark.timeout(120)

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


@dataclass
class Recorder:
    """A backend answering 200 with the path it got, recording every path."""

    paths: list[str] = field(default_factory=list)
    port: int = 0

    def start(self) -> http.server.ThreadingHTTPServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.paths.append(self.path)
                body = self.path.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def rbac(action: str, permissions: list[dict[str, Any]]) -> dict[str, Any]:
    policy = {"permissions": permissions, "principals": [{"any": True}]}
    return {"@type": PER_ROUTE, "rbac": {"rules": {"action": action, "policies": {"p": policy}}}}


def config(backend: int) -> dict[str, Any]:
    deny = rbac(
        "DENY",
        [
            {
                "or_rules": {
                    "rules": [
                        {"url_path": {"path": {"exact": "/admin"}}},
                        {"url_path": {"path": {"prefix": "/admin/"}}},
                    ]
                }
            }
        ],
    )
    audit = rbac("LOG", [{"url_path": {"path": {"prefix": "/audited/"}}}])
    allow = rbac("ALLOW", [{"header": {"name": "x-team", "string_match": {"exact": "blue"}}}])
    everything = {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
    routes = {
        "@type": ROUTES, "name": "waypoint",
        "virtual_hosts": [
            {"name": "app", "domains": ["app"], "routes": [everything],
             "typed_per_filter_config": {"envoy.filters.http.rbac.deny": deny,
                                         "envoy.filters.http.rbac.audit": audit}},
            {"name": "team", "domains": ["team"], "routes": [everything],
             "typed_per_filter_config": {"envoy.filters.http.rbac.allow": allow}},
        ],
    }  # fmt: skip
    return {"resources": [routes, cluster("app", backend)]}


@dataclass
class Running:
    port: int
    backend: Recorder
    log: Path


@pytest.fixture(scope="module")
def waypoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    backend = Recorder()
    server = backend.start()
    port = free_port()
    normalization = ("--path-normalization", "DECODE_AND_MERGE_SLASHES")
    tmp = tmp_path_factory.mktemp("authz")
    try:
        with local_waypoint(
            tmp, config(backend.port), http=f"127.0.0.1:{port}", extra=normalization
        ) as running:
            yield Running(port, backend, running.log)
    finally:
        server.shutdown()


def send(
    port: int, target: str, host: str = "app", extra: str = "", connection: str = "close"
) -> tuple[int, bytes]:
    """One raw HTTP/1.1 request (the target exactly as given); the status and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: {connection}\r\n\r\n"
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


DENIED = ["/admin", "//admin", "/public/../admin", "/%61dmin", "/admin%2Fx", "/admin#x", "/admin?x=1",
          "/x%2F..%2Fadmin", "/x%5C..%5Cadmin", "/admin/", "/./admin"]  # fmt: skip


@pytest.mark.parametrize("target", DENIED)
def test_bypass_forms_of_admin_are_denied_and_reach_nothing(waypoint: Running, target: str) -> None:
    before = len(waypoint.backend.paths)
    assert send(waypoint.port, target) == (403, b"RBAC: access denied")
    assert len(waypoint.backend.paths) == before


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/administrator", "/administrator"),
        ("/public/./x/../page?q=1#top", "/public/page?q=1"),
        ("//public", "/public"),
    ],
)
def test_allowed_requests_reach_the_backend_normalized(
    waypoint: Running, target: str, forwarded: str
) -> None:
    assert send(waypoint.port, target) == (200, forwarded.encode())
    assert waypoint.backend.paths[-1] == forwarded


def test_an_allow_policy_lets_only_its_match_through(waypoint: Running) -> None:
    assert send(waypoint.port, "/x", host="team", extra="x-team: blue\r\n")[0] == 200
    assert send(waypoint.port, "/x", host="team", extra="x-team: red\r\n")[0] == 403
    assert send(waypoint.port, "/x", host="team", extra="x-team: blue\r\nx-team: red\r\n")[0] == 403


def test_a_websocket_upgrade_is_judged_too(waypoint: Running) -> None:
    before = len(waypoint.backend.paths)
    upgrade = (
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    assert send(waypoint.port, "/public/../admin", extra=upgrade, connection="Upgrade")[0] == 403
    assert len(waypoint.backend.paths) == before


def test_a_second_host_is_refused(waypoint: Running) -> None:
    before = len(waypoint.backend.paths)
    assert send(waypoint.port, "/public", extra="Host: secret\r\n")[0] == 400
    assert len(waypoint.backend.paths) == before


def test_an_audit_match_is_logged_and_let_through(waypoint: Running) -> None:
    assert send(waypoint.port, "/audited/../audited/report")[0] == 200
    assert send(waypoint.port, "/plain")[0] == 200
    events = [json.loads(line) for line in waypoint.log.read_text().splitlines() if "rbac.audit" in line]
    assert [(e["policies"], e["path"], e["allowed"]) for e in events] == [(["p"], "/audited/report", True)]
