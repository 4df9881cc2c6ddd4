"""The real ``build`` callable: informer caches -> translation -> type URL -> resources.

Translation warnings are logged once each (when they first appear), not on every rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from google.protobuf.message import Message

from istiod_lite.push.hub import BuildFn
from istiod_lite.translate import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, TranslationWarning
from istiod_lite.translate.model import TranslateOptions
from istiod_lite.translate.translator import Translator
from istiod_lite.view import Informers

__all__ = ["translated_build"]


def translated_build(
    informers: Informers,
    *,
    cluster_id: str = "Kubernetes",
    trust_domain: str = "cluster.local",
    root_namespace: str = "istio-system",
) -> BuildFn:
    """A ``BuildFn`` translating the informers' current view (Address and Authorization).

    One long-lived ``Translator`` reuses the results of objects that did not change."""
    log = structlog.get_logger().bind(component="istiod_lite.push")
    reported: set[TranslationWarning] = set()
    translator = Translator(
        TranslateOptions(cluster_id=cluster_id, trust_domain=trust_domain, root_namespace=root_namespace)
    )

    def build() -> Mapping[str, Mapping[str, Message]]:
        translated = translator.build(informers.view())
        current = set(translated.warnings)
        for warning in sorted(current - reported, key=str):
            log.warning("translate.warning", object=f"{warning.kind} {warning.namespace}/{warning.name}",
                        field=warning.field, problem=warning.message)  # fmt: skip
        reported.clear()
        reported.update(current)
        return {ADDRESS_TYPE_URL: translated.addresses, AUTHORIZATION_TYPE_URL: translated.authorizations}

    return build
