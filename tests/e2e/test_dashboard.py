"""``meshctl dashboard`` in a real headless Chromium (Debian's, driven by Playwright) against the
lab's real Prometheus: traffic from an enrolled client and from the unmeshed ``legacy`` client
makes the graph the page draws (locked edges for mutual TLS, an unlocked one from legacy), a
clicked edge gets its plots, and bad input or a Prometheus that is down shows a clear message.
The screenshot is kept in ``test-artifacts/``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from mesh.testing.ports import free_port
from tests.e2e.conftest import MeshLab

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TRAFFIC = "for i in $(seq {n}); do curl -s -o /dev/null http://server.demo/; sleep {pause}; done"


def meshctl(mesh: MeshLab, command: list[str], *args: str) -> list[str]:
    """The argv of a meshctl ``command`` (e.g. ``["lab", "exec"]``) against the test's lab."""
    return [sys.executable, "-m", "meshctl.cli", *command, "--state", str(mesh.lab.paths.root), *args]


@contextlib.contextmanager
def dashboard(mesh: MeshLab, *extra: str) -> Iterator[str]:
    """A ``meshctl dashboard`` process for the lab; yields its URL; stopped by PID at the end."""
    port = free_port()
    argv = meshctl(mesh, ["dashboard"], "--port", str(port), *extra)
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("dashboard: http://"), (
            f"the dashboard did not start: {line}{process.stdout.read()}"
        )
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def graph_in_page(page: Page) -> dict[str, Any]:
    """The nodes and edges Cytoscape holds (what the page drew), with their classes."""
    drawn: dict[str, Any] = page.evaluate(
        """() => ({
            nodes: window.meshGraph.cy.nodes().not('.namespace')
                .map(n => ({...n.data(), classes: n.classes()})),
            edges: window.meshGraph.cy.edges().map(e => ({...e.data(), classes: e.classes()})),
        })"""
    )
    return drawn


def test_the_page_draws_the_graph_the_traffic_makes(mesh: MeshLab, browser: Browser) -> None:
    senders = [  # each in its own process group: lab exec runs the loop as its child
        subprocess.Popen(
            meshctl(mesh, ["lab", "exec"], pod, "--", "sh", "-c", TRAFFIC.format(n=n, pause=pause)),
            start_new_session=True,
        )
        for pod, n, pause in (("demo/client", 300, 0.1), ("legacy/client", 100, 0.3))
    ]
    try:
        with dashboard(mesh) as url:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            deadline = time.monotonic() + 60
            drawn: dict[str, Any] = {"edges": []}
            while time.monotonic() < deadline:  # two scrapes (5 s apart) make a rate
                page.wait_for_selector("body[data-loaded]")
                drawn = graph_in_page(page)
                sources = {e["source"] for e in drawn["edges"] if e["rate"] > 0}
                if {"demo/client", "legacy/client"} <= sources:
                    break
                page.wait_for_timeout(2000)
                page.reload()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            meshed = [
                e
                for e in drawn["edges"]
                if e["source"] == "demo/client" and e["target"].startswith("demo/server")
            ]
            legacy = [e for e in drawn["edges"] if e["source"] == "legacy/client"]
            assert meshed and legacy, f"the page drew {drawn['edges']}"
            assert all(e["mtls"] and "mtls" in e["classes"] and e["rate"] > 0 for e in meshed)
            assert all(not e["mtls"] and "plain" in e["classes"] and e["rate"] > 0 for e in legacy)
            nodes = {n["id"]: n for n in drawn["nodes"]}
            assert "unmeshed" in nodes["legacy/client"]["classes"]
            assert "unmeshed" not in nodes["demo/client"]["classes"]
            assert page.locator("#edges tbody tr").count() == len(drawn["edges"])
            edge = meshed[0]
            page.evaluate("id => window.meshGraph.cy.getElementById(id).emit('tap')", edge["id"])
            page.wait_for_selector("#detail .plot canvas", timeout=15000)
            assert page.locator("#detail .plot").count() >= 2
            assert page.locator("#error").is_hidden()
            page.evaluate("() => window.meshGraph.cy.getElementById('demo/client').emit('tap')")
            detail = page.locator("#detail").inner_text()
            assert "enrolled (HBONE)" in detail and "authorization policies" in detail
    finally:
        for sender in senders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sender.pid, signal.SIGKILL)
            sender.wait()


def test_bad_input_and_a_prometheus_that_is_down_are_explained_on_the_page(
    mesh: MeshLab, browser: Browser
) -> None:
    page = browser.new_page()
    with dashboard(mesh) as url:
        page.goto(f"{url}?namespace=no-such-ns")
        page.wait_for_selector("body[data-loaded=error]")
        assert "no namespace 'no-such-ns'" in page.locator("#error").inner_text()
        assert "known namespaces" in page.locator("#error").inner_text()
    with dashboard(mesh, "--prometheus", f"http://127.0.0.1:{free_port()}") as url:
        page.goto(url)
        page.wait_for_selector("body[data-loaded=error]")
        message = page.locator("#error").inner_text()
        assert "is not answering" in message and "--observability" in message
        assert "Traceback" not in page.content()
