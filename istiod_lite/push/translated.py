"""The real ``build`` callable: informer caches -> translation -> type URL -> resources.

Besides ztunnel's Address and Authorization resources, every waypoint Gateway's translation goes
in under its scope (``scoped_type(type URL, "<ns>/<name>")``) for the waypoint projection.
Translation warnings and waypoint problems are logged once each (when they first appear), not
on every rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog
from google.protobuf.message import Message

from istiod_lite.push.hub import BuildFn
from istiod_lite.push.invalid import InvalidConfig
from istiod_lite.push.snapshot import scoped_type
from istiod_lite.translate import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, TranslationWarning
from istiod_lite.translate.l7 import not_a_waypoint, translate_waypoint
from istiod_lite.translate.model import TranslateOptions
from istiod_lite.translate.translator import Translator
from istiod_lite.view import ClusterView, Informers

__all__ = ["translated_build"]


def translated_build(
    informers: Informers,
    *,
    cluster_id: str = "Kubernetes",
    trust_domain: str = "cluster.local",
    root_namespace: str = "istio-system",
    on_problems: Callable[[ClusterView, frozenset[TranslationWarning]], None] | None = None,
    invalid: InvalidConfig | None = None,
) -> BuildFn:
    """A ``BuildFn`` translating the informers' current view (ztunnel's types and every waypoint's).

    One long-lived ``Translator`` reuses the results of objects that did not change. ``on_problems``
    gets each build's view and all its warnings (e.g. ``StatusReporter.submit``); ``invalid`` counts
    and logs the objects that fail validation."""
    log = structlog.get_logger().bind(component="istiod_lite.push")
    reported: set[TranslationWarning] = set()
    options = TranslateOptions(
        cluster_id=cluster_id, trust_domain=trust_domain, root_namespace=root_namespace
    )
    translator = Translator(options)
    waypoints = _WaypointBuilds(options, log)

    def build() -> Mapping[str, Mapping[str, Message]]:
        view = informers.view()
        if invalid is not None:
            invalid.check(view)
        translated = translator.build(view)
        resources: dict[str, Mapping[str, Message]] = {
            ADDRESS_TYPE_URL: translated.addresses,
            AUTHORIZATION_TYPE_URL: translated.authorizations,
        }
        waypoint_resources, problems = waypoints.build(view)
        resources.update(waypoint_resources)
        current = set(translated.warnings) | problems
        for warning in sorted(current - reported, key=str):
            log.warning("translate.warning", object=f"{warning.kind} {warning.namespace}/{warning.name}",
                        field=warning.field, problem=warning.message)  # fmt: skip
        reported.clear()
        reported.update(current)
        if on_problems is not None:
            on_problems(view, frozenset(current))
        return resources

    return build


class _WaypointBuilds:
    """Every waypoint's translation, each isolated: one that fails keeps its last good config.

    Translation is pure and fuzzed never to raise on config input; this guards the rest of the
    mesh (ztunnel's config, the other waypoints) against a bug in it all the same.
    """

    def __init__(self, options: TranslateOptions, log: structlog.typing.FilteringBoundLogger) -> None:
        self._options = options
        self._log = log
        self._last_good: dict[
            str, tuple[Mapping[str, Mapping[str, Message]], tuple[TranslationWarning, ...]]
        ] = {}

    def build(self, view: ClusterView) -> tuple[dict[str, Mapping[str, Message]], set[TranslationWarning]]:
        """Every waypoint's resources under its scoped keys, and all their problems."""
        resources: dict[str, Mapping[str, Message]] = {}
        problems: set[TranslationWarning] = set()
        current: dict[str, tuple[Mapping[str, Mapping[str, Message]], tuple[TranslationWarning, ...]]] = {}
        for gateway in view.gateways.values():
            if (
                gateway.spec.get("gatewayClassName") != "istio-waypoint"
                or not_a_waypoint(gateway) is not None
            ):
                continue  # other classes are other controllers' Gateways, not problems
            scope = f"{gateway.namespace}/{gateway.name}"
            try:
                config = translate_waypoint(view, gateway, options=self._options)
                current[scope] = (config.resources, config.problems)
            except Exception:  # a translation bug must not stop the rest of the mesh's config
                self._log.exception("translate.waypoint_failed", waypoint=scope, kept="the last good config")
                if scope in self._last_good:
                    current[scope] = self._last_good[scope]
        self._last_good = current
        for scope, (by_type, found) in current.items():
            problems.update(found)
            for type_url, by_name in by_type.items():
                resources[scoped_type(type_url, scope)] = by_name
        return resources, problems
