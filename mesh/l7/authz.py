"""L7 authorization with the semantics of Envoy's HTTP RBAC filter, compiled once from
``envoy.extensions.filters.http.rbac.v3.RBAC`` configs (as Istio generates them for a waypoint).

Filters run in order (Istio: the DENY filter, then the ALLOW filter; an AUDIT filter logs only). A
DENY filter denies when any policy matches; an ALLOW filter denies when none does (an ALLOW filter
with no policies denies everything); a LOG filter never denies. ``shadow_rules`` are evaluated for
the log only. A policy matches when one of its permissions and one of its principals match.

Multi-valued headers (CVE-2020-25017 class): a header matcher that would make a request *more*
likely to be denied matches when any value (or the values joined by ``,``, as Envoy sees them)
matches; one that would let it through must hold for every value. So ``x-role: ok`` plus
``x-role: admin`` is denied by a DENY on ``x-role: admin`` and not allowed by an ALLOW on
``x-role: ok``. Regexes are RE2 (``google-re2``), as Envoy's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2
from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2

from mesh.errors import ConfigError
from mesh.l7.normalize import normalize_authority

__all__ = [
    "RBAC_FILTERS",
    "AuthzConfigError",
    "AuthzDecision",
    "IpAddress",
    "RbacEngine",
    "RequestAttributes",
    "compile_rbac",
    "request_attributes",
]

RBAC_FILTERS = (
    "envoy.filters.http.rbac.deny",
    "envoy.filters.http.rbac.audit",
    "envoy.filters.http.rbac.allow",
)
"""The waypoint's RBAC filters in chain order (as Istio's: DENY, then AUDIT, then ALLOW); a virtual
host's ``typed_per_filter_config`` carries each one's ``RBACPerRoute`` under these names."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MetadataValue = str | bool | float | tuple[str, ...]


class AuthzConfigError(ConfigError):
    """An RBAC config this engine cannot apply; names the policy and field."""

    def __init__(self, where: str, problem: str) -> None:
        hint = "fix the AuthorizationPolicy; the last good config stays"
        super().__init__(f"{where}: {problem}", hint=hint)


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What L7 policy sees of one (normalized) request.

    ``path`` has no query or fragment; ``headers`` have lower-case names, each with all its values
    in order, and include ``:authority``/``:method``/``:path``. ``principal`` is the peer's URI SAN
    (``spiffe://...``), empty without mTLS. ``metadata`` holds dynamic metadata by filter name
    (``istio_authn``: ``request.auth.principal``, ``request.auth.claims`` ...).
    """

    method: str
    path: str
    headers: Mapping[str, tuple[str, ...]]
    source_ip: IpAddress
    destination_ip: IpAddress
    destination_port: int
    principal: str = ""
    remote_ip: IpAddress | None = None
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def request_attributes(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    *,
    source_ip: IpAddress,
    destination_ip: IpAddress,
    destination_port: int,
    principal: str = "",
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> RequestAttributes:
    """The attributes of a request whose method and target are already normalized
    (mesh.l7.normalize), with Envoy's pseudo-headers (``:authority`` normalized, ``:method``,
    ``:path`` with the query) beside the ordinary ones."""
    grouped: dict[str, tuple[str, ...]] = {}
    for name, value in headers:
        key = name.lower()
        grouped[key] = (*grouped.get(key, ()), value)
    hosts = grouped.pop("host", ())
    authority = normalize_authority(hosts[0]) if hosts else ""
    grouped[":authority"] = grouped["host"] = (authority,) if authority else ()
    grouped[":method"] = (method,)
    grouped[":path"] = (target,)
    return RequestAttributes(
        method, target.partition("?")[0], grouped, source_ip, destination_ip, destination_port,
        principal=principal, metadata=metadata or {},
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuthzDecision:
    """The outcome, the policy that decided it (``ns.name`` style key, empty if none), the filter
    action that decided, and the policies a LOG filter or shadow rules matched."""

    allowed: bool
    policy: str = ""
    reason: str = ""
    logged: tuple[str, ...] = ()


_Check = Callable[[RequestAttributes], bool]


@dataclass(frozen=True, slots=True)
class _Filter:
    action: int
    policies: tuple[tuple[str, _Check], ...]
    shadow: tuple[tuple[str, _Check], ...]
    by_path: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """For each exact path some policies require: the positions (in order) of the policies that can
    match a request with that path, those requiring it and those requiring no exact path."""
    any_path: tuple[int, ...] = ()
    """The positions of the policies that require no exact path (all when nothing is indexed)."""

    def candidates(self, path: str) -> Iterator[tuple[str, _Check]]:
        """The policies that can match a request for ``path``, in order: the others require an
        exact path that is not this one, so they cannot (an index, not a decision)."""
        for position in self.by_path.get(path, self.any_path):
            yield self.policies[position]


def _indexed(
    action: int,
    policies: Sequence[tuple[str, _Check, frozenset[str] | None]],
    shadow: tuple[tuple[str, _Check], ...],
) -> _Filter:
    """A filter whose policies are indexed by the exact paths they require (None: no such paths)."""
    any_path = tuple(i for i, (_, _, paths) in enumerate(policies) if paths is None)
    by_path: dict[str, list[int]] = {}
    for i, (_, _, paths) in enumerate(policies):
        for path in paths or ():
            by_path.setdefault(path, []).append(i)
    index = {path: tuple(sorted({*positions, *any_path})) for path, positions in by_path.items()}
    return _Filter(action, tuple((n, c) for n, c, _ in policies), shadow, index, any_path)


class RbacEngine:
    """Decides requests against a chain of compiled RBAC filters (empty chain: allow)."""

    def __init__(self, filters: Sequence[_Filter]) -> None:
        self._filters = tuple(filters)

    def __bool__(self) -> bool:
        return bool(self._filters)

    def decide(self, request: RequestAttributes) -> AuthzDecision:
        """Runs the filters in order; the first that denies decides."""
        logged: list[str] = []
        for chain in self._filters:
            logged += [name for name, check in chain.shadow if check(request)]
            matched = next((name for name, check in chain.candidates(request.path) if check(request)), None)
            if chain.action == rbac_pb2.RBAC.LOG:
                logged += [name for name, check in chain.policies if check(request)]
            elif chain.action == rbac_pb2.RBAC.DENY and matched is not None:
                return AuthzDecision(False, matched, "denied by a DENY policy", tuple(logged))
            elif chain.action == rbac_pb2.RBAC.ALLOW and matched is None:
                return AuthzDecision(False, "", "no ALLOW policy matched", tuple(logged))
        return AuthzDecision(True, "", "allowed", tuple(logged))


def compile_rbac(filters: Sequence[http_rbac_pb2.RBAC]) -> RbacEngine:
    """Compiles HTTP RBAC filter configs, in filter order; raises AuthzConfigError."""
    compiled = []
    for index, config in enumerate(filters):
        where = f"rbac[{index}]"
        rules = config.rules if config.HasField("rules") else None
        if rules is None and not config.HasField("shadow_rules"):
            continue  # an RBAC filter without rules does nothing in Envoy
        action = rules.action if rules is not None else rbac_pb2.RBAC.LOG
        deny_side = action != rbac_pb2.RBAC.ALLOW
        policies = _policies(rules, f"{where}.rules", deny_side) if rules is not None else ()
        shadow = tuple((n, c) for n, c, _ in _policies(config.shadow_rules, f"{where}.shadow_rules", True))
        compiled.append(_indexed(action, policies, shadow))
    return RbacEngine(compiled)


def _policies(
    rules: rbac_pb2.RBAC, where: str, deny_side: bool
) -> tuple[tuple[str, _Check, frozenset[str] | None], ...]:
    """(name, check, the exact paths it requires or None) per policy, in Envoy's order (by name)."""
    out = []
    for name in sorted(rules.policies):
        policy = rules.policies[name]
        at = f"{where}.policies[{name}]"
        if policy.HasField("condition") or policy.HasField("checked_condition"):
            raise AuthzConfigError(at, "CEL conditions are not supported")
        permissions = [_permission(p, f"{at}.permissions", deny_side) for p in policy.permissions]
        principals = [_principal(p, f"{at}.principals", deny_side) for p in policy.principals]
        out.append((name, _policy_check(permissions, principals), _any_of_paths(policy.permissions)))
    return tuple(out)


def _any_of_paths(permissions: Sequence[rbac_pb2.Permission]) -> frozenset[str] | None:
    """The exact paths of which a request must have one for any of ``permissions`` to match, or
    None when one of them can match another path (a prefix, a template, a negation, no path)."""
    union: set[str] = set()
    for permission in permissions:
        paths = _required_paths(permission)
        if paths is None:
            return None
        union |= paths
    return frozenset(union) if permissions else None


def _required_paths(p: rbac_pb2.Permission) -> frozenset[str] | None:
    kind = p.WhichOneof("rule")
    if kind == "url_path" and p.url_path.HasField("path"):
        matcher = p.url_path.path
        exact = matcher.WhichOneof("match_pattern") == "exact" and not matcher.ignore_case
        return frozenset((matcher.exact,)) if exact else None
    if kind == "and_rules":  # all must match: any one part that requires paths is enough
        return next((r for x in p.and_rules.rules if (r := _required_paths(x)) is not None), None)
    if kind == "or_rules":  # any may match: every part must require paths
        return _any_of_paths(p.or_rules.rules)
    return None


def _policy_check(permissions: list[_Check], principals: list[_Check]) -> _Check:
    return lambda r: any(p(r) for p in permissions) and any(p(r) for p in principals)


@dataclass(frozen=True, slots=True)
class _Logic:
    """The names of the boolean cases of a Permission or a Principal (the same shape in each)."""

    oneof: str
    all_of: str
    any_of: str
    negated: str
    items: str


_PERMISSION_LOGIC = _Logic("rule", "and_rules", "or_rules", "not_rule", "rules")
_PRINCIPAL_LOGIC = _Logic("identifier", "and_ids", "or_ids", "not_id", "ids")


def _logic(
    p: Any, names: _Logic, where: str, lenient: bool, build: Callable[[Any, str, bool], _Check]
) -> _Check | None:
    """``any``, and/or lists and ``not`` of a Permission or Principal; None for its other cases. A
    ``not`` flips leniency: what is left out of a negated rule must not widen what it matches."""
    kind = p.WhichOneof(names.oneof)
    if kind == "any":
        matched = p.any
        return lambda r: matched
    if kind in (names.all_of, names.any_of):
        parts = [build(x, f"{where}.{kind}", lenient) for x in getattr(getattr(p, kind), names.items)]
        return _all(parts) if kind == names.all_of else _any(parts)
    if kind == names.negated:
        inner = build(getattr(p, kind), f"{where}.{kind}", not lenient)
        return lambda r: not inner(r)
    return None


def _permission(p: rbac_pb2.Permission, where: str, lenient: bool) -> _Check:
    if (logic := _logic(p, _PERMISSION_LOGIC, where, lenient, _permission)) is not None:
        return logic
    kind = p.WhichOneof("rule")
    if kind == "header":
        return _header(p.header, f"{where}.header", lenient)
    if kind == "url_path":
        return _url_path(p.url_path, f"{where}.url_path")
    if kind == "uri_template":
        return _uri_template(p.uri_template, f"{where}.uri_template")
    if kind == "destination_ip":
        net = _cidr(p.destination_ip, f"{where}.destination_ip")
        return lambda r: r.destination_ip.version == net.version and r.destination_ip in net
    if kind == "destination_port":
        port = p.destination_port
        return lambda r: r.destination_port == port
    if kind == "destination_port_range":
        low, high = p.destination_port_range.start, p.destination_port_range.end
        return lambda r: low <= r.destination_port < high
    if kind == "metadata":
        return _metadata(p.metadata, f"{where}.metadata")
    raise AuthzConfigError(where, f"permission {kind!r} is not supported")


def _principal(p: rbac_pb2.Principal, where: str, lenient: bool) -> _Check:
    if (logic := _logic(p, _PRINCIPAL_LOGIC, where, lenient, _principal)) is not None:
        return logic
    kind = p.WhichOneof("identifier")
    if kind == "authenticated":
        if not p.authenticated.HasField("principal_name"):
            return lambda r: bool(r.principal)
        match = _string(p.authenticated.principal_name, f"{where}.authenticated")
        return lambda r: bool(r.principal) and match(r.principal)
    if kind in ("source_ip", "direct_remote_ip"):
        net = _cidr(getattr(p, kind), f"{where}.{kind}")
        return lambda r: r.source_ip.version == net.version and r.source_ip in net
    if kind == "remote_ip":
        net = _cidr(p.remote_ip, f"{where}.remote_ip")
        return lambda r: _in(r.remote_ip or r.source_ip, net)
    if kind == "header":
        return _header(p.header, f"{where}.header", lenient)
    if kind == "url_path":
        return _url_path(p.url_path, f"{where}.url_path")
    if kind == "metadata":
        return _metadata(p.metadata, f"{where}.metadata")
    raise AuthzConfigError(where, f"principal {kind!r} is not supported")


def _all(parts: list[_Check]) -> _Check:
    return lambda r: all(p(r) for p in parts)


def _any(parts: list[_Check]) -> _Check:
    return lambda r: any(p(r) for p in parts)


def _in(address: IpAddress, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return address.version == network.version and address in network


def _cidr(c: address_pb2.CidrRange, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        full = 128 if ":" in c.address_prefix else 32
        prefix = c.prefix_len.value if c.HasField("prefix_len") else full
        return ipaddress.ip_network(f"{c.address_prefix}/{prefix}", strict=False)
    except ValueError as exc:
        raise AuthzConfigError(where, f"{c.address_prefix!r} is not a CIDR range ({exc})") from None


def _header(h: rc.HeaderMatcher, where: str, lenient: bool) -> _Check:
    name = h.name.lower()
    kind = h.WhichOneof("header_match_specifier")
    if kind == "present_match":
        want = bool(h.present_match)
        test: Callable[[str], bool] = lambda v: True  # noqa: E731
    elif kind == "string_match":
        test = _string(h.string_match, where)
        want = True
    elif kind in ("exact_match", "prefix_match", "suffix_match", "contains_match"):
        test = _string(string_pb2.StringMatcher(**{kind.removesuffix("_match"): getattr(h, kind)}), where)
        want = True
    elif kind == "safe_regex_match":
        test = _string(string_pb2.StringMatcher(safe_regex=h.safe_regex_match), where)
        want = True
    else:
        raise AuthzConfigError(where, f"header match {kind!r} is not supported")
    invert = bool(h.invert_match)

    def check(r: RequestAttributes) -> bool:
        values = r.headers.get(name, ())
        if not values:
            matched = False if kind != "present_match" else not want
            return matched != invert
        if kind == "present_match":
            return want != invert
        candidates = (*values, ",".join(values)) if len(values) > 1 else values
        # The side that denies matches on any value; the side that lets through needs every value.
        any_value = lenient != invert
        matched = any(map(test, candidates)) if any_value else all(map(test, values))
        return matched != invert

    return check


def _url_path(m: Any, where: str) -> _Check:
    if not m.HasField("path"):
        raise AuthzConfigError(where, "only a string path matcher is supported")
    test = _string(m.path, where)
    return lambda r: test(r.path)


def _uri_template(ext: Any, where: str) -> _Check:
    config = uri_template_match_pb2.UriTemplateMatchConfig()
    if not ext.typed_config.Unpack(config):
        raise AuthzConfigError(where, f"{ext.typed_config.type_url} is not a UriTemplateMatchConfig")
    pattern = _template_regex(config.path_template, where)
    return lambda r: pattern.fullmatch(r.path) is not None


def _template_regex(template: str, where: str) -> Any:  # re2 has no type stubs
    """``/a/{*}/b`` -> one whole segment; ``{**}`` (last) -> the rest of the path."""
    if not template.startswith("/"):
        raise AuthzConfigError(where, f"path template {template!r} must start with /")
    parts = re2.split(r"(\{\*\*\}|\{\*\})", template)
    if "{**}" in parts[:-2]:
        raise AuthzConfigError(where, f"path template {template!r}: {{**}} must be the last operator")
    regex = "".join("[^/]+" if p == "{*}" else ".*" if p == "{**}" else re2.escape(p) for p in parts)
    return re2.compile(regex)


def _string(m: string_pb2.StringMatcher, where: str) -> Callable[[str], bool]:
    kind = m.WhichOneof("match_pattern")
    fold = m.ignore_case
    if kind == "safe_regex":
        try:
            pattern = re2.compile(m.safe_regex.regex)
        except re2.error as exc:
            raise AuthzConfigError(where, f"{m.safe_regex.regex!r} is not valid RE2 ({exc})") from None
        return lambda v: pattern.fullmatch(v) is not None
    if kind not in ("exact", "prefix", "suffix", "contains"):
        raise AuthzConfigError(where, f"string match {kind!r} is not supported")
    want = getattr(m, kind).lower() if fold else getattr(m, kind)
    want = str(want)
    op = _STRING_OPS[kind]
    return lambda v: op(v.lower() if fold else v, want)


_STRING_OPS: dict[str, Callable[[str, str], bool]] = {
    "exact": lambda v, w: v == w,
    "prefix": lambda v, w: v.startswith(w),
    "suffix": lambda v, w: v.endswith(w),
    "contains": lambda v, w: w in v,
}


def _metadata(m: metadata_pb2.MetadataMatcher, where: str) -> _Check:
    keys = tuple(segment.key for segment in m.path)
    value = _value(m.value, where)
    invert = bool(m.invert)

    def check(r: RequestAttributes) -> bool:
        current: Any = r.metadata.get(m.filter)
        for key in keys:
            current = current.get(key) if isinstance(current, Mapping) else None
        return value(current) != invert

    return check


def _value(v: value_pb2.ValueMatcher, where: str) -> Callable[[Any], bool]:
    kind = v.WhichOneof("match_pattern")
    if kind == "present_match":
        present = bool(v.present_match)
        return lambda x: (x is not None) == present
    if kind == "string_match":
        test = _string(v.string_match, where)
        return lambda x: isinstance(x, str) and test(x)
    if kind == "bool_match":
        return lambda x: x is v.bool_match
    if kind == "list_match":
        inner = _value(v.list_match.one_of, where)
        return lambda x: isinstance(x, (list, tuple)) and any(inner(i) for i in x)
    if kind == "or_match":
        parts = [_value(x, where) for x in v.or_match.value_matchers]
        return lambda x: any(p(x) for p in parts)
    raise AuthzConfigError(where, f"metadata value match {kind!r} is not supported")
