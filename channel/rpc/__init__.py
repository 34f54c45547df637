"""RPC proxy, device → backend: routes, traffic rules, upstream HTTP pools, breakers.

The gateway builds one ``RpcRouter`` from ``RoutingConfig.from_dict(config["rpc"])``
and calls ``await router.handle(RpcRequest(...))`` for each REQUEST frame.
"""

from channel.rpc.breaker import BreakerState, CircuitBreaker
from channel.rpc.config import (
    BreakerConfig,
    ClusterConfig,
    MirrorConfig,
    RouteConfig,
    RoutingConfig,
)
from channel.rpc.metrics import LATENCY_BUCKETS_MS, Histogram, RpcMetrics
from channel.rpc.model import DeviceContext, RpcRequest, RpcResponse
from channel.rpc.router import RpcRouter
from channel.rpc.rules import gray_bucket, parse_version

__all__ = [
    "LATENCY_BUCKETS_MS",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "ClusterConfig",
    "DeviceContext",
    "Histogram",
    "MirrorConfig",
    "RouteConfig",
    "RoutingConfig",
    "RpcMetrics",
    "RpcRequest",
    "RpcResponse",
    "RpcRouter",
    "gray_bucket",
    "parse_version",
]
