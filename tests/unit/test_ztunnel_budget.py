"""The node's budget of downstream connections: places taken and given back, refusals counted and
logged at most once a second."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from mesh.errors import ConfigError
from mesh.rt.metrics import Registry, render
from mesh.testing.clock import FakeClock
from ztunnel.connections import ConnectionBudget


def _budget(limit: int, clock: FakeClock) -> ConnectionBudget:
    return ConnectionBudget(limit, log=structlog.get_logger("test"), clock=clock)


def test_places_up_to_the_limit_then_refusals_until_one_is_given_back() -> None:
    budget = _budget(2, FakeClock())
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]
    assert (budget.active, budget.refused) == (2, 1)
    budget.release()
    assert budget.try_acquire() is True
    assert budget.try_acquire() is False
    assert (budget.active, budget.refused) == (2, 2)


def test_refusals_are_logged_at_most_once_a_second_with_how_many() -> None:
    clock = FakeClock()
    budget = _budget(1, clock)
    budget.try_acquire()
    with capture_logs() as logs:
        for _ in range(5):
            budget.try_acquire()
        clock.advance(1.0)
        budget.try_acquire()
    assert [(e["event"], e["refused"], e["refused_total"]) for e in logs] == [
        ("connection.limit_reached", 1, 1),
        ("connection.limit_reached", 5, 6),
    ]
    assert all(e["log_level"] == "warning" and e["limit"] == 1 for e in logs)


def test_the_budget_is_exposed_as_metrics() -> None:
    registry = Registry()
    budget = _budget(1, FakeClock())
    registry.register(budget)
    budget.try_acquire()
    budget.try_acquire()
    text = render(registry).decode()
    assert "ztunnel_downstream_connections 1.0\n" in text
    assert "ztunnel_downstream_connections_refused_total 1.0\n" in text


def test_a_limit_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 1, not 0") as caught:
        _budget(0, FakeClock())
    assert "--max-connections" in caught.value.hint
