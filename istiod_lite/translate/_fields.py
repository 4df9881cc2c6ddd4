"""Reading and validating fields of frozen Kubernetes objects; every problem names its field."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType

from istiod_lite.view import Json, JsonMap
from mesh.errors import ConfigError

__all__ = [
    "FieldError",
    "check_fields",
    "cidr",
    "ip_bytes",
    "mapping",
    "match_labels",
    "port",
    "selector_matches",
    "sequence",
    "string",
    "strings",
]

_EMPTY: JsonMap = MappingProxyType({})
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class FieldError(ConfigError):
    """One field of an object is invalid; ``field`` is its path, e.g. ``spec.rules[0].from``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", hint="fix the field; the object is not applied until then")
        self.field = field
        self.problem = problem


def mapping(value: Json, field: str) -> JsonMap:
    """A mapping; None reads as empty."""
    if type(value) is MappingProxyType:
        return value
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise FieldError(field, "must be a mapping")
    return value


def sequence(value: Json, field: str) -> tuple[Json, ...]:
    """A list; None reads as empty."""
    if value is None:
        return ()
    if not isinstance(value, tuple):
        raise FieldError(field, "must be a list")
    return value


def string(value: Json, field: str) -> str:
    """A string; None reads as empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(field, "must be a string")
    return value


def strings(value: Json, field: str) -> tuple[str, ...]:
    """A list of strings."""
    items = sequence(value, field)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise FieldError(f"{field}[{i}]", "must be a string")
    return items  # type: ignore[return-value]


def check_fields(value: JsonMap, allowed: frozenset[str], field: str) -> None:
    """Rejects a key that is not in ``allowed`` (a typo would otherwise be silently ignored)."""
    for key in value:
        if key not in allowed:
            raise FieldError(
                f"{field}.{key}" if field else key, f"unknown field; known: {', '.join(sorted(allowed))}"
            )


def port(value: Json, field: str) -> int:
    """A TCP port 1-65535, given as a number or a decimal string."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    if number is None or not 1 <= number <= 65535:
        raise FieldError(field, f"{value!r} is not a port number (1-65535)")
    return number


def ip_bytes(value: Json, field: str) -> bytes:
    """The packed bytes of an IPv4 or IPv6 address."""
    try:
        return ipaddress.ip_address(string(value, field)).packed
    except ValueError:
        raise FieldError(field, f"{value!r} is not an IP address") from None


def cidr(value: Json, field: str) -> tuple[bytes, int]:
    """(network address bytes, prefix length) of a CIDR; a bare address is a /32 or /128."""
    text = string(value, field)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FieldError(field, f"{text!r} is not an IP address or CIDR block") from None
    return network.network_address.packed, network.prefixlen


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


def match_labels(selector: Json, field: str) -> Mapping[str, str]:
    """Validates an Istio workload selector (``{matchLabels: {...}}``) and returns its labels."""
    spec = mapping(selector, field)
    check_fields(spec, frozenset({"matchLabels"}), field)
    labels = mapping(spec.get("matchLabels"), f"{field}.matchLabels")
    for key, value in labels.items():
        where = f"{field}.matchLabels.{key}"
        if not _label_key_ok(key):
            raise FieldError(where, "is not a valid label key")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_NAME.match(value):
            raise FieldError(where, f"{value!r} is not a valid label value")
    return labels  # type: ignore[return-value]


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every selector label is on the object (an empty selector matches everything)."""
    return all(labels.get(k) == v for k, v in selector.items())
