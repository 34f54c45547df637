"""Traffic rules: which upstream cluster a device call goes to.

Rules are pure values evaluated in order against a request; the first rule
that matches names the cluster(s), otherwise the route's own cluster is used.
A rule yields an ordered tuple of candidates: the first is preferred, the
rest are fail-over targets (only the zone rule has more than one).

Everything here is deterministic and process-independent, so every gateway
node in a fleet routes the same device the same way: gray buckets come from
BLAKE2b, never from Python's per-process salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import ClassVar

from channel.rpc.model import RpcRequest

#: Gray percentages have a resolution of 0.01 %.
GRAY_BUCKETS = 10_000

_VERSION_PREFIX = re.compile(r"\d+(?:\.\d+)*")


def gray_bucket(key: str, salt: str) -> int:
    """Stable bucket in ``[0, 10000)`` for ``key`` (a device or user id).

    ``int.from_bytes(blake2b(f"{salt}:{key}", digest_size=8), "big") % 10000``
    — documented so a backend can compute the same bucket.
    """
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % GRAY_BUCKETS


def parse_version(text: str) -> tuple[int, ...] | None:
    """Numeric parts of a dotted version; ``"8.12.0-beta"`` → ``(8, 12)``.

    Anything after the leading dotted digits (pre-release tags, build
    metadata) is ignored and trailing zeros are dropped, so ``8.12`` equals
    ``8.12.0``. Returns None when the text does not start with a digit.
    """
    found = _VERSION_PREFIX.match(text.strip())
    if found is None:
        return None
    parts = [int(p) for p in found.group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class StressRule:
    """Requests carrying ``header`` (as sent by the device) go to a stress cluster.

    With ``value`` set the header must equal it; otherwise any non-empty
    value other than ``0``/``false`` tags the request. With ``scope`` set,
    only devices whose verified scopes include it may be tagged — others
    fall through to the next rule. Stress traffic is never mirrored.
    """

    kind: ClassVar[str] = "stress"
    header: str
    cluster: str
    value: str = ""
    scope: str = ""

    def select(self, request: RpcRequest) -> tuple[str, ...] | None:
        got = request.header(self.header)
        if got is None:
            return None
        if self.value:
            if got != self.value:
                return None
        elif got.strip().lower() in ("", "0", "false"):
            return None
        if self.scope and self.scope not in request.device.scopes:
            return None
        return (self.cluster,)

    def clusters(self) -> tuple[str, ...]:
        return (self.cluster,)

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "header": self.header,
            "value": self.value,
            "scope": self.scope,
            "cluster": self.cluster,
        }


@dataclass(frozen=True)
class GrayRule:
    """A stable ``percent`` of devices (or users) goes to a canary cluster."""

    kind: ClassVar[str] = "gray"
    percent: float
    cluster: str
    salt: str
    #: ``device_id`` or ``user_id``: by user keeps all of a user's devices together.
    key: str = "device_id"

    @property
    def threshold(self) -> int:
        return round(self.percent * GRAY_BUCKETS / 100)

    def select(self, request: RpcRequest) -> tuple[str, ...] | None:
        key = request.device.user_id if self.key == "user_id" else request.device.device_id
        if gray_bucket(key, self.salt) < self.threshold:
            return (self.cluster,)
        return None

    def clusters(self) -> tuple[str, ...]:
        return (self.cluster,)

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "percent": self.percent,
            "key": self.key,
            "salt": self.salt,
            "cluster": self.cluster,
        }


@dataclass(frozen=True)
class AppVersionRule:
    """Devices whose app version is in ``[min, max)`` (either bound optional)."""

    kind: ClassVar[str] = "app_version"
    cluster: str
    min: tuple[int, ...] | None = None
    max: tuple[int, ...] | None = None
    #: Limit to one app id ("" = any app).
    app_id: str = ""

    def select(self, request: RpcRequest) -> tuple[str, ...] | None:
        if self.app_id and request.device.app_id != self.app_id:
            return None
        version = parse_version(request.device.app_version)
        if version is None:
            return None
        if self.min is not None and version < self.min:
            return None
        if self.max is not None and version >= self.max:
            return None
        return (self.cluster,)

    def clusters(self) -> tuple[str, ...]:
        return (self.cluster,)

    def describe(self) -> dict[str, object]:
        def text(v: tuple[int, ...] | None) -> str | None:
            return None if v is None else ".".join(map(str, v))

        return {
            "kind": self.kind,
            "min": text(self.min),
            "max": text(self.max),
            "app_id": self.app_id,
            "cluster": self.cluster,
        }


@dataclass(frozen=True)
class PlatformRule:
    """Devices on one of ``platforms`` (lower-case, compared case-insensitively)."""

    kind: ClassVar[str] = "platform"
    platforms: frozenset[str]
    cluster: str

    def select(self, request: RpcRequest) -> tuple[str, ...] | None:
        if request.device.platform.lower() in self.platforms:
            return (self.cluster,)
        return None

    def clusters(self) -> tuple[str, ...]:
        return (self.cluster,)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "platforms": sorted(self.platforms), "cluster": self.cluster}


@dataclass(frozen=True)
class HeaderRule:
    """Requests whose ``header`` (as sent by the device) has one of ``values``."""

    kind: ClassVar[str] = "header"
    header: str
    values: frozenset[str]
    cluster: str

    def select(self, request: RpcRequest) -> tuple[str, ...] | None:
        got = request.header(self.header)
        if got is not None and got in self.values:
            return (self.cluster,)
        return None

    def clusters(self) -> tuple[str, ...]:
        return (self.cluster,)

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "header": self.header,
            "values": sorted(self.values),
            "cluster": self.cluster,
        }


@dataclass(frozen=True)
class ZoneRule:
    """The device's zone cluster first, then ``failover`` in order.

    A device whose zone is unknown or not listed does not match (the next
    rule or the route's cluster applies). The router skips a candidate whose
    breaker is open or that has no healthy endpoint, and moves on when every
    endpoint of a candidate refused the connection (nothing was sent).
    """

    kind: ClassVar[str] = "zone"
    zone_clusters: tuple[tuple[str, str], ...]
    failover: tuple[str, ...] = ()

    def select(self, request: RpcRequest) -> tuple[str, ...] | None:
        zone = request.device.zone
        if not zone:
            return None
        for name, cluster in self.zone_clusters:
            if name == zone:
                return (cluster, *(c for c in self.failover if c != cluster))
        return None

    def clusters(self) -> tuple[str, ...]:
        return (*(c for _, c in self.zone_clusters), *self.failover)

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "clusters": dict(self.zone_clusters),
            "failover": list(self.failover),
        }


@dataclass(frozen=True)
class ColorRule:
    """Blue/green: every request goes to the ``active`` colour's cluster.

    Switching colour is a config reload; calls in flight finish on the old one.
    """

    kind: ClassVar[str] = "color"
    active: str
    color_clusters: tuple[tuple[str, str], ...]

    @property
    def cluster(self) -> str:
        return dict(self.color_clusters)[self.active]

    def select(self, request: RpcRequest) -> tuple[str, ...] | None:
        return (self.cluster,)

    def clusters(self) -> tuple[str, ...]:
        return tuple(c for _, c in self.color_clusters)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "active": self.active, "clusters": dict(self.color_clusters)}


Rule = StressRule | GrayRule | AppVersionRule | PlatformRule | HeaderRule | ZoneRule | ColorRule


@dataclass(frozen=True)
class Selection:
    """Outcome of rule evaluation for one request."""

    #: Candidate clusters, preferred first.
    clusters: tuple[str, ...]
    #: What picked them: ``"route"`` or ``"<index>:<kind>"`` (for metrics and logs).
    picked_by: str
    #: Stress-tagged traffic: never mirrored, marked for the upstream.
    stress: bool = False


def select(rules: tuple[Rule, ...], default_cluster: str, request: RpcRequest) -> Selection:
    """Evaluate ``rules`` in order; the first match wins, else ``default_cluster``."""
    for index, rule in enumerate(rules):
        clusters = rule.select(request)
        if clusters is not None:
            return Selection(clusters, f"{index}:{rule.kind}", isinstance(rule, StressRule))
    selection = _ROUTE_SELECTIONS.get(default_cluster)
    if selection is None:
        selection = _ROUTE_SELECTIONS[default_cluster] = Selection((default_cluster,), "route")
    return selection


#: Cluster name → the (immutable) selection of a call no rule picked, made once per
#: cluster name of the config (a handful) instead of per call.
_ROUTE_SELECTIONS: dict[str, Selection] = {}
