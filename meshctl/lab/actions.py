"""What the lab's planners ask the store to do: plain values, applied by :func:`apply_actions`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from meshctl.lab.objects import ObjKey, key_of
from meshctl.lab.store import Transaction

__all__ = ["Action", "MarkDeleted", "Put", "Remove", "Schedule", "SetStatus", "apply_actions", "apply_local"]


@dataclass(frozen=True, slots=True)
class Put:
    """Create or replace an object the lab owns (ReplicaSet, Pod, EndpointSlice)."""

    obj: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SetStatus:
    """Replace the status of an object, keeping whatever else a concurrent writer changed."""

    key: ObjKey
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Schedule:
    """Bind a pod to a node (``spec.nodeName``)."""

    key: ObjKey
    node: str


@dataclass(frozen=True, slots=True)
class MarkDeleted:
    """Start a graceful deletion: the runtime stops the pod, then removes it."""

    key: ObjKey
    timestamp: str


@dataclass(frozen=True, slots=True)
class Remove:
    """Delete an object now."""

    key: ObjKey


Action = Put | SetStatus | Schedule | MarkDeleted | Remove


def apply_local(objects: dict[ObjKey, dict[str, Any]], action: Action) -> None:
    """Applies ``action`` to an in-memory object map (so later planning phases see it)."""
    if isinstance(action, Put):
        objects[key_of(action.obj)] = action.obj
        return
    if isinstance(action, Remove):
        objects.pop(action.key, None)
        return
    current = objects.get(action.key)
    if current is None:
        return
    updated = copy.copy(current)
    _edit(updated, action)
    objects[action.key] = updated


def apply_actions(txn: Transaction, actions: list[Action]) -> int:
    """Writes ``actions`` inside a store transaction; returns how many changed something."""
    changed = 0
    for action in actions:
        if isinstance(action, Put):
            existing = txn.get(key_of(action.obj))
            obj = copy.deepcopy(action.obj)
            if existing is not None:
                obj["metadata"]["creationTimestamp"] = existing["metadata"].get("creationTimestamp")
            txn.put(obj)
            changed += 1
        elif isinstance(action, Remove):
            changed += txn.remove(action.key)
        else:
            changed += txn.update(action.key, lambda obj, a=action: _edit(obj, a))  # type: ignore[misc]
    return changed


def _edit(obj: dict[str, Any], action: SetStatus | Schedule | MarkDeleted) -> bool:
    if isinstance(action, SetStatus):
        if obj.get("status") == action.status:
            return False
        obj["status"] = action.status
        return True
    if isinstance(action, Schedule):
        spec = dict(obj.get("spec") or {})
        if spec.get("nodeName") == action.node:
            return False
        spec["nodeName"] = action.node
        obj["spec"] = spec
        return True
    meta = dict(obj["metadata"])
    if meta.get("deletionTimestamp"):
        return False
    meta["deletionTimestamp"] = action.timestamp
    obj["metadata"] = meta
    return True
