"""Fuzzing waypoint translation: config is user input, so no value anywhere in a VirtualService,
DestinationRule, HTTPRoute or Gateway may make ``translate_waypoint`` raise.

Each example takes the all-features config (``tests.unit.l7_world``), replaces the value at one
or more random places in the objects' specs (or deletes the key) with arbitrary JSON, and
translates. The result must be a ``WaypointConfig`` whose messages serialize; anything that
could not be used must show up as a problem, not an exception.
Long runs: ``MESH_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/fuzz/test_waypoint_translation_fuzz.py``.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from istiod_lite.translate.l7 import translate_waypoint
from istiod_lite.translate.model import TranslationWarning
from istiod_lite.view import view_from_objects
from tests.unit.l7_world import EVERYTHING_DR, EVERYTHING_VS, RATINGS_ROUTE, gateway, world

EXAMPLES = int(os.environ.get("MESH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["", "*", "/", "(", "v1", "reviews", "10s", "1h", "-1s", "Exact", "PathPrefix", "UNAVAILABLE"]
    ),
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
TARGETS = (EVERYTHING_VS, EVERYTHING_DR, RATINGS_ROUTE, gateway())


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every (container path) in a JSON tree: each dict key and list index."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += [(*path, key), *_places(item, (*path, key))]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += [(*path, index), *_places(item, (*path, index))]
    return out


def _mutate(obj: dict[str, Any], path: tuple[Any, ...], new: Any, delete: bool) -> None:
    parent: Any = obj
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = new


@FUZZ
@given(data=st.data())
def test_no_config_value_makes_translation_raise(data: st.DataObject) -> None:
    objects = [copy.deepcopy(o) for o in TARGETS]
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        target = data.draw(st.sampled_from(objects))
        places = [("spec",), *_places(target.get("spec"), ("spec",))]
        path = data.draw(st.sampled_from(places))
        _mutate(target, path, data.draw(JSON), delete=data.draw(st.booleans()))
    view = view_from_objects(world(*objects))
    config = translate_waypoint(view, view.gateways[("demo", "waypoint")])
    assert all(isinstance(p, TranslationWarning) for p in config.problems)
    for by_name in config.resources.values():
        for message in by_name.values():
            message.SerializeToString(deterministic=True)
