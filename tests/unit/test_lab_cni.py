"""The CNI call as data: environment, stdin config with prevResult, the lab's own result, the conflist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshctl.lab.cni import CniChain, CniRequest, cni_env, load_chain, plugin_config, primary_result
from meshctl.lab.errors import LabError

REQUEST = CniRequest(
    container_id="uid-1",
    netns_path="/var/run/netns/t1-pod-uid1",
    namespace="demo",
    pod_name="web-1",
    pod_uid="uid-1",
    node_netns="t1-node1",
)


def test_environment_is_the_kubelet_one() -> None:
    env = cni_env("ADD", REQUEST, cni_path=["/state/cni/bin", "/opt/cni/bin"])
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_CONTAINERID"] == "uid-1"
    assert env["CNI_NETNS"] == "/var/run/netns/t1-pod-uid1" and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == "/state/cni/bin:/opt/cni/bin"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # not the user's
    assert env["CNI_ARGS"] == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=uid-1;K8S_POD_UID=uid-1"
    )


def test_stdin_carries_name_version_and_prev_result() -> None:
    prev = primary_result(
        pod_ip="10.244.1.5",
        gateway="10.244.1.1",
        netns_path=REQUEST.netns_path,
        host_link="t1puid1",
        search=["a"],
    )
    chain = CniChain(name="lab", cni_version="1.0.0", plugins=({"type": "istio-cni", "log_level": "debug"},))
    config = plugin_config(chain, chain.plugins[0], prev)
    assert config == {
        "type": "istio-cni",
        "log_level": "debug",
        "cniVersion": "1.0.0",
        "name": "lab",
        "prevResult": prev,
    }
    assert prev["ips"] == [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}]
    assert prev["interfaces"][1] == {"name": "eth0", "sandbox": REQUEST.netns_path}


def test_load_chain(tmp_path: Path) -> None:
    assert load_chain(tmp_path).plugins == ()
    (tmp_path / "20-z.conflist").write_text(json.dumps({"name": "z", "plugins": [{"type": "b"}]}))
    (tmp_path / "10-a.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "a"}]})
    )
    chain = load_chain(tmp_path)
    assert (chain.name, chain.plugins) == (
        "a",
        ({"type": "a"},),
    )  # the first file by name wins, as in kubelet
    (tmp_path / "10-a.conflist").write_text('{"name": "a", "plugins": [{"no": "type"}]}')
    with pytest.raises(LabError, match="bad CNI config"):
        load_chain(tmp_path)
