"""The CA Secret (``istiod_lite.ca.secret``) in the lab's state directory (docs/lab-state.md), the
lab's API: ``objects/Secret/<namespace>/istio-ca-secret.yaml``, read without a lock, created inside
one locked transaction that first looks whether it exists (the lab's 409), written mode 0600."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from istiod_lite.ca.secret import CA_SECRET
from mesh.rt.labstate import LabState, LabStateError

__all__ = ["LabCaSecretStore"]


class LabCaSecretStore:
    """``CaSecretStore`` on a lab state directory (blocking: call it from a worker thread)."""

    def __init__(self, state_dir: Path, *, namespace: str) -> None:
        self._state = LabState(state_dir)
        self.namespace = namespace

    @property
    def name(self) -> str:
        """``Secret <namespace>/istio-ca-secret`` (in the lab state)."""
        return f"Secret {self.namespace}/{CA_SECRET} (lab state {self._state.root})"

    def exists(self) -> bool:
        """Whether the lab's store holds the Secret (the lab's rule for using it: ``--help``)."""
        return self._state.object_path(self._key).exists()

    def read(self) -> Mapping[str, Any] | None:
        """The Secret, or None when there is none."""
        return self._state.read(self._key)

    def create(self, secret: Mapping[str, Any]) -> bool:
        """Creates the Secret in one transaction; False when it exists already."""
        try:
            with self._state.transaction() as txn:
                return txn.create(copy.deepcopy(dict(secret)))
        except OSError as err:
            raise LabStateError(
                f"cannot write {self.name}: {err}", hint="istiod_lite must be able to write the lab state"
            ) from err

    @property
    def _key(self) -> tuple[str, str, str]:
        return ("Secret", self.namespace, CA_SECRET)
