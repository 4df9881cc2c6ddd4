"""Translation: a ``ClusterView`` in, the Address and Authorization resources for ztunnel out.

Pure: no I/O, no clock, no globals; the same view always gives the same resources. Objects
that cannot be translated are reported as ``TranslationWarning``s and everything else still
applies. The rules per resource are in ``workloads``, ``services``, ``authz`` and ``peerauth``;
``Translator`` does the same for a stream of views without redoing unchanged objects.
"""

from __future__ import annotations

from istiod_lite.translate.model import TranslatedResources, TranslateOptions, TranslationWarning
from istiod_lite.translate.translator import Translator
from istiod_lite.view import ClusterView

__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "TranslateOptions",
    "TranslatedResources",
    "TranslationWarning",
    "Translator",
    "build_resources",
]

ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE_URL = "type.googleapis.com/istio.security.Authorization"


def build_resources(
    view: ClusterView,
    *,
    cluster_id: str = "Kubernetes",
    trust_domain: str = "cluster.local",
    root_namespace: str = "istio-system",
    cluster_domain: str = "cluster.local",
    network: str = "",
) -> TranslatedResources:
    """Translates every pod, Service, AuthorizationPolicy and PeerAuthentication of ``view``."""
    options = TranslateOptions(cluster_id, trust_domain, root_namespace, cluster_domain, network)
    return Translator(options).build(view)
