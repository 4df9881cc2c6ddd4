"""The node agent's decisions (pure): what to do with each pod given what it knows and what the
pod source says.

A ``PodRecord`` is a pod whose network namespace the agent knows (from a CNI ADD, its run-dir
cache or the pod source), with its enrollment phase: ``unenrolled``; ``pending`` (rules installed,
ztunnel has not acked: the pod is captured but not served, so it fails closed); ``enabled``
(ztunnel acked). ``decide`` maps (record, pod) to one action; the agent performs it and records
the outcome with ``enrolled``, ``failed`` or ``released``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ztunnel.cni.enroll import should_enroll
from ztunnel.cni.pods import PodInfo

__all__ = [
    "Action",
    "Phase",
    "PodRecord",
    "RetryPolicy",
    "decide",
    "enrolled",
    "failed",
    "recovered_phase",
    "released",
    "retry_now",
    "zds_uid",
]

Phase = Literal["unenrolled", "pending", "enabled"]


class Action(enum.Enum):
    """What the agent does next for one pod."""

    NONE = "none"
    ENROLL = "enroll"
    RELEASE = "release"
    FORGET = "forget"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for retrying a pending pod's enrollment."""

    initial: float = 1.0
    maximum: float = 30.0


@dataclass(frozen=True, slots=True)
class PodRecord:
    """A pod whose network namespace the agent knows."""

    uid: str
    namespace: str
    name: str
    service_account: str
    netns: str
    phase: Phase = "unenrolled"
    failures: int = 0
    retry_at: float = 0.0
    since: int = 0
    """The resourceVersion of the pod state the record is based on: a view older than this is
    stale for this pod and is not acted on (a CNI ADD reads newer state than the cached view)."""
    ips: tuple[str, ...] = ()
    """The pod's addresses (from the CNI ADD): the node's probe SNAT covers them while captured."""


def zds_uid(namespace: str, name: str, *, cluster: str = "Kubernetes") -> str:
    """The workload uid ztunnel knows the pod by: ``<cluster>//Pod/<ns>/<name>``."""
    return f"{cluster}//Pod/{namespace}/{name}"


def decide(record: PodRecord | None, pod: PodInfo | None, *, now: float, view_version: int) -> Action:
    """The next action for one pod (``record`` and/or ``pod`` may be missing), from a view of the
    pods complete up to ``view_version``."""
    if record is None or view_version < record.since:
        return Action.NONE
    if pod is None or pod.uid != record.uid or pod.facts.deleted:
        return Action.FORGET
    wanted, _ = should_enroll(pod.facts)
    if wanted:
        if record.phase == "unenrolled" or (record.phase == "pending" and now >= record.retry_at):
            return Action.ENROLL
        return Action.NONE
    return Action.RELEASE if record.phase != "unenrolled" else Action.NONE


def recovered_phase(pod: PodInfo) -> Phase:
    """The phase a restarted agent assumes from the pod's annotation."""
    if pod.redirection == "enabled":
        return "enabled"
    if pod.redirection == "pending":
        return "pending"
    return "unenrolled"


def enrolled(record: PodRecord) -> PodRecord:
    """ztunnel acked: the pod is in the mesh."""
    return dataclasses.replace(record, phase="enabled", failures=0, retry_at=0.0)


def failed(record: PodRecord, *, now: float, policy: RetryPolicy = RetryPolicy()) -> PodRecord:
    """Enrollment failed after the rules went in: pending, retried with capped doubling backoff."""
    delay = min(policy.maximum, policy.initial * 2 ** min(record.failures, 16))
    return dataclasses.replace(record, phase="pending", failures=record.failures + 1, retry_at=now + delay)


def released(record: PodRecord) -> PodRecord:
    """The pod left the mesh; its namespace is still known (it may come back)."""
    return dataclasses.replace(record, phase="unenrolled", failures=0, retry_at=0.0)


def retry_now(records: Mapping[str, PodRecord]) -> dict[str, PodRecord]:
    """Pending records made due at once (ztunnel just connected)."""
    return {
        uid: dataclasses.replace(rec, retry_at=0.0) if rec.phase == "pending" else rec
        for uid, rec in records.items()
    }
