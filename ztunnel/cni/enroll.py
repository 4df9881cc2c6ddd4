"""Whether a pod belongs in the ambient mesh (pure), as Istio's node agent decides it.

A pod is enrolled when it is labelled ``istio.io/dataplane-mode=ambient``, or its namespace is and
the pod is not labelled ``none``. Pods with a sidecar, host-network pods and ztunnel itself are
never enrolled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DATAPLANE_MODE", "REDIRECTION", "PodFacts", "should_enroll"]

DATAPLANE_MODE = "istio.io/dataplane-mode"
REDIRECTION = "ambient.istio.io/redirection"
_SIDECAR_STATUS = "sidecar.istio.io/status"


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the decision looks at."""

    namespace_labels: Mapping[str, str]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    host_network: bool = False
    deleted: bool = False


def should_enroll(pod: PodFacts) -> tuple[bool, str]:
    """(enrol?, why) for one pod."""
    if pod.deleted:
        return False, "the pod is being deleted"
    if pod.host_network:
        return False, "host-network pods share the node's network and are not captured"
    if _SIDECAR_STATUS in pod.annotations:
        return False, "the pod has a sidecar"
    if pod.labels.get("app") == "ztunnel" or pod.labels.get("app.kubernetes.io/name") == "ztunnel":
        return False, "ztunnel itself is never captured"
    pod_mode = pod.labels.get(DATAPLANE_MODE)
    if pod_mode == "none":
        return False, f"the pod is labelled {DATAPLANE_MODE}=none"
    if pod_mode == "ambient":
        return True, f"the pod is labelled {DATAPLANE_MODE}=ambient"
    if pod.namespace_labels.get(DATAPLANE_MODE) == "ambient":
        return True, f"its namespace is labelled {DATAPLANE_MODE}=ambient"
    return False, "neither the pod nor its namespace is labelled for ambient"
