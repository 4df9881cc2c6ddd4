"""Readiness probes: how the lab reads a container's probe and counts its results, as the kubelet."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.lab.probes import (
    EXEC,
    FAST_POLL_MAX,
    HTTP_GET,
    PORTS,
    TCP_SOCKET,
    Probe,
    ProbeSpecError,
    ProbeState,
    next_delay,
    observe,
    readiness_probe,
    still_launching,
)

NAMED = [{"containerPort": 8080, "name": "http"}, {"containerPort": 53, "protocol": "UDP"}]


@pytest.mark.parametrize(
    ("container", "probe"),
    [
        ({"name": "c"}, None),  # nothing to check: ready once started
        ({"name": "c", "ports": [{"containerPort": 53, "protocol": "UDP"}]}, None),
        ({"name": "c", "ports": NAMED}, Probe(PORTS, ports=frozenset({8080}), period=FAST_POLL_MAX)),
        (
            {"name": "c", "ports": NAMED, "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}}},
            Probe(HTTP_GET, port=8080, path="/readyz"),
        ),
        (
            {
                "readinessProbe": {
                    "httpGet": {
                        "path": "healthz",
                        "port": 8443,
                        "host": "10.0.0.1",
                        "scheme": "https",
                        "httpHeaders": [{"name": "X-Probe", "value": "1"}],
                    },
                    "periodSeconds": 2,
                    "timeoutSeconds": 3,
                    "initialDelaySeconds": 4,
                    "successThreshold": 2,
                    "failureThreshold": 5,
                }
            },
            Probe(
                HTTP_GET,
                port=8443,
                host="10.0.0.1",
                path="/healthz",
                scheme="HTTPS",
                headers=(("X-Probe", "1"),),
                initial_delay=4.0,
                period=2.0,
                timeout=3.0,
                success_threshold=2,
                failure_threshold=5,
            ),
        ),
        ({"readinessProbe": {"httpGet": {"port": "9000"}}}, Probe(HTTP_GET, port=9000)),  # a number as text
        ({"ports": NAMED, "readinessProbe": {"tcpSocket": {"port": 9000}}}, Probe(TCP_SOCKET, port=9000)),
        (
            {"readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ok"]}, "periodSeconds": 1}},
            Probe(EXEC, command=("test", "-f", "/tmp/ok"), period=1.0),
        ),
    ],
)
def test_readiness_probe_with_kubernetes_defaults(container: dict[str, Any], probe: Probe | None) -> None:
    assert readiness_probe(container) == probe


@pytest.mark.parametrize(
    ("probe", "says"),
    [
        ({"periodSeconds": 5}, "exactly one of httpGet, tcpSocket, exec (it has none)"),
        ({"httpGet": {"port": 1}, "exec": {"command": ["true"]}}, "(it has httpGet, exec)"),
        ({"grpc": {"port": 9000}}, "grpc readiness probes are not supported by the lab"),
        ({"httpGet": {"port": "metrics"}}, "port 'metrics' is not one of its named ports"),
        ({"tcpSocket": {"port": 70000}}, "not a port number (1-65535)"),
        ({"tcpSocket": {}}, "port None is not a port number"),
        ({"exec": {"command": []}}, "readinessProbe.exec has no command"),
        ({"httpGet": {"port": 80, "scheme": "FTP"}}, "httpGet.scheme 'FTP' is not HTTP or HTTPS"),
        ({"httpGet": {"port": 80}, "periodSeconds": 0}, "periodSeconds is 0, not a whole number >= 1"),
        ({"httpGet": {"port": 80}, "initialDelaySeconds": -1}, "initialDelaySeconds is -1"),
    ],
)
def test_probes_the_lab_cannot_run_say_why(probe: dict[str, Any], says: str) -> None:
    with pytest.raises(ProbeSpecError) as caught:
        readiness_probe({"name": "app", "ports": NAMED, "readinessProbe": probe})
    assert says in str(caught.value) and caught.value.message.startswith("container app: ")


def _readiness(probe: Probe, results: str) -> str:
    """Readiness after each result ('+' success, '-' failure) as a string of 'R' (ready) and '.'."""
    state, seen = ProbeState(), ""
    for result in results:
        state = observe(probe, state, result == "+")
        seen += "R" if state.ready else "."
    return seen


@pytest.mark.parametrize(
    ("success", "failure", "results", "readiness"),
    [
        (1, 3, "--+", "..R"),  # not ready until the first success
        (1, 3, "+--+", "RRRR"),  # fewer failures in a row than the threshold change nothing
        (1, 3, "+---", "RRR."),  # the third failure in a row makes it not ready
        (1, 3, "+---+", "RRR.R"),  # and one success ready again
        (1, 1, "+-+", "R.R"),
        (2, 3, "+-+++", "...RR"),  # two successes in a row are needed
        (2, 2, "++--+-++", ".RR....R"),
    ],
)
def test_readiness_follows_the_results_past_their_thresholds(
    success: int, failure: int, results: str, readiness: str
) -> None:
    probe = Probe(HTTP_GET, port=80, success_threshold=success, failure_threshold=failure)
    assert _readiness(probe, results) == readiness


def test_the_lab_polls_fast_until_first_ready_then_every_period() -> None:
    probe, state, delays = Probe(HTTP_GET, port=80, period=3.0), ProbeState(), []
    for _ in range(9):
        state = observe(probe, state, False)
        delays.append(next_delay(probe, state))
    assert delays[:3] == pytest.approx([0.05, 0.075, 0.1125])
    assert delays[-1] == FAST_POLL_MAX and delays == sorted(delays)  # grows to a bound, stays cheap
    state = observe(probe, state, True)
    assert next_delay(probe, state) == 3.0
    state = observe(probe, observe(probe, observe(probe, state, False), False), False)
    assert not state.ready and next_delay(probe, state) == 3.0  # not ready again: still the period
    assert next_delay(Probe(EXEC, period=0.2), ProbeState(attempts=20)) == 0.2  # a shorter period wins


@pytest.mark.parametrize(
    ("cmdline", "launching"),
    [
        (["ip", "netns", "exec", "lab-p1", "python", "-m", "app"], True),
        (["/venv/bin/python", "-I", "-S", "/x/mountexec.py", "/", "--", "python", "-m", "app"], True),
        (["python", "-m", "app"], False),
        (["python3", "-m", "meshctl.lab.daemon", "--state", "/tmp/lab"], False),  # forked, not yet exec'd
        (["sh"], False),
    ],
)
def test_still_launching(cmdline: list[str], launching: bool) -> None:
    assert still_launching(cmdline, ("python", "-m", "app")) is launching
