"""Small pure helpers on Kubernetes-shaped objects shared by the lab's planners."""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "RANDOM_ALPHABET",
    "controller_uid",
    "hash_suffix",
    "is_terminating",
    "labels_match",
    "new_uid",
    "owner_ref",
    "pod_ready",
    "random_suffix",
    "rfc3339",
    "strip_server_fields",
]

RANDOM_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""The alphabet Kubernetes uses for generated name suffixes (no vowels, no look-alikes)."""


def rfc3339(now: float) -> str:
    """``2026-01-02T03:04:05Z`` for a Unix time."""
    moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid(rng: random.Random) -> str:
    """A random (version 4) UUID drawn from ``rng``."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_suffix(rng: random.Random, length: int = 5) -> str:
    """Random characters from :data:`RANDOM_ALPHABET`."""
    return "".join(rng.choice(RANDOM_ALPHABET) for _ in range(length))


def hash_suffix(value: object, length: int = 10) -> str:
    """A stable suffix from a JSON-able value (like ``pod-template-hash``)."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return "".join(RANDOM_ALPHABET[b % len(RANDOM_ALPHABET)] for b in digest[:length])


def owner_ref(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller ownerReference pointing at ``owner``."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controlling owner, if any."""
    for ref in obj["metadata"].get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def is_terminating(obj: Mapping[str, Any]) -> bool:
    """True once the object has a deletionTimestamp."""
    return bool(obj["metadata"].get("deletionTimestamp"))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """True when the pod's Ready condition is True."""
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    """Equality-based selector match; an empty selector matches nothing (as for Services)."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")


def strip_server_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without the fields the store fills in, for comparing desired with actual."""
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in _SERVER_FIELDS}
    return out
