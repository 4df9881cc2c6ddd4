"""The CNI plugin's pure parts: environment and config to agent request, verdict to CNI output."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from ztunnel.cni.plugin import (
    DEFAULT_AGENT_SOCKET,
    PluginError,
    agent_request,
    parse_cni_args,
    parse_verdict,
    resolve_socket,
    run,
)
from ztunnel.cni.plugin_server import CniVerdict, PluginEventError, encode_verdict, parse_event

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "labp1"}, {"name": "eth0", "sandbox": "/var/run/netns/p1"}],
    "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}],
}
NETCONF = {"cniVersion": "1.0.0", "name": "lab-net", "type": "ztunnel-cni", "prevResult": PREV}
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/var/run/netns/p1",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_UID=u1",
    "CNI_PATH": "/opt/cni/bin",
}


class Agent:
    """Records requests and answers with a fixed verdict (or raises)."""

    def __init__(self, verdict: Mapping[str, Any] | PluginError) -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, Mapping[str, Any], float]] = []

    def __call__(self, address: str, request: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        self.calls.append((address, request, timeout))
        if isinstance(self.verdict, PluginError):
            raise self.verdict
        return self.verdict


UNREACHABLE = PluginError(11, "cannot reach the node agent at /x: No such file or directory")


def _run(env: Mapping[str, str], conf: Mapping[str, Any], agent: Agent) -> tuple[int, Any]:
    status, out = run(env, json.dumps(conf), call=agent)
    return status, (json.loads(out) if out else None)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", {}),
        ("K8S_POD_NAME=a", {"K8S_POD_NAME": "a"}),
        ("IgnoreUnknown=1;K8S_POD_NAME=a=b", {"IgnoreUnknown": "1", "K8S_POD_NAME": "a=b"}),
        ("junk;;X=1", {"X": "1"}),
    ],
)  # fmt: skip
def test_parse_cni_args(text: str, parsed: dict[str, str]) -> None:
    assert parse_cni_args(text) == parsed


def test_agent_request_carries_pod_identity_and_ips() -> None:
    assert agent_request("ADD", ENV, NETCONF) == {
        "command": "ADD",
        "cniVersion": "1.0.0",
        "containerId": "c1",
        "netns": "/var/run/netns/p1",
        "ifname": "eth0",
        "podNamespace": "demo",
        "podName": "web-0",
        "podUid": "u1",
        "podIps": ["10.244.1.5"],
    }


def test_request_round_trips_through_the_agents_parser() -> None:
    event = parse_event(json.dumps(agent_request("ADD", ENV, NETCONF)).encode() + b"\n")
    assert (event.command, event.namespace, event.name, event.pod_uid) == ("ADD", "demo", "web-0", "u1")
    assert (event.netns, event.container_id, event.pod_ips) == ("/var/run/netns/p1", "c1", ("10.244.1.5",))


def test_add_passes_prev_result_through_when_the_agent_agrees() -> None:
    agent = Agent({"ok": True, "code": 0, "msg": "enrolled", "details": ""})
    status, out = _run(ENV, NETCONF, agent)
    assert (status, out) == (0, PREV)
    assert agent.calls[0][0] == DEFAULT_AGENT_SOCKET and agent.calls[0][2] == 15.0


def test_add_fails_closed_when_the_agent_is_unreachable() -> None:
    status, out = _run(ENV, NETCONF, Agent(UNREACHABLE))
    assert status == 1
    assert out["code"] == 11 and "cannot reach the node agent" in out["msg"]
    assert set(out) == {"cniVersion", "code", "msg", "details"}


def test_add_reports_the_agents_refusal() -> None:
    agent = Agent({"ok": False, "code": 11, "msg": "pod not enrolled: no ztunnel", "details": "d"})
    status, out = _run(ENV, NETCONF, agent)
    assert (status, out) == (
        1,
        {"cniVersion": "1.0.0", "code": 11, "msg": "pod not enrolled: no ztunnel", "details": "d"},
    )


def test_refusal_without_a_code_gets_the_plugin_code() -> None:
    status, out = _run(ENV, NETCONF, Agent({"ok": False}))
    assert status == 1 and out["code"] == 100


def test_del_succeeds_even_when_the_agent_is_unreachable() -> None:
    agent = Agent(UNREACHABLE)
    status, out = _run({**ENV, "CNI_COMMAND": "DEL"}, NETCONF, agent)
    assert (status, out) == (0, None)
    assert agent.calls[0][1]["command"] == "DEL"


def test_check_fails_when_the_agent_says_so() -> None:
    status, out = _run(
        {**ENV, "CNI_COMMAND": "CHECK"}, NETCONF, Agent({"ok": False, "code": 11, "msg": "pending"})
    )
    assert status == 1 and out["msg"] == "pending"
    status, out = _run({**ENV, "CNI_COMMAND": "CHECK"}, NETCONF, Agent({"ok": True}))
    assert (status, out) == (0, None)


def test_add_for_a_non_kubernetes_container_passes_through_without_the_agent() -> None:
    agent = Agent(UNREACHABLE)
    status, out = _run({**ENV, "CNI_ARGS": ""}, NETCONF, agent)
    assert (status, out, agent.calls) == (0, PREV, [])


def test_version_needs_no_agent() -> None:
    status, out = _run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"}, Agent(UNREACHABLE))
    assert status == 0 and "1.0.0" in out["supportedVersions"]


@pytest.mark.parametrize(
    ("env", "conf", "code", "words"),
    [
        ({**ENV, "CNI_COMMAND": "FROB"}, NETCONF, 4, "unknown CNI_COMMAND"),
        ({k: v for k, v in ENV.items() if k != "CNI_COMMAND"}, NETCONF, 4, "CNI_COMMAND is not set"),
        ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, NETCONF, 4, "CNI_NETNS is not set"),
        ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, NETCONF, 4, "CNI_CONTAINERID is not set"),
        (ENV, {**NETCONF, "cniVersion": "9.9.9"}, 1, "not supported"),
        (ENV, {**NETCONF, "agent_timeout": -1}, 7, "agent_timeout"),
        (ENV, {**NETCONF, "agent_timeout": True}, 7, "agent_timeout"),
        (ENV, {**NETCONF, "agent_socket": ""}, 7, "agent_socket"),
    ],
)
def test_bad_input_is_a_cni_error(env: dict[str, str], conf: dict[str, Any], code: int, words: str) -> None:
    status, out = _run(env, conf, Agent({"ok": True}))
    assert status == 1 and out["code"] == code and words in out["msg"]


def test_stdin_that_is_not_json_is_a_decode_error() -> None:
    status, out = run(ENV, "{not json", call=Agent({"ok": True}))
    assert status == 1 and json.loads(out)["code"] == 6


@pytest.mark.parametrize(
    ("conf", "address"),
    [
        ({}, DEFAULT_AGENT_SOCKET),
        ({"agent_socket": "/run/x/plugin.sock"}, "/run/x/plugin.sock"),
        ({"agent_socket": "@ztunnel-cni"}, "\0ztunnel-cni"),
        ({"agent_socket": "/run/lab/{netns}/pluginevent.sock"}, "/run/lab/lab-n1/pluginevent.sock"),
    ],
)
def test_resolve_socket(conf: dict[str, Any], address: str) -> None:
    assert resolve_socket(conf, netns_name=lambda: "lab-n1") == address


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"ok": "yes"}'])
def test_unreadable_verdicts_are_io_errors(data: bytes) -> None:
    with pytest.raises(PluginError) as caught:
        parse_verdict(data)
    assert caught.value.code == 5


def test_verdict_encoding_round_trips() -> None:
    verdict = CniVerdict(ok=False, code=11, msg="no ztunnel", details="start it")
    assert parse_verdict(encode_verdict(verdict)) == {
        "ok": False,
        "code": 11,
        "msg": "no ztunnel",
        "details": "start it",
    }


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"command": "EXPLODE"}', "unknown plugin command"),
        (b'{"command": "ADD", "containerId": 3}', "bad types"),
        (b'{"command": "ADD", "containerId": "c", "netns": "/n", "podIps": [1]}', "bad types"),
        (b'{"command": "ADD", "containerId": "c"}', "lacks containerId or netns"),
    ],
)
def test_bad_plugin_requests_are_refused(line: bytes, words: str) -> None:
    with pytest.raises(PluginEventError, match=words):
        parse_event(line)


def test_del_needs_no_netns() -> None:
    assert parse_event(b'{"command": "DEL", "containerId": "c"}').command == "DEL"
