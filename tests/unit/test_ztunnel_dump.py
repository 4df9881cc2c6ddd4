"""The config dump round-trips through the local config format: what the admin shows is what applies."""

from __future__ import annotations

import json

import yaml

from tests.unit.test_local_config import EXAMPLE
from ztunnel.dump import config_dump
from ztunnel.local_config import parse_local_config

_WORKLOAD_KEYS = {"uid", "name", "namespace", "serviceAccount", "workloadIps", "protocol", "node", "services"}
_SERVICE_KEYS = {"name", "namespace", "hostname", "vips", "ports", "subjectAltNames"}


def test_dump_shows_everything_and_reloads_as_the_same_state() -> None:
    state = parse_local_config(EXAMPLE)
    dump = json.loads(json.dumps(config_dump(state, certificates=[{"identity": "spiffe://x"}])))
    assert dump["workloads"][0]["workloadIps"] == ["127.0.0.1"]
    assert dump["services"][0]["vips"] == ["/127.10.0.1"]
    assert dump["certificates"] == [{"identity": "spiffe://x"}]
    assert dump["policies"][0]["rules"][0][0][0]["principals"][1] == "Presence"
    reloaded = parse_local_config(
        yaml.safe_dump(
            {
                "workloads": [{k: v for k, v in w.items() if k in _WORKLOAD_KEYS} for w in dump["workloads"]],
                "services": [{k: v for k, v in s.items() if k in _SERVICE_KEYS} for s in dump["services"]],
                "policies": dump["policies"],
            }
        )
    )
    assert reloaded.policies == state.policies
    assert reloaded.services == state.services
    assert reloaded.workloads == state.workloads
