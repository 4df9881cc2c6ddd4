"""Component-test set-up: the HBONE and Envoy interop tests run on uvloop, like the production binaries."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
import uvloop

_UVLOOP_MODULES = ("test_hbone_", "test_envoy_")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    """uvloop for the transport tests (their data path is tuned for it); the default loop elsewhere."""
    module = getattr(item, "module", None)
    name = getattr(module, "__name__", "").rpartition(".")[2]
    if name.startswith(_UVLOOP_MODULES):
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
