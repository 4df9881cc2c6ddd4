"""netns tests run on uvloop, like the production binaries (mesh.rt.loop.run)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    """Every async netns test gets a uvloop event loop."""
    return {"uvloop": uvloop.new_event_loop}
