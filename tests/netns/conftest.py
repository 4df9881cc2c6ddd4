"""netns tests run on uvloop, like the production binaries (mesh.rt.loop.run)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import uvloop

from tests.netns.ztunnel_support import Pod, build_pods, remove_pods


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    """Every async netns test gets a uvloop event loop."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    """A client and a server pod (both captured) on one veth, removed after the test."""
    created = build_pods(f"{os.getpid() % 10000}", capture={})
    try:
        yield created
    finally:
        remove_pods(created)
