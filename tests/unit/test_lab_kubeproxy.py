"""kube-proxy rules and DNS files rendered from Services and EndpointSlices (pure)."""

from __future__ import annotations

from typing import Any

from meshctl.lab.kubeproxy import (
    ServicePort,
    render_hosts,
    render_nat,
    render_resolv_conf,
    service_ports,
)
from meshctl.lab.objects import ObjKey


def svc(name: str, ns: str, vip: str, port: int = 80) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    }


def eps(service: str, ns: str, ready: dict[str, bool], port: int = 8080) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": r}} for ip, r in ready.items()],
    }


def objects(*items: dict[str, Any]) -> dict[ObjKey, dict[str, Any]]:
    return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in items}


def test_service_ports_join_ready_endpoints() -> None:
    found = service_ports(
        objects(
            svc("server", "demo", "10.96.0.100"),
            eps("server", "demo", {"10.244.1.3": True, "10.244.2.2": True, "10.244.2.9": False}),
            svc("lonely", "demo", "10.96.0.101"),
        )
    )
    assert found == [
        ServicePort("demo", "lonely", "http", "10.96.0.101", 80, "TCP", ()),
        ServicePort(
            "demo", "server", "http", "10.96.0.100", 80, "TCP", (("10.244.1.3", 8080), ("10.244.2.2", 8080))
        ),
    ]


def test_nat_rules_pick_endpoints_at_random_and_masquerade_hairpins() -> None:
    port = ServicePort(
        "demo", "server", "http", "10.96.0.100", 80, "TCP", (("10.244.1.3", 8080), ("10.244.2.2", 8080))
    )
    text, chains = render_nat([port])
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    svc_chain = next(c for c in chains if c.startswith("KUBE-SVC-"))
    assert len(chains) == 3 and len(svc_chain) <= 28
    assert (
        "-A KUBE-SERVICES -d 10.96.0.100/32 -p tcp -m comment "
        f'--comment "demo/server:http cluster IP" -m tcp --dport 80 -j {svc_chain}' in lines
    )
    jumps = [line for line in lines if line.startswith(f"-A {svc_chain}")]
    assert "--probability 0.5000000000" in jumps[0] and "statistic" not in jumps[1]
    assert any("-s 10.244.1.3/32 -j KUBE-MARK-MASQ" in line for line in lines)
    assert any(line.endswith("-j DNAT --to-destination 10.244.2.2:8080") for line in lines)
    assert "-A KUBE-POSTROUTING -j MASQUERADE" in lines


def test_three_endpoints_get_equal_shares() -> None:
    port = ServicePort("a", "s", "", "10.96.0.1", 80, "TCP", (("1.1.1.1", 1), ("1.1.1.2", 1), ("1.1.1.3", 1)))
    text, _ = render_nat([port])
    assert "--probability 0.3333333333" in text and "--probability 0.5000000000" in text


def test_services_without_endpoints_get_no_rules_and_stale_chains_are_flushed_then_deleted() -> None:
    port = ServicePort("demo", "server", "http", "10.96.0.100", 80, "TCP", (("10.244.1.3", 8080),))
    _, chains = render_nat([port])
    text, now = render_nat(
        [ServicePort("demo", "server", "http", "10.96.0.100", 80, "TCP", ())], previous_chains=chains
    )
    assert now == frozenset() and "10.96.0.100" not in text
    lines = text.splitlines()
    for chain in chains:
        assert lines.index(f":{chain} - [0:0]") < lines.index(f"-X {chain}")


def test_hosts_file_names_services_as_cluster_dns_would() -> None:
    text = render_hosts(
        [("demo", "server", "10.96.0.100"), ("other", "db", "10.96.0.101")],
        namespace="demo",
        pod_name="client-abc",
        pod_ip="10.244.1.2",
        domain="cluster.local",
    )
    lines = text.splitlines()
    assert "10.244.1.2\tclient-abc" in lines
    assert "10.96.0.100\tserver.demo.svc.cluster.local server.demo.svc server.demo server" in lines
    assert (
        "10.96.0.101\tdb.other.svc.cluster.local db.other.svc db.other" in lines
    )  # no short name across namespaces


def test_resolv_conf_has_the_kubernetes_search_path() -> None:
    text = render_resolv_conf("demo", domain="cluster.local")
    assert text.splitlines()[0] == "search demo.svc.cluster.local svc.cluster.local cluster.local"
    assert "options ndots:5" in text
