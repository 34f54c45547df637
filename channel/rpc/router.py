"""The RPC proxy: device REQUEST → traffic rules → upstream HTTP → RESPONSE.

``RpcRouter.handle()`` answers one request. It matches the
op to a route (exact op beats the longest prefix, then ``*``), lets the
route's rules pick candidate clusters, and calls the first usable one with
the route's deadline, retry and breaker policy. It never raises for upstream
trouble: every failure becomes an ``RpcResponse`` carrying an ``ErrorCode``.

The gateway first offers a call to ``start_call()``, the fast path: when the
call can go out at once on a kept-alive connection, it is sent without a task
and answered from the connection's callback; a call that does not end with
that first answer (an error status, a timeout, the keep-alive race) goes on in
a task through the same steps as ``handle()``, resumed where it stood
(``_Resume``). Otherwise ``start_call()`` does nothing and the gateway awaits
``handle()``.

Configuration lives in one immutable ``_State`` swapped by ``reload()`` in a
single assignment; a call reads the state once, so calls in flight finish
on the config they started with. Pools of clusters whose config did not
change (and their breakers and keep-alive connections) carry over; replaced
pools close when their last call ends.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channel.rpc.breaker import BreakerState
from channel.rpc.config import OP_PATTERN, RouteConfig, RoutingConfig
from channel.rpc.devices import Refusal
from channel.rpc.h1pool import FastExchange, H1Response, Origin
from channel.rpc.http1 import USER_AGENT, Limits
from channel.rpc.metrics import RpcMetrics
from channel.rpc.model import RpcRequest, RpcResponse
from channel.rpc.rules import Selection, select
from channel.rpc.upstream import Attempt, ClusterPool, Endpoint, upstream_headers
from channel.wire.errors import ErrorCode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _RouteTable:
    exact: dict[str, RouteConfig]
    prefixes: dict[str, RouteConfig]
    default: RouteConfig | None

    @classmethod
    def build(cls, routes: tuple[RouteConfig, ...]) -> _RouteTable:
        return cls(
            exact={r.match: r for r in routes if not r.is_prefix and not r.is_default},
            prefixes={r.match: r for r in routes if r.is_prefix},
            default=next((r for r in routes if r.is_default), None),
        )

    def match(self, op: str) -> RouteConfig | None:
        """Exact op, else the longest ``prefix.`` of it, else the ``*`` route."""
        route = self.exact.get(op)
        if route is not None:
            return route
        end = len(op)
        while (end := op.rfind(".", 0, end)) >= 0:
            route = self.prefixes.get(op[: end + 1])
            if route is not None:
                return route
        return self.default


@dataclass
class _State:
    config: RoutingConfig
    table: _RouteTable
    pools: dict[str, ClusterPool]
    #: Route match → random source for mirror sampling.
    mirror_rng: random.Random = field(default_factory=random.Random)


class RpcRouter:
    """Routes device RPCs to upstream HTTP clusters; see the module docstring."""

    def __init__(
        self,
        config: RoutingConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: RpcMetrics | None = None,
    ) -> None:
        self.metrics = metrics or RpcMetrics()
        self._clock = clock
        self._state = self._build(config, None)
        self._retired: list[ClusterPool] = []
        self._mirror_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Called when what ``native_table()`` says may have changed (a reload, a
        #: breaker leaving or entering CLOSED, an endpoint marked down).
        self.on_native_change: Callable[[], None] | None = None
        #: Called with a device id when its own breaker on a cluster opened.
        self.on_device_refused: Callable[[str], None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Create the keep-alive HTTP pools (pools made by a later reload start lazily)."""
        for pool in self._state.pools.values():
            await pool.start()

    def reload(self, config: RoutingConfig) -> None:
        """Swap routes and clusters at once; unchanged clusters keep pools and breakers."""
        old = self._state
        new = self._build(config, old)
        self._state = new
        kept = {id(pool) for pool in new.pools.values()}
        self._retired = [p for p in self._retired if not p.closed]
        retired = [pool for pool in old.pools.values() if id(pool) not in kept]
        for pool in retired:
            pool.retire()
            self._retired.append(pool)
        self._native_changed()
        log.info(
            "rpc routing reloaded: %d routes, %d clusters, %d pools retired",
            len(config.routes),
            len(config.clusters),
            len(retired),
        )

    async def drain_mirrors(self) -> None:
        """Wait until every mirror call started so far has finished."""
        while self._mirror_tasks:
            await asyncio.gather(*self._mirror_tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop accepting calls, cancel pending mirrors and close every pool."""
        self._closed = True
        for task in self._mirror_tasks:
            task.cancel()
        await self.drain_mirrors()
        for pool in [*self._state.pools.values(), *self._retired]:
            await pool.close()

    def _build(self, config: RoutingConfig, previous: _State | None) -> _State:
        pools: dict[str, ClusterPool] = {}
        for name, cluster in config.clusters.items():
            max_bytes = config.max_response_bytes_for(name)
            old = previous.pools.get(name) if previous else None
            if (
                old is not None
                and old.config == cluster
                and old.max_response_bytes == max_bytes
                and old.endpoint_down_s == config.endpoint_down_s
            ):
                pools[name] = old
            else:
                pools[name] = ClusterPool(
                    cluster,
                    clock=self._clock,
                    metrics=self.metrics,
                    endpoint_down_s=config.endpoint_down_s,
                    max_response_bytes=max_bytes,
                )
        return _State(config, _RouteTable.build(config.routes), pools)

    # -- calls -----------------------------------------------------------------

    def is_idempotent(self, op: str) -> bool:
        """The op's route marks it idempotent (``idempotent``, ``idempotent_ops``): it
        may run twice, so it may be served from TLS early data and retried."""
        route = self._state.table.match(op)
        return route is not None and route.is_idempotent(op)

    async def handle(self, request: RpcRequest) -> RpcResponse:
        """Answer one device call; upstream trouble comes back as an error status."""
        started = self._clock()
        state = self._state
        route_label, cluster = "", ""
        if self._closed:
            response = RpcResponse.error(ErrorCode.UNAVAILABLE, "gateway is shutting down")
        elif not OP_PATTERN.fullmatch(request.op):
            response = RpcResponse.error(
                ErrorCode.BAD_REQUEST, f"malformed operation type {request.op[:64]!r}"
            )
        elif (route := state.table.match(request.op)) is None:
            response = RpcResponse.error(
                ErrorCode.NOT_FOUND, f"no route for operation {request.op!r}"
            )
        else:
            route_label = route.match
            response, cluster = await self._route(state, route, request)
        return self._answer(started, route_label, cluster, response)

    def _answer(
        self, started: float, route_label: str, cluster: str, response: RpcResponse
    ) -> RpcResponse:
        self.metrics.observe_call(
            route_label, cluster, response.status, (self._clock() - started) * 1000
        )
        return _labelled(route_label, cluster, response)

    def start_call(
        self, request: RpcRequest, on_done: Callable[[RpcResponse], None]
    ) -> FastCall | None:
        """``handle()`` without a task when the call can go out at once: a route without
        a mirror, its first cluster's breakers closed and a kept-alive connection to the
        endpoint ``handle()`` would pick. The answer goes to ``on_done`` (never called
        after ``cancel()``), from the upstream connection's callback when it is a whole
        answer that ends the call; anything else (an error status, a timeout, a broken
        connection, the keep-alive race) goes on in a task exactly as ``handle()``.

        None: nothing was done; ``handle()`` it."""
        started = self._clock()
        state = self._state
        op = request.op
        if self._closed or not OP_PATTERN.fullmatch(op):
            return None
        route = state.table.match(op)
        if route is None or route.mirror is not None:
            return None
        selection = select(route.rules, route.cluster, request)
        try:
            headers = upstream_headers(request, stress=selection.stress)
        except ValueError:
            return None
        pool = state.pools[selection.clusters[0]]
        device = request.device.device_id
        timeout_ms = route.timeout_ms or pool.config.timeout_ms
        if (
            timeout_ms <= 0
            or pool.devices.refusal(device, request.beside) is not None
            or pool.breaker.state is not BreakerState.CLOSED
        ):
            return None
        endpoint = pool.peek()
        if endpoint is None:
            return None
        exchange = pool.fast_exchange(endpoint, op, headers, request.body)
        if exchange is None:
            return None
        # The request goes out first; then what handle() -> _route -> ... -> post() does
        # around writing it (the selection's metric, the holds, the device's count, the
        # pick and the breaker's permit), while the upstream works on it. Every step's
        # outcome is known from the checks above, and nothing else runs in between.
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout_ms / 1000
        attempt_timeout_s = pool.config.attempt_timeout_ms / 1000 or float("inf")
        timeout_s = min(deadline - now, attempt_timeout_s)
        call = FastCall(self, exchange, on_done)
        call.exchange = pool.start_fast(*exchange, timeout_s, call.answered)
        self.metrics.selections[(route.match, selection.picked_by)] += 1
        pools = [state.pools[name] for name in selection.clusters]
        for held in pools:
            held.hold()
        pool.devices.started(device)
        picked = pool.pick()
        allowed = pool.breaker.allow()
        assert picked is endpoint and allowed
        call._resume = _Resume(
            state,
            route,
            selection,
            pools,
            request,
            headers,
            deadline,
            route.is_idempotent(op),
            endpoint,
            timeout_s,
            started,
        )
        return call

    async def resume(self, resume: _Resume) -> RpcResponse:
        """A fast call that did not end with its first answer, on the ordinary path."""
        response, cluster = await self._route(resume.state, resume.route, resume.request, resume)
        return self._answer(resume.started, resume.route.match, cluster, response)

    async def _route(
        self,
        state: _State,
        route: RouteConfig,
        request: RpcRequest,
        resume: _Resume | None = None,
    ) -> tuple[RpcResponse, str]:
        if resume is None:
            selection = select(route.rules, route.cluster, request)
            self.metrics.selections[(route.match, selection.picked_by)] += 1
            try:
                headers = upstream_headers(request, stress=selection.stress)
            except ValueError as exc:
                return RpcResponse.error(ErrorCode.BAD_REQUEST, str(exc)), ""
            pools = [state.pools[name] for name in selection.clusters]
            # Hold every candidate before the first await so a reload cannot close
            # a pool this call may still fail over to.
            for pool in pools:
                pool.hold()
        else:
            selection, headers, pools = resume.selection, resume.headers, resume.pools
        try:
            if resume is None and route.mirror is not None and not selection.stress:
                self._maybe_mirror(state, route, request, headers)
            return await self._call(route, selection, pools, request, headers, resume)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rpc %s: unexpected error", request.op)
            return RpcResponse.error(ErrorCode.INTERNAL_ERROR, "gateway error"), ""
        finally:
            for pool in pools:
                pool.unhold()

    async def _call(
        self,
        route: RouteConfig,
        selection: Selection,
        pools: list[ClusterPool],
        request: RpcRequest,
        headers: list[tuple[str, str]],
        resume: _Resume | None = None,
    ) -> tuple[RpcResponse, str]:
        if resume is None:
            loop = asyncio.get_running_loop()
            timeout_ms = route.timeout_ms or pools[0].config.timeout_ms
            deadline = loop.time() + timeout_ms / 1000
        else:
            deadline = resume.deadline
        idempotent = route.is_idempotent(request.op)
        response: RpcResponse | None = None
        for index, pool in enumerate(pools):
            last = index == len(pools) - 1
            if resume is None and not last and not pool.available(request.device.device_id):
                self.metrics.failovers[(pool.name, pools[index + 1].name)] += 1
                continue
            response, sent = await self._call_cluster(
                pool, route, request, headers, deadline, idempotent, resume
            )
            resume = None
            if sent or last:
                return response, pool.name
            # Nothing reached this cluster, so the next one may take the call.
            self.metrics.failovers[(pool.name, pools[index + 1].name)] += 1
        if response is None:
            response = RpcResponse.error(ErrorCode.UNAVAILABLE, "no upstream cluster")
        return response, pools[-1].name

    async def _call_cluster(
        self,
        pool: ClusterPool,
        route: RouteConfig,
        request: RpcRequest,
        headers: list[tuple[str, str]],
        deadline: float,
        idempotent: bool,
        resume: _Resume | None = None,
    ) -> tuple[RpcResponse, bool]:
        """Try one cluster within ``deadline``; returns the answer and whether anything was sent.

        A device turned away by its own breaker or in-flight cap on the cluster is
        answered at once (nothing sent). Connection failures move on to another
        endpoint for any op (the request never left); 5xx, timeouts and broken
        connections are retried only for idempotent ops, up to the route's (else
        cluster's) retries.
        """
        device = request.device.device_id
        if resume is None:
            refusal = pool.devices.refusal(device, request.beside)
            if refusal is not None:
                self.metrics.device_rejections[pool.name] += 1
                return _device_refused(refusal, request.op), False
            pool.devices.started(device)
        try:
            return await self._try_cluster(
                pool, route, request, headers, deadline, idempotent, resume
            )
        finally:
            pool.devices.finished(device)

    async def _try_cluster(
        self,
        pool: ClusterPool,
        route: RouteConfig,
        request: RpcRequest,
        headers: list[tuple[str, str]],
        deadline: float,
        idempotent: bool,
        resume: _Resume | None = None,
    ) -> tuple[RpcResponse, bool]:
        loop = asyncio.get_running_loop()
        retries_left = 0
        if idempotent:
            retries_left = route.retries if route.retries is not None else pool.config.retries
        connect_tries_left = len(pool.endpoints)
        attempt_timeout_s = pool.config.attempt_timeout_ms / 1000 or float("inf")
        tried: list[Endpoint] = []
        response: RpcResponse | None = None
        sent = False
        while True:
            if resume is not None:
                # The fast path's try: endpoint picked, breaker asked, request sent.
                tried.append(resume.endpoint)
                pending, timeout_s, resume = resume.pending, resume.timeout_s, None
                try:
                    attempt = (
                        pending
                        if isinstance(pending, Attempt)
                        else await pool.post(
                            tried[-1],
                            request.op,
                            headers,
                            request.body,
                            timeout_s,
                            idempotent=idempotent,
                            pending=pending,
                        )
                    )
                except BaseException:
                    pool.breaker.release()
                    raise
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return response or RpcResponse.error(
                        ErrorCode.TIMEOUT, f"no answer for {request.op!r} in time"
                    ), sent
                endpoint = pool.pick(tried)
                if endpoint is None:
                    return response or RpcResponse.error(
                        ErrorCode.UNAVAILABLE,
                        f"no healthy upstream for {request.op!r}",
                        retry_after_ms=round(pool.next_endpoint_in_s() * 1000),
                    ), sent
                if not pool.breaker.allow():
                    self.metrics.breaker_rejections[pool.name] += 1
                    return response or RpcResponse.error(
                        ErrorCode.UNAVAILABLE,
                        f"service for {request.op!r} is failing; circuit open",
                        retry_after_ms=max(1, round(pool.breaker.retry_after_s() * 1000)),
                    ), sent
                if tried:
                    self.metrics.retries[pool.name] += 1
                tried.append(endpoint)
                try:
                    attempt = await pool.post(
                        endpoint,
                        request.op,
                        headers,
                        request.body,
                        min(remaining, attempt_timeout_s),
                        idempotent=idempotent,
                    )
                except BaseException:
                    pool.breaker.release()
                    raise
            self._record(pool, attempt.failure, attempt.outcome, request.device.device_id)
            response, sent = attempt.response, sent or attempt.sent
            if not attempt.failure:
                return response, sent
            if not attempt.sent:
                connect_tries_left -= 1
                if connect_tries_left > 0:
                    continue
                return response, sent
            if retries_left <= 0:
                return response, sent
            retries_left -= 1

    def _record(self, pool: ClusterPool, failure: bool, outcome: str, device: str) -> None:
        closed = pool.breaker.state is BreakerState.CLOSED
        self._account(pool, failure, outcome, device)
        if (
            outcome == "connect_error" or (pool.breaker.state is BreakerState.CLOSED) != closed
        ) and self.on_native_change is not None:
            self.on_native_change()

    def _account(self, pool: ClusterPool, failure: bool, outcome: str, device: str) -> None:
        if failure:
            # A refused connection says nothing about the caller: it counts as its own
            # source, so the cluster's breaker opens on it whoever called.
            source = None if outcome == "connect_error" else device
            if pool.breaker.record_failure(source):
                self.metrics.breaker_opens[pool.name] += 1
                log.warning(
                    "rpc cluster %s: circuit opened for %.1fs", pool.name, pool.breaker.open_s
                )
            if pool.devices.record_failure(device):
                self.metrics.device_breaker_opens[pool.name] += 1
                if self.on_device_refused is not None:
                    self.on_device_refused(device)
        elif outcome == "closed":
            pool.breaker.release()
        else:
            pool.breaker.record_success()

    # -- the native engine's path -----------------------------------------------

    def _native_changed(self) -> None:
        if self.on_native_change is not None:
            self.on_native_change()

    @property
    def native(self) -> bool:
        """``[rpc] native``: the native engine may serve plain calls itself."""
        return self._state.config.native

    def native_table(self, max_pending_requests: int) -> tuple[list[Any], list[Any], str]:
        """What the native engine may serve itself (its ``RPC_TABLE``): every route's
        match and idempotency (early data is checked by it), and for a route without
        rules and mirror whose cluster's endpoints are ``http://`` IP addresses and whose
        breaker is closed, that cluster and the call's timeout. Anything else stays here.
        Each cluster carries the calls a connection may have in flight for the engine
        to send one itself: ``max_pending_requests``, or the cluster's
        ``device_max_in_flight`` if lower.
        """
        state = self._state
        now = self._clock()
        index: dict[str, int] = {}
        clusters: list[Any] = []
        limits = Limits()
        for name, pool in state.pools.items():
            endpoints = _native_endpoints(pool, now)
            if endpoints is None or pool.breaker.state is not BreakerState.CLOSED:
                continue
            index[name] = len(clusters)
            cfg = pool.config
            max_calls = max_pending_requests
            if pool.devices.max_in_flight:
                max_calls = min(max_calls, pool.devices.max_in_flight)
            clusters.append(
                (
                    name,
                    endpoints,
                    cfg.max_connections,
                    round(cfg.keepalive_s * 1000),
                    limits.max_head_bytes,
                    limits.max_headers,
                    pool.max_response_bytes,
                    max_calls,
                )
            )
        routes: list[Any] = []
        for route in state.config.routes:
            native = None
            if (
                state.config.native
                and not route.rules
                and route.mirror is None
                and route.cluster in index
            ):
                cfg = state.pools[route.cluster].config
                timeout_ms = route.timeout_ms or cfg.timeout_ms
                if cfg.attempt_timeout_ms:
                    timeout_ms = min(timeout_ms, cfg.attempt_timeout_ms)
                native = (index[route.cluster], timeout_ms)
            routes.append((route.match, route.idempotent, sorted(route.idempotent_ops), native))
        return routes, clusters, USER_AGENT

    def native_done(self, route_label: str, cluster: str, took_ms: float, device: str) -> bool:
        """A call the native engine answered (a 2xx): what ``start_call`` and its answer
        would have counted. False if the cluster is gone (a reload since)."""
        pool = self._state.pools.get(cluster)
        metrics = self.metrics
        metrics.selections[(route_label, "route")] += 1
        metrics.attempts[(cluster, "http_2xx")] += 1
        if pool is not None:
            pool.breaker.allow()
            self._record(pool, False, "http_2xx", device)
        metrics.observe_call(route_label, cluster, 0, took_ms)
        return pool is not None

    async def adopted(self, call: AdoptedCall) -> RpcResponse:
        """A call the native engine sent and handed back (its answer was not a simple
        2xx, or slow): on from where FastCall's fallback would be, with its socket."""
        request = call.request
        state = self._state
        route = state.table.match(request.op)
        pool = state.pools.get(call.cluster)
        if route is None or pool is None or call.endpoint >= len(pool.endpoints):
            call.sock.close()
            response = RpcResponse.error(
                ErrorCode.UPSTREAM_ERROR, f"upstream for {request.op!r} broke off"
            )
            return self._answer(call.started, route.match if route else "", "", response)
        selection = select(route.rules, route.cluster, request)
        headers = upstream_headers(request, stress=selection.stress)
        self.metrics.selections[(route.match, selection.picked_by)] += 1
        pools = [state.pools[name] for name in selection.clusters]
        for held in pools:
            held.hold()
        pool.devices.started(request.device.device_id)
        endpoint = pool.endpoints[call.endpoint]
        pool.breaker.allow()
        loop = asyncio.get_running_loop()
        begun = loop.time() - (self._clock() - call.started)
        timeout_ms = route.timeout_ms or pool.config.timeout_ms
        deadline = begun + timeout_ms / 1000
        attempt_timeout_s = pool.config.attempt_timeout_ms / 1000 or float("inf")
        timeout_s = min(timeout_ms / 1000, attempt_timeout_s)
        idempotent = route.is_idempotent(request.op)
        pending = functools.partial(
            pool.adopt_exchange,
            endpoint,
            request.op,
            headers,
            request.body,
            call.sock,
            call.received,
            call.unsent,
            call.reused,
            begun + timeout_s,
            idempotent,
        )
        resume = _Resume(
            state,
            route,
            selection,
            pools,
            request,
            headers,
            deadline,
            idempotent,
            endpoint,
            timeout_s,
            call.started,
            pending,
        )
        return await self.resume(resume)

    # -- mirroring -------------------------------------------------------------

    def _maybe_mirror(
        self,
        state: _State,
        route: RouteConfig,
        request: RpcRequest,
        headers: list[tuple[str, str]],
    ) -> None:
        mirror = route.mirror
        assert mirror is not None
        if state.mirror_rng.random() * 100 >= mirror.percent:
            return
        pool = state.pools[mirror.cluster]
        if len(self._mirror_tasks) >= state.config.mirror_max_in_flight or not pool.available():
            self.metrics.mirror_dropped[pool.name] += 1
            return
        pool.hold()
        task = asyncio.get_running_loop().create_task(
            self._mirror(pool, request, [*headers, ("x-channel-mirror", "1")])
        )
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    async def _mirror(
        self, pool: ClusterPool, request: RpcRequest, headers: list[tuple[str, str]]
    ) -> None:
        """Fire-and-forget copy to a shadow cluster: one try, answer discarded."""
        try:
            endpoint = pool.pick()
            device = request.device.device_id
            if (
                endpoint is None
                or pool.devices.refusal(device) is not None
                or not pool.breaker.allow()
            ):
                self.metrics.mirror_dropped[pool.name] += 1
                return
            timeout_s = (pool.config.attempt_timeout_ms or pool.config.timeout_ms) / 1000
            try:
                # A shadow copy is never sent twice: one try, not even the keep-alive replay.
                attempt = await pool.post(
                    endpoint, request.op, headers, request.body, timeout_s, idempotent=False
                )
            except BaseException:
                pool.breaker.release()
                raise
            self._record(pool, attempt.failure, attempt.outcome, device)
            self.metrics.mirror_sent[pool.name] += 1
            if not attempt.response.ok:
                self.metrics.mirror_failed[pool.name] += 1
        except Exception:
            self.metrics.mirror_failed[pool.name] += 1
            log.debug("rpc mirror to %s failed", pool.name, exc_info=True)
        finally:
            pool.unhold()

    # -- introspection ---------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """Routes, clusters (endpoints, breaker state, in-flight) and metrics, JSON-friendly."""
        state = self._state
        return {
            "routes": [
                {
                    "match": r.match,
                    "cluster": r.cluster,
                    "idempotent": r.idempotent,
                    "idempotent_ops": sorted(r.idempotent_ops),
                    "timeout_ms": r.timeout_ms,
                    "retries": r.retries,
                    "mirror": None
                    if r.mirror is None
                    else {"cluster": r.mirror.cluster, "percent": r.mirror.percent},
                    "rules": [rule.describe() for rule in r.rules],
                }
                for r in state.config.routes
            ],
            "clusters": {name: pool.describe() for name, pool in state.pools.items()},
            "retiring_pools": [p.name for p in self._retired if not p.closed],
            "mirrors_in_flight": len(self._mirror_tasks),
            "metrics": self.metrics.snapshot(),
        }


def _native_endpoints(pool: ClusterPool, now: float) -> list[Any] | None:
    """The cluster's endpoints as the engine takes them, or None if one is not an
    ``http://`` IP address (the engine neither resolves names nor speaks TLS)."""
    out: list[Any] = []
    for endpoint in pool.endpoints:
        try:
            origin = Origin.parse(endpoint.url)
            ipaddress.ip_address(origin.host)
        except ValueError:
            return None
        if origin.tls:
            return None
        down_ms = max(0, round((endpoint.down_until - now) * 1000))
        out.append((origin.host, origin.port, origin.authority, origin.prefix, down_ms))
    return out


@dataclass(eq=False, slots=True)
class AdoptedCall:
    """A call the native engine sent and handed back with its upstream connection."""

    request: RpcRequest
    cluster: str
    #: Index in the cluster's endpoints.
    endpoint: int
    sock: socket.socket
    #: The answer's bytes the engine read, and the request's it could not write yet.
    received: bytes
    unsent: bytes
    #: The connection had carried a request before (the keep-alive race applies).
    reused: bool
    #: When the call started, on the router's clock.
    started: float


def _device_refused(refusal: Refusal, op: str) -> RpcResponse:
    retry_after_ms = max(1, round(refusal.retry_after_s * 1000))
    if refusal.reason == "busy":
        return RpcResponse.error(
            ErrorCode.RATE_LIMITED,
            f"too many calls in flight from this device to the service for {op!r}",
            retry_after_ms=retry_after_ms,
        )
    return RpcResponse.error(
        ErrorCode.UNAVAILABLE,
        f"calls from this device to the service for {op!r} keep failing; retry later",
        retry_after_ms=retry_after_ms,
    )


@dataclass(eq=False, slots=True)
class _Resume:
    """Where a fast call stands: what ``handle()`` had decided when its request went out."""

    state: _State
    route: RouteConfig
    selection: Selection
    pools: list[ClusterPool]
    request: RpcRequest
    headers: list[tuple[str, str]]
    deadline: float
    idempotent: bool
    endpoint: Endpoint
    timeout_s: float
    started: float
    #: The first try's outcome, set when the call goes on in a task: classified, or
    #: what ``ClusterPool.post()`` is to await for it.
    pending: Attempt | Callable[[], Awaitable[H1Response]] | None = None


def _labelled(route_label: str, cluster: str, response: RpcResponse) -> RpcResponse:
    # Built directly: dataclasses.replace costs several times as much, once per call.
    return RpcResponse(
        response.status,
        response.headers,
        response.body,
        response.retry_after_ms,
        response.message,
        route_label,
        cluster,
    )


class FastCall:
    """One call on ``RpcRouter.start()``'s fast path; ``cancel()`` as for a task."""

    __slots__ = (
        "_attempt_deadline",
        "_done",
        "_on_done",
        "_resume",
        "_router",
        "_sent",
        "_task",
        "exchange",
    )

    #: Set by ``start_call`` right after the request went out (before any answer).
    _resume: _Resume

    def __init__(
        self,
        router: RpcRouter,
        sent: tuple[Origin, bytes],
        on_done: Callable[[RpcResponse], None],
    ) -> None:
        self._router = router
        self._sent = sent
        self._on_done = on_done
        self._done = False
        self._task: asyncio.Task[None] | None = None
        self._attempt_deadline = 0.0
        self.exchange: FastExchange | None = None

    def answered(self, result: H1Response | BaseException) -> None:
        """The upstream exchange ended (a failed connection is closed already; a good
        one goes back to the pool once this returns)."""
        if self._done:
            return
        exchange, self.exchange = self.exchange, None
        assert exchange is not None
        self._attempt_deadline = exchange.deadline
        resume = self._resume
        try:
            self._settle(result)
        except Exception:
            log.exception("rpc %s: unexpected error", resume.request.op)
            if self._done:
                return  # answered already: only the bookkeeping after the answer failed
            # As _route does for a bug: the call ends as a gateway error.
            resume.pools[0].breaker.release()
            self._release()
            self._deliver(
                self._router._answer(
                    resume.started,
                    resume.route.match,
                    "",
                    RpcResponse.error(ErrorCode.INTERNAL_ERROR, "gateway error"),
                )
            )

    def _settle(self, result: H1Response | BaseException) -> None:
        resume = self._resume
        pool = resume.pools[0]
        if isinstance(result, BaseException):
            origin, payload = self._sent
            self._go_on_with(
                functools.partial(
                    pool.fast_failure,
                    result,
                    origin,
                    payload,
                    self._attempt_deadline,
                    resume.idempotent,
                )
            )
            return
        # The common end: what _try_cluster, _call_cluster, _call, _route and handle do
        # after a try that is not a failure, but the answer goes first: on its way to
        # the device while the breaker, holds and metrics are updated (in this same
        # callback: no other call runs in between).
        router = self._router
        route_label = resume.route.match
        final = pool.fast_answer(result, route_label)
        outcome = "http_2xx"
        if final is None:
            attempt = pool.fast_attempt(result, resume.request.op, resume.endpoint)
            if attempt.failure:
                self._go_on_with(attempt)
                return
            final = _labelled(route_label, pool.name, attempt.response)
            outcome = attempt.outcome
        took_ms = (router._clock() - resume.started) * 1000
        self._deliver(final)
        router._record(pool, False, outcome, resume.request.device.device_id)
        self._release()
        router.metrics.observe_call(route_label, pool.name, final.status, took_ms)

    def _go_on_with(self, pending: Attempt | Callable[[], Awaitable[H1Response]]) -> None:
        """The first try did not end the call: on the ordinary path, in a task."""
        self._resume.pending = pending
        self._task = asyncio.get_running_loop().create_task(self._go_on())

    async def _go_on(self) -> None:
        try:
            response = await self._router.resume(self._resume)
        except Exception:
            log.exception("rpc handler failed")
            response = RpcResponse.error(ErrorCode.INTERNAL_ERROR, "gateway error")
        self._deliver(response)

    def _release(self) -> None:
        resume = self._resume
        resume.pools[0].devices.finished(resume.request.device.device_id)
        for pool in resume.pools:
            pool.unhold()

    def _deliver(self, response: RpcResponse) -> None:
        self._done = True
        try:
            self._on_done(response)
        except Exception:
            # Called from the upstream connection's callback: never let it break that.
            log.exception("rpc %s: answering failed", self._resume.request.op)

    def cancel(self) -> None:
        """The device gave up: as a task's cancellation would, the connection closes and
        the breaker's and the pools' holds are given back. ``on_done`` is not called."""
        if self._done:
            return
        self._done = True
        if self._task is not None:
            self._task.cancel()
            return
        if self.exchange is not None:
            self.exchange.cancel()
        self._resume.pools[0].breaker.release()
        self._release()
