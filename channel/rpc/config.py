"""The ``[rpc]`` section of the gateway config: upstream clusters and routes.

``RoutingConfig.from_dict(toml["rpc"])`` validates everything up front and
names the offending field in every error, e.g.
``rpc.routes[2].cluster: unknown cluster 'payments-b'``. Unknown keys are
errors too, so a typo never silently falls back to a default.

An empty or missing ``[rpc]`` is valid: every call then answers NOT_FOUND.

A full example (every key shown; only ``endpoints``, ``match`` and
``cluster`` are required)::

    [rpc]
    max_response_bytes = 1048576     # upstream bodies larger than this -> UPSTREAM_ERROR
    endpoint_down_s = 3.0            # an endpoint that refused a connection rests this long
    mirror_max_in_flight = 64        # mirror calls beyond this are dropped (and counted)
    native = true                    # native engine: plain calls served by the engine itself

    [rpc.clusters.account]
    endpoints = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]  # POST {endpoint}/rpc/{op}
    timeout_ms = 3000                # whole call incl. retries (a route may override)
    attempt_timeout_ms = 1000        # one try (default: timeout_ms); lets a retry fit in
    connect_timeout_ms = 500
    retries = 1                      # extra tries, only for idempotent ops
    breaker.failures = 5             # failed tries within window_s open it; 0 = no breakers
    breaker.window_s = 10
    breaker.open_s = 15
    breaker.min_devices = 3          # ...for everyone only if from this many devices
    breaker.device_max_in_flight = 16   # calls one device may have in flight here
    zone = "hz"                      # the zone this cluster serves (checked by zone rules)
    max_connections = 100            # keep-alive pool size for the whole cluster
    max_connections_per_endpoint = 0 # 0 = no per-endpoint cap
    keepalive_s = 15.0               # keep below the upstream's own idle timeout
    max_response_bytes = 1048576     # overrides [rpc] for this cluster

    [rpc.clusters.account-shadow]
    endpoints = ["http://10.0.0.9:9001"]
    # ... and account-stress, account-canary, account-v2, account-ios,
    # account-hz, account-sh (zone = "sh"), account-blue, account-green

    [[rpc.routes]]
    match = "account."               # prefix (ends with '.'), exact op, or "*" (default route)
    cluster = "account"              # used when no rule matches
    idempotent_ops = ["account.balance.get"]   # or: idempotent = true (every op of the route)
    timeout_ms = 2000                # overrides the cluster's
    retries = 1                      # overrides the cluster's
    mirror = { cluster = "account-shadow", percent = 5 }

    # Rules are evaluated in order; the first match picks the cluster. Short
    # rules fit the inline form, rules = [{ kind = "gray", ... }, ...]; TOML
    # inline tables cannot span lines, so longer lists use one table per rule:
    [[rpc.routes.rules]]
    kind = "stress"
    header = "x-stress-test"
    cluster = "account-stress"

    [[rpc.routes.rules]]
    kind = "gray"
    percent = 10                     # of devices, by a stable hash of device_id and salt
    cluster = "account-canary"

    [[rpc.routes.rules]]
    kind = "app_version"
    min = "8.12.0"                   # inclusive
    max = "9.0.0"                    # exclusive
    cluster = "account-v2"

    [[rpc.routes.rules]]
    kind = "platform"
    platforms = ["ios"]
    cluster = "account-ios"

    [[rpc.routes.rules]]
    kind = "header"
    header = "x-region"
    values = ["eu"]
    cluster = "account-hz"

    [[rpc.routes.rules]]
    kind = "zone"
    clusters = { hz = "account-hz", sh = "account-sh" }
    failover = ["account-sh", "account-hz"]

    [[rpc.routes.rules]]
    kind = "color"                   # blue/green: switch ``active`` and reload
    active = "blue"
    clusters = { blue = "account-blue", green = "account-green" }

Rule keys: ``stress`` — ``header``, ``cluster``, optional ``value`` (exact
match; default: any value but empty/``0``/``false``) and ``scope`` (only
devices with that verified scope may be tagged). ``gray`` — ``percent``
(0–100, 0.01 resolution), ``cluster``, optional ``salt`` (default: the
route's ``match``; change it to reshuffle) and ``key`` (``device_id`` or
``user_id``). ``app_version`` — ``min`` (inclusive) and/or ``max``
(exclusive), ``cluster``, optional ``app_id``. ``platform`` — ``platforms``,
``cluster``. ``header`` — ``header``, ``values``, ``cluster``. ``zone`` —
``clusters`` (zone → cluster), optional ``failover``. ``color`` —
``active``, ``clusters`` (colour → cluster).

Call policy: the deadline is the route's ``timeout_ms`` (else the chosen
cluster's) and covers retries and fail-over. A refused connection sent
nothing, so the next endpoint (then the next fail-over cluster) is tried for
any op; 5xx, timeouts and dropped connections are retried on another
endpoint only for idempotent ops. ``mirror`` copies ``percent`` of the
route's calls (sampled at random, stress calls never) to the shadow cluster,
fire-and-forget, one try, protected by the shadow's own breaker.

Breakers isolate devices: ``breaker`` opens the cluster for everyone only when
``failures`` failed tries (connect errors, timeouts, 5xx, broken answers) within
``window_s`` come from at least ``min_devices`` different devices; a refused
connection counts whoever saw it, as it says nothing about the caller. Each device
also has a breaker of its own on the cluster with the same ``failures``,
``window_s`` and ``open_s`` (only it is turned away, UNAVAILABLE with a retry hint)
and at most ``device_max_in_flight`` calls in flight to it (0: no cap; the next
gets RATE_LIMITED), so one device's slow calls can neither open the cluster's
breaker nor hold all of its pooled connections. ``failures = 0`` disables both.

Header names in rules are matched case-insensitively against the headers
the device sent; ``x-channel-*`` names are refused because the gateway
strips them from devices (they carry verified identity to upstreams).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from yarl import URL

from channel.rpc.rules import (
    AppVersionRule,
    ColorRule,
    GrayRule,
    HeaderRule,
    PlatformRule,
    Rule,
    StressRule,
    ZoneRule,
    parse_version,
)

#: What an operation type may look like: it becomes a URL path segment.
OP_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_HEADER_PATTERN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~\-]{1,128}")

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 5
    window_s: float = 10.0
    open_s: float = 15.0
    #: The cluster's breaker opens only on failures from this many devices or more.
    min_devices: int = 3
    #: Calls one device may have in flight to the cluster (0: no cap).
    device_max_in_flight: int = 16


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    endpoints: tuple[str, ...]
    timeout_ms: int = 3000
    #: One try; 0 = the whole ``timeout_ms``.
    attempt_timeout_ms: int = 0
    connect_timeout_ms: int = 1000
    retries: int = 0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    zone: str = ""
    max_connections: int = 100
    max_connections_per_endpoint: int = 0
    keepalive_s: float = 15.0
    #: 0 = ``RoutingConfig.max_response_bytes``.
    max_response_bytes: int = 0


@dataclass(frozen=True)
class MirrorConfig:
    cluster: str
    percent: float


@dataclass(frozen=True)
class RouteConfig:
    match: str
    cluster: str
    idempotent: bool = False
    idempotent_ops: frozenset[str] = frozenset()
    timeout_ms: int | None = None
    retries: int | None = None
    mirror: MirrorConfig | None = None
    rules: tuple[Rule, ...] = ()

    @property
    def is_prefix(self) -> bool:
        return self.match.endswith(".")

    @property
    def is_default(self) -> bool:
        return self.match == "*"

    def is_idempotent(self, op: str) -> bool:
        return self.idempotent or op in self.idempotent_ops

    def matches(self, op: str) -> bool:
        if self.is_default:
            return True
        return op.startswith(self.match) if self.is_prefix else op == self.match


@dataclass(frozen=True)
class RoutingConfig:
    """Validated ``[rpc]`` config; build it with ``from_dict``."""

    clusters: Mapping[str, ClusterConfig]
    routes: tuple[RouteConfig, ...]
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    endpoint_down_s: float = 3.0
    mirror_max_in_flight: int = 64
    #: The native engine may serve plain calls itself (``RpcRouter.native_table``).
    native: bool = True

    def max_response_bytes_for(self, cluster: str) -> int:
        return self.clusters[cluster].max_response_bytes or self.max_response_bytes

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "rpc") -> RoutingConfig:
        """Parse and validate the ``[rpc]`` table (as ``tomllib`` returns it)."""
        top = _Table(
            data,
            path,
            (
                "clusters",
                "routes",
                "max_response_bytes",
                "endpoint_down_s",
                "mirror_max_in_flight",
                "native",
            ),
        )
        clusters_table = top.table("clusters")
        clusters: dict[str, ClusterConfig] = {}
        for name in clusters_table.keys_in_order():
            cpath = f"{clusters_table.path}.{name}"
            if not _NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{cpath}: cluster names use letters, digits, '_', '.', '-'")
            clusters[name] = _parse_cluster(name, clusters_table.table(name))

        routes_raw = top.get("routes", list, [])
        routes: list[RouteConfig] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(routes_raw):
            rpath = f"{path}.routes[{index}]"
            route = _parse_route(_Table(raw, rpath, _ROUTE_KEYS), clusters)
            if route.match in seen:
                first = f"{path}.routes[{seen[route.match]}]"
                raise ValueError(f"{rpath}.match: {route.match!r} already used by {first}")
            seen[route.match] = index
            routes.append(route)

        return cls(
            clusters=clusters,
            routes=tuple(routes),
            max_response_bytes=top.integer("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, lo=1),
            endpoint_down_s=top.number("endpoint_down_s", 3.0, lo=0.0),
            mirror_max_in_flight=top.integer("mirror_max_in_flight", 64, lo=0),
            native=top.get("native", bool, True),
        )


_ROUTE_KEYS = (
    "match",
    "cluster",
    "idempotent",
    "idempotent_ops",
    "timeout_ms",
    "retries",
    "mirror",
    "rules",
)


class _Table:
    """A TOML table being read: typed getters whose errors name the field."""

    def __init__(self, data: object, path: str, allowed: Iterable[str] | None = None) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a table, got {_type_name(data)}")
        self.data: Mapping[str, object] = data
        self.path = path
        if allowed is not None:
            allowed = tuple(allowed)
            for key in data:
                if key not in allowed:
                    raise ValueError(
                        f"{path}.{key}: unknown key (expected one of: {', '.join(allowed)})"
                    )

    def keys_in_order(self) -> list[str]:
        return list(self.data)

    def field(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: type[T], default: T | None = None) -> T:
        if key not in self.data:
            if default is None:
                raise ValueError(f"{self.field(key)}: required")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(
                f"{self.field(key)}: expected {kind.__name__}, got {_type_name(value)}"
            )
        return value

    def text(self, key: str, default: str | None = None, *, nonempty: bool = True) -> str:
        value = self.get(key, str, default)
        if nonempty and not value and key in self.data:
            raise ValueError(f"{self.field(key)}: must not be empty")
        return value

    def integer(self, key: str, default: int | None = None, *, lo: int = 0) -> int:
        value = self.get(key, int, default)
        if value < lo:
            raise ValueError(f"{self.field(key)}: must be >= {lo}, got {value}")
        return value

    def number(
        self, key: str, default: float | None = None, *, lo: float = 0.0, hi: float | None = None
    ) -> float:
        if (
            key in self.data
            and isinstance(self.data[key], int)
            and not isinstance(self.data[key], bool)
        ):
            value = float(self.get(key, int))
        else:
            value = self.get(key, float, default)
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}"
            raise ValueError(f"{self.field(key)}: must be {bounds}, got {value:g}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return self.get(key, bool, default)

    def str_list(self, key: str, default: list[str] | None = None) -> list[str]:
        values = self.get(key, list, default)
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{self.field(key)}[{i}]: expected a non-empty string")
        return values

    def table(self, key: str, allowed: Iterable[str] | None = None) -> _Table:
        return _Table(self.get(key, dict, {}), self.field(key), allowed)


def _type_name(value: object) -> str:
    return {
        dict: "table",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "float",
    }.get(type(value), type(value).__name__)


def _parse_endpoint(value: str, where: str) -> str:
    try:
        url = URL(value)
    except ValueError as exc:
        raise ValueError(f"{where}: not a URL: {value!r} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{where}: expected http://host:port or https://host:port, got {value!r}")
    if url.query_string or url.fragment:
        raise ValueError(f"{where}: no query or fragment allowed in {value!r}")
    return str(url).rstrip("/")


def _parse_cluster(name: str, t: _Table) -> ClusterConfig:
    _Table(
        t.data,
        t.path,
        (
            "endpoints",
            "timeout_ms",
            "attempt_timeout_ms",
            "connect_timeout_ms",
            "retries",
            "breaker",
            "zone",
            "max_connections",
            "max_connections_per_endpoint",
            "keepalive_s",
            "max_response_bytes",
        ),
    )
    raw_endpoints = t.str_list("endpoints")
    if not raw_endpoints:
        raise ValueError(f"{t.field('endpoints')}: list at least one endpoint")
    endpoints = [
        _parse_endpoint(e, f"{t.field('endpoints')}[{i}]") for i, e in enumerate(raw_endpoints)
    ]
    for i, endpoint in enumerate(endpoints):
        if endpoint in endpoints[:i]:
            raise ValueError(f"{t.field('endpoints')}[{i}]: duplicate endpoint {endpoint!r}")
    b = t.table(
        "breaker", ("failures", "window_s", "open_s", "min_devices", "device_max_in_flight")
    )
    breaker = BreakerConfig(
        failures=b.integer("failures", 5),
        window_s=b.number("window_s", 10.0, lo=0.001),
        open_s=b.number("open_s", 15.0, lo=0.001),
        min_devices=b.integer("min_devices", 3, lo=1),
        device_max_in_flight=b.integer("device_max_in_flight", 16),
    )
    return ClusterConfig(
        name=name,
        endpoints=tuple(endpoints),
        timeout_ms=t.integer("timeout_ms", 3000, lo=1),
        attempt_timeout_ms=t.integer("attempt_timeout_ms", 0),
        connect_timeout_ms=t.integer("connect_timeout_ms", 1000, lo=1),
        retries=t.integer("retries", 0),
        breaker=breaker,
        zone=t.text("zone", ""),
        max_connections=t.integer("max_connections", 100, lo=1),
        max_connections_per_endpoint=t.integer("max_connections_per_endpoint", 0),
        keepalive_s=t.number("keepalive_s", 15.0),
        max_response_bytes=t.integer("max_response_bytes", 0),
    )


def _cluster_ref(t: _Table, key: str, clusters: Mapping[str, ClusterConfig]) -> str:
    name = t.text(key)
    return _check_cluster(name, t.field(key), clusters)


def _check_cluster(name: object, where: str, clusters: Mapping[str, ClusterConfig]) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{where}: expected a cluster name, got {_type_name(name)}")
    if name not in clusters:
        raise ValueError(f"{where}: unknown cluster {name!r}")
    return name


def _parse_route(t: _Table, clusters: Mapping[str, ClusterConfig]) -> RouteConfig:
    match = t.text("match")
    if match != "*":
        body = match[:-1] if match.endswith(".") else match
        if not OP_PATTERN.fullmatch(body) or body.endswith("."):
            raise ValueError(
                f"{t.field('match')}: expected an op ('account.balance.get'), a prefix ending "
                f"with '.' ('account.') or '*', got {match!r}"
            )
    cluster = _cluster_ref(t, "cluster", clusters)
    idempotent_ops = t.str_list("idempotent_ops", [])
    draft = RouteConfig(match=match, cluster=cluster)
    for i, op in enumerate(idempotent_ops):
        if not draft.matches(op):
            raise ValueError(
                f"{t.field('idempotent_ops')}[{i}]: {op!r} is not matched by this route ({match!r})"
            )
    mirror: MirrorConfig | None = None
    if t.has("mirror"):
        m = t.table("mirror", ("cluster", "percent"))
        mirror = MirrorConfig(
            cluster=_cluster_ref(m, "cluster", clusters),
            percent=m.number("percent", 100.0, hi=100.0),
        )
        if mirror.cluster == cluster:
            raise ValueError(f"{m.field('cluster')}: must differ from the route's cluster")
    raw_rules = t.get("rules", list, [])
    rules = tuple(
        _parse_rule(_Table(raw, f"{t.field('rules')}[{i}]"), match, clusters)
        for i, raw in enumerate(raw_rules)
    )
    timeout_ms = t.integer("timeout_ms", 0, lo=1) if t.has("timeout_ms") else None
    retries = t.integer("retries", 0) if t.has("retries") else None
    return RouteConfig(
        match=match,
        cluster=cluster,
        idempotent=t.flag("idempotent", False),
        idempotent_ops=frozenset(idempotent_ops),
        timeout_ms=timeout_ms,
        retries=retries,
        mirror=mirror,
        rules=rules,
    )


def _header_name(t: _Table, key: str) -> str:
    name = t.text(key).lower()
    if not _HEADER_PATTERN.fullmatch(name):
        raise ValueError(f"{t.field(key)}: not a valid header name: {name!r}")
    if name.startswith("x-channel-"):
        raise ValueError(
            f"{t.field(key)}: x-channel-* headers are stripped from devices; pick another name"
        )
    return name


def _version(t: _Table, key: str) -> tuple[int, ...] | None:
    if not t.has(key):
        return None
    text = t.text(key)
    version = parse_version(text)
    if version is None:
        raise ValueError(f"{t.field(key)}: not a dotted version like '8.12.0': {text!r}")
    return version


def _name_map(
    t: _Table, key: str, clusters: Mapping[str, ClusterConfig]
) -> tuple[tuple[str, str], ...]:
    table = t.table(key)
    if not table.keys_in_order():
        raise ValueError(f"{t.field(key)}: map at least one name to a cluster")
    return tuple(
        (name, _check_cluster(table.data[name], table.field(name), clusters))
        for name in table.keys_in_order()
    )


def _parse_rule(t: _Table, match: str, clusters: Mapping[str, ClusterConfig]) -> Rule:
    kind = t.text("kind")
    rule: Rule
    if kind == "stress":
        _Table(t.data, t.path, ("kind", "header", "cluster", "value", "scope"))
        rule = StressRule(
            header=_header_name(t, "header"),
            cluster=_cluster_ref(t, "cluster", clusters),
            value=t.text("value", ""),
            scope=t.text("scope", ""),
        )
    elif kind == "gray":
        _Table(t.data, t.path, ("kind", "percent", "cluster", "salt", "key"))
        key = t.text("key", "device_id")
        if key not in ("device_id", "user_id"):
            raise ValueError(f"{t.field('key')}: expected 'device_id' or 'user_id', got {key!r}")
        rule = GrayRule(
            percent=t.number("percent", hi=100.0),
            cluster=_cluster_ref(t, "cluster", clusters),
            salt=t.text("salt", match),
            key=key,
        )
    elif kind == "app_version":
        _Table(t.data, t.path, ("kind", "min", "max", "cluster", "app_id"))
        low, high = _version(t, "min"), _version(t, "max")
        if low is None and high is None:
            raise ValueError(f"{t.path}: give min, max or both")
        if low is not None and high is not None and low >= high:
            raise ValueError(f"{t.field('max')}: must be greater than min")
        rule = AppVersionRule(
            cluster=_cluster_ref(t, "cluster", clusters),
            min=low,
            max=high,
            app_id=t.text("app_id", ""),
        )
    elif kind == "platform":
        _Table(t.data, t.path, ("kind", "platforms", "cluster"))
        platforms = t.str_list("platforms")
        if not platforms:
            raise ValueError(f"{t.field('platforms')}: list at least one platform")
        rule = PlatformRule(
            platforms=frozenset(p.lower() for p in platforms),
            cluster=_cluster_ref(t, "cluster", clusters),
        )
    elif kind == "header":
        _Table(t.data, t.path, ("kind", "header", "values", "cluster"))
        values = t.str_list("values")
        if not values:
            raise ValueError(f"{t.field('values')}: list at least one value")
        rule = HeaderRule(
            header=_header_name(t, "header"),
            values=frozenset(values),
            cluster=_cluster_ref(t, "cluster", clusters),
        )
    elif kind == "zone":
        _Table(t.data, t.path, ("kind", "clusters", "failover"))
        zone_clusters = _name_map(t, "clusters", clusters)
        for zone, cluster in zone_clusters:
            served = clusters[cluster].zone
            if served and served != zone:
                raise ValueError(
                    f"{t.field('clusters')}.{zone}: cluster {cluster!r} serves zone {served!r}"
                )
        failover = t.str_list("failover", [])
        for i, name in enumerate(failover):
            _check_cluster(name, f"{t.field('failover')}[{i}]", clusters)
        rule = ZoneRule(zone_clusters=zone_clusters, failover=tuple(failover))
    elif kind == "color":
        _Table(t.data, t.path, ("kind", "active", "clusters"))
        color_clusters = _name_map(t, "clusters", clusters)
        active = t.text("active")
        if active not in dict(color_clusters):
            raise ValueError(
                f"{t.field('active')}: {active!r} is not one of "
                f"{', '.join(name for name, _ in color_clusters)}"
            )
        rule = ColorRule(active=active, color_clusters=color_clusters)
    else:
        raise ValueError(
            f"{t.field('kind')}: unknown rule kind {kind!r} (expected stress, gray, app_version, "
            "platform, header, zone or color)"
        )
    return rule
