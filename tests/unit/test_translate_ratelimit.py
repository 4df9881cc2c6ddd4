"""LocalRateLimit (policy.mesh.dev/v1alpha1) rendered on the routes of its Services' virtual hosts as
Envoy's local rate limit filter config; a bad one is named and the rest applies."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.validation import validate_mesh_object
from tests.unit.l7_world import routes_of, translate

FILTER = "envoy.filters.http.local_ratelimit"


def rate_limit(name: str = "reviews", service: str = "reviews", **bucket: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy.mesh.dev/v1alpha1", "kind": "LocalRateLimit",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"targetRefs": [{"kind": "Service", "name": service}],
                 "tokenBucket": bucket or {"maxTokens": 10, "fillInterval": "1s"}},
    }  # fmt: skip


def test_every_route_of_the_service_gets_the_bucket() -> None:
    (route,) = routes_of(translate(rate_limit()))
    config = route["typed_per_filter_config"][FILTER]
    assert config["@type"].endswith("LocalRateLimit")
    assert config["token_bucket"] == {"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "1s"}
    assert config["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
    assert config["filter_enforced"]["default_value"]["numerator"] == 100
    assert FILTER not in routes_of(translate(rate_limit(service="ratings")))[0].get(
        "typed_per_filter_config", {}
    )


@pytest.mark.parametrize(
    ("bucket", "field"),
    [
        ({"maxTokens": 0}, "spec.tokenBucket.maxTokens"),
        ({"maxTokens": 5, "fillInterval": "soon"}, "spec.tokenBucket.fillInterval"),
        ({"maxTokens": 5, "burst": 3}, "spec.tokenBucket.burst"),
    ],
)
def test_a_bad_bucket_is_named(bucket: dict[str, Any], field: str) -> None:
    bad = rate_limit("bad", **bucket)
    assert [e.field for e in validate_mesh_object(bad)] == [field]
    config = translate(bad, rate_limit("good"))
    assert any("LocalRateLimit demo/bad" in str(p) for p in config.problems)
    assert FILTER in routes_of(config)[0]["typed_per_filter_config"]  # the good one still applies
