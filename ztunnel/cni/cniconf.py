"""The node's CNI network config and the mesh's entry in it, as data (no file is touched here).

As Istio's install-cni and kubelet do, the primary config is the first ``*.conf`` or
``*.conflist`` of the config directory in lexical order (hidden files, such as an installer's
temporary files, are not configs). The mesh's plugin is chained into it: appended to its
``plugins``, or put in place of an earlier copy of itself; a ``.conf`` (one plugin) becomes a
``.conflist`` of two. Uninstalling takes the entry out again and leaves the rest as it was. A
config that does not parse is never rewritten: :class:`CniConfigError` says what is wrong with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.errors import MeshError

__all__ = [
    "CONFIG_SUFFIXES",
    "PLUGIN_TYPE",
    "CniConfigError",
    "Rewrite",
    "is_config_name",
    "parse_config",
    "plan_install",
    "plan_uninstall",
    "plugin_entry",
    "primary_config",
    "render",
]

PLUGIN_TYPE = "ztunnel-cni"
CONFIG_SUFFIXES = (".conf", ".conflist")
_FIX_HINT = (
    "the file is left as it is; fix it or let the node's primary CNI plugin rewrite it; the mesh's "
    "plugin is chained in as soon as it parses (new pods are not captured until then)"
)


class CniConfigError(MeshError):
    """A CNI config file that cannot be read as a network config (list)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"CNI config {name}: {problem}", hint=_FIX_HINT)
        self.name = name
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A config file to write (``name``, ``text``), and a ``.conf`` it replaces (to remove after)."""

    name: str
    text: str
    replaces: str | None = None


def plugin_entry(agent_socket: str) -> dict[str, Any]:
    """The mesh's plugin in the chain (the keys ``ztunnel.cni.plugin`` reads)."""
    return {"type": PLUGIN_TYPE, "agent_socket": agent_socket}


def is_config_name(name: str) -> bool:
    """Whether a directory entry is a CNI config file (``*.conf``/``*.conflist``, not hidden)."""
    return not name.startswith(".") and name.endswith(CONFIG_SUFFIXES)


def primary_config(names: Iterable[str]) -> str | None:
    """The config the runtime uses: the first config file by name, or None when there is none."""
    return min((name for name in names if is_config_name(name)), default=None)


def parse_config(name: str, text: str) -> dict[str, Any]:
    """The config as a JSON object, checked for what the runtime needs: a ``.conflist`` has a
    ``name`` and a list of ``plugins``, each an object with a ``type``; a ``.conf`` is one plugin."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CniConfigError(name, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CniConfigError(name, f"not a JSON object but {type(doc).__name__}")
    if not isinstance(doc.get("name"), str):
        raise CniConfigError(name, "no 'name' string (the network's name)")
    if name.endswith(".conflist"):
        plugins = doc.get("plugins")
        if not isinstance(plugins, list):
            raise CniConfigError(name, "no 'plugins' list (a .conflist chains a list of plugins)")
        for index, plugin in enumerate(plugins):
            if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
                raise CniConfigError(name, f"plugins[{index}] is not an object with a 'type' string")
    elif not isinstance(doc.get("type"), str):
        raise CniConfigError(name, "no 'type' string (a .conf is one plugin; is it a .conflist?)")
    return doc


def render(doc: Mapping[str, Any]) -> str:
    """The text written for a config."""
    return json.dumps(doc, indent=2) + "\n"


def plan_install(name: str, text: str, entry: Mapping[str, Any]) -> Rewrite | None:
    """What to write so that the primary config ``name`` (content ``text``) chains ``entry``
    exactly once; None when it already does. Raises :class:`CniConfigError` when it does not parse."""
    doc = parse_config(name, text)
    if name.endswith(".conf"):
        conflist: dict[str, Any] = {"name": doc["name"]}
        if "cniVersion" in doc:
            conflist["cniVersion"] = doc["cniVersion"]
        conflist["plugins"] = [doc, dict(entry)]
        return Rewrite(name + "list", render(conflist), replaces=name)
    plugins: list[dict[str, Any]] = doc["plugins"]
    copies = [plugin for plugin in plugins if plugin["type"] == entry["type"]]
    if copies == [entry]:
        return None
    others = [plugin for plugin in plugins if plugin["type"] != entry["type"]]
    return Rewrite(name, render({**doc, "plugins": [*others, dict(entry)]}))


def plan_uninstall(name: str, text: str) -> Rewrite | None:
    """The config ``name`` without the mesh's plugin; None when it has none (``.conf`` files never
    do). Raises :class:`CniConfigError` when it does not parse."""
    if not name.endswith(".conflist"):
        return None
    doc = parse_config(name, text)
    plugins = [plugin for plugin in doc["plugins"] if plugin["type"] != PLUGIN_TYPE]
    if len(plugins) == len(doc["plugins"]):
        return None
    return Rewrite(name, render({**doc, "plugins": plugins}))
