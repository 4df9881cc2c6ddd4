"""Values translation takes and returns: options, warnings and the translated resources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from istiod_lite.view import KubeObject
from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.workload import workload_pb2

__all__ = ["TranslateOptions", "TranslatedResources", "TranslationWarning", "Warnings"]


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    """Mesh settings translation depends on."""

    cluster_id: str = "Kubernetes"
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    cluster_domain: str = "cluster.local"
    network: str = ""


@dataclass(frozen=True, slots=True)
class TranslationWarning:
    """Something in one object could not be translated as written (and what was done instead)."""

    kind: str
    namespace: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class TranslatedResources:
    """What the push side serves: Address and Authorization resources keyed by resource name.

    ``addresses`` keys are workload uids (``<cluster>//Pod/<ns>/<name>``) and ``<ns>/<hostname>``
    for services; ``authorizations`` keys are ``<ns>/<name>``. The messages must not be mutated.
    """

    addresses: Mapping[str, workload_pb2.Address]
    authorizations: Mapping[str, authorization_pb2.Authorization]
    warnings: tuple[TranslationWarning, ...] = ()


@dataclass(slots=True)
class Warnings:
    """Collects warnings during one translation."""

    items: list[TranslationWarning] = field(default_factory=list)

    def add(self, obj: KubeObject, field_path: str, message: str) -> None:
        """Records a warning about ``obj``."""
        self.items.append(TranslationWarning(obj.kind, obj.namespace, obj.name, field_path, message))

    def frozen(self) -> tuple[TranslationWarning, ...]:
        """The warnings in a stable order."""
        return tuple(sorted(self.items, key=lambda w: (w.kind, w.namespace, w.name, w.field, w.message)))
