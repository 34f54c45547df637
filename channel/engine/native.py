"""The native engine's Python face: ``channel._engine`` under the gateway's policy.

The Rust engine (``native/engine``) owns sockets, TLS, MMTP framing and
state, deadlines, fan-out and ACK parsing on its own thread. This module turns
its event batches into calls on the MMTP policy (``MmtpService``,
``MmtpSession``) and the session registry, and the commands those make into
one ``submit`` per event-loop turn: one wake-up (an eventfd the loop watches)
delivers every event the engine gathered, and whatever a turn decided goes
down in one call. The boundary is ``native/engine/BOUNDARY.md``.

Per authenticated device Python keeps one small ``NativeMmtpSession`` (its
connection id and identity); connections that have not sent a HELLO, and
everything per frame, stay in Rust.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from channel.compression.sampler import MIN_SAMPLE_BYTES
from channel.logs import fields
from channel.mmtp.service import preset_for_engine
from channel.mmtp.session import MmtpSession
from channel.ratelimit import TokenBucket
from channel.rpc.model import RpcRequest, RpcResponse
from channel.rpc.router import AdoptedCall
from channel.rpc.upstream import identity_headers
from channel.security.auth import AuthFailure, AuthResult
from channel.security.tls import TlsReloadError
from channel.sessions import FanoutPush, Headers, Session, jittered
from channel.wire import Dictionary, ErrorCode, Hello
from channel.wire.presets import Preset

if TYPE_CHECKING:
    from channel._engine import Engine
    from channel.mmtp.service import MmtpService
    from channel.rpc.router import RpcRouter
    from channel.security.tls import TlsFiles
    from channel.security.tlstickets import TlsTicketStore

log = logging.getLogger("channel.engine")

#: PUSH_FAILED reasons that say nothing about the message (the connection is gone, or
#: too many pushes await their ACK): it stays queued for the device's next connection.
_TRANSIENT_PUSH_FAILURES = ("closed",)
_TOO_MANY_UNACKED = "await their ACK on this connection"


def _one_cpu_affinity() -> bool:
    """The calling thread may run on one CPU only (False where the OS does not tell)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return getaffinity is not None and len(getaffinity(0)) == 1


class MqttHandler(Protocol):
    """One MQTT connection's protocol object, fed whole packets by the native engine."""

    def packets_received(self, packets: list[bytes]) -> None: ...

    def pubacks_received(
        self, packet_ids: list[int], sessions: list[Session | None], message_ids: list[str]
    ) -> None: ...

    def push_refused(self, message_id: str, reason: str) -> None: ...

    def refused_by_box(self, message_id: str, tracked: bool, reason: int) -> None: ...

    def connection_lost(self) -> None: ...


class MqttFront(Protocol):
    """Where MQTT connections go (``channel/mqtt``): one handler per connection."""

    def opened(self, transport: NativeMqttTransport) -> MqttHandler: ...


class NativeEngine:
    """See the module docstring."""

    name = "native"

    def __init__(self, service: MmtpService, engine_factory: Callable[..., Engine]) -> None:
        self.service = service
        self.config = service.config
        self._factory = engine_factory
        self._engine: Engine | None = None
        self._sessions: dict[int, NativeMmtpSession] = {}
        self._mqtt: dict[int, MqttHandler] = {}
        self.mqtt_front: MqttFront | None = None
        self._commands: list[tuple[Any, ...]] = []
        self._flush_scheduled = False
        self._flushed_early = False
        self._dispatching = False
        #: This thread is confined to one CPU (``_one_cpu``), and when that was read.
        self._pinned = False
        self._affinity_read_at = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_token = 0
        self.draining = False
        self._all_gone: asyncio.Event | None = None
        #: FANOUT commands the engine finished: (deliveries written, connections skipped).
        self.fanout_written = 0
        self.fanout_skipped = 0
        #: HELLOs refused because the node is draining (channel_refused_connections).
        self.refused_draining = 0
        #: Single-use TLS tickets ([tls] early_data_max_bytes > 0; set by the node).
        self.tls_tickets: TlsTicketStore | None = None
        self._issued: list[tuple[bytes, bytes]] = []
        self._ticket_tasks: set[asyncio.Task[None]] = set()
        #: Ticket look-ups that failed or timed out (their devices did a full handshake).
        self.ticket_store_errors = 0
        #: The RPC router whose plain calls the engine may serve itself (rpc.rs).
        self.router: RpcRouter | None = None

    # ------------------------------------------------------- native RPC path

    def attach_router(self, router: RpcRouter) -> None:
        """Let the engine serve the router's plain calls itself (``[rpc] native``): it
        gets the router's ``native_table()`` now and whenever that may change."""
        self.router = router
        router.on_native_change = self._table_changed
        router.on_device_refused = self._device_refused

    def _table_changed(self) -> None:
        # Down at once, with what is queued before it: a request the engine reads after
        # a reload (or a breaker's change) returned is decided on the new table.
        if self._loop is not None:
            self._send_table()
            self.flush_commands()

    def _send_table(self) -> None:
        if self.router is not None:
            limits = self.config.limits
            table = self.router.native_table(limits.max_pending_requests)
            self.command(("RPC_TABLE", table))

    def _device_refused(self, device_id: str) -> None:
        """A device's own breaker opened on a cluster: its calls are Python's from now on
        (the engine does not know that breaker), for as long as its sessions last."""
        for session in self._sessions.values():
            if session.auth is not None and session.auth.device.device_id == device_id:
                session.native_rpc = False
                self.command(("RPC_SESSION", session.conn, None))

    def rpc_session(self, session: NativeMmtpSession, tokens: float) -> bool:
        """Hand the engine a device's native calls (``RPC_SESSION``) at its first call
        (an idle device costs the engine nothing): its identity headers, its rate limit
        going on from ``tokens``, whether its bodies are sampled. False if its calls stay
        Python's (native off, an identity Python refuses)."""
        router = self.router
        if router is None or not router.native or session.auth is None:
            return False
        device = session.auth.device
        try:
            identity = identity_headers(device)
        except ValueError:
            return False  # Python answers its calls BAD_REQUEST, as ever
        limits = self.config.limits
        sampler = self.service.compression.sampler
        sample = None
        if device.app_id in sampler.apps:
            # The sampler's draw, made by the engine: only the bodies it picks cross.
            sample = (sampler.fraction, MIN_SAMPLE_BYTES, sampler.max_body_bytes)
        rate, burst = limits.requests_per_second, float(limits.request_burst)
        self.command(("RPC_SESSION", session.conn, (identity, rate, burst, tokens, sample)))
        return True

    def _rpc_handoff(self, event: tuple[Any, ...]) -> None:
        (_, conn, stream_id, op, headers, body, early, _route, cluster, endpoint, fd,
         received, unsent, reused, elapsed_us) = event  # fmt: skip
        sock = socket.socket(fileno=fd)
        session = self._sessions.get(conn)
        if session is None or session.auth is None or self.router is None:
            sock.close()
            return
        request = RpcRequest(op, headers, body, session.auth.device)
        started = time.monotonic() - elapsed_us / 1e6
        call = AdoptedCall(request, cluster, endpoint, sock, received, unsent, reused, started)
        session.on_handoff(stream_id, call, early)

    def _rpc_done(self, event: tuple[Any, ...]) -> None:
        router, service = self.router, self.service
        if router is None:
            return
        calls = event[1]
        get = self._sessions.get
        for conn, route, cluster, took_us, early, request_body, response_body in calls:
            session = get(conn)
            auth = session.auth if session is not None else None
            router.native_done(
                route, cluster, took_us / 1000, auth.device.device_id if auth else ""
            )
            service.observe_answered(route, cluster, 0, took_us / 1e6)
            if early:
                service.metrics.early_data_requests.labels("served").inc()
            if auth is not None:
                device = auth.device
                compression = service.compression
                if request_body is not None:
                    compression.sample(device.app_id, device.device_id, request_body, drawn=True)
                if response_body is not None:
                    compression.sample(device.app_id, device.device_id, response_body, drawn=True)
        service.metrics.rpc_native_calls.inc(len(calls))

    # ---------------------------------------------------------------- start

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the native engine is not started"
        return self._engine

    def build(self, tls: TlsFiles, tls_ticket_keys: tuple[int, list[tuple[int, bytes]]]) -> None:
        """Make the Rust engine (its thread starts here) from the node's configuration."""
        config = self.config
        server, limits, native = config.server, config.limits, config.native
        current_key, keys = tls_ticket_keys
        settings: dict[str, Any] = {
            "max_connections": server.max_connections,
            "max_connections_per_ip": server.max_connections_per_ip,
            "handshake_timeout_ms": round(server.handshake_timeout_s * 1000),
            "idle_factor": config.heartbeat.idle_factor,
            "send_buffer_high_water_bytes": limits.send_buffer_high_water_bytes,
            "slow_consumer_grace_ms": round(limits.slow_consumer_grace_s * 1000),
            "max_frame_size": limits.max_frame_size,
            "header_table_size": limits.header_table_size,
            "max_header_list_size": limits.max_header_list_size,
            "max_body_size": limits.max_body_size,
            "max_concurrent_streams": limits.max_concurrent_streams,
            "max_hello_size": limits.max_hello_size,
            # The MQTT front's packet limit, enforced from the fixed header before buffering.
            "mqtt_max_packet_size": config.mqtt.max_packet_size_bytes,
            "tls_cert_pem": tls.cert.read_bytes(),
            "tls_key_pem": tls.key.read_bytes(),
            "ticket_key_id": current_key,
            "ticket_keys": keys,
            "dict_chunk_bytes": config.compression.dict_chunk_bytes,
            "dict_delivery_bytes_per_s": config.compression.dict_delivery_bytes_per_s,
            "dict_budget_bytes": config.compression.dict_budget_bytes,
            "compress_min_saving": config.compression.compress_min_saving,
            "usage_apps": self.service.compression.usage_apps(),
            "early_data_max_bytes": config.tls.early_data_max_bytes,
            **dataclasses.asdict(native),
        }
        if server.proxy_protocol:
            # Devices come through balancers: the MMTP listener reads their PROXY header.
            settings["proxy_trusted"] = list(server.proxy_trusted)
            settings["proxy_max_header_bytes"] = server.proxy_max_header_bytes
        if tls.client_ca is not None:
            settings["tls_client_ca_pem"] = tls.client_ca.read_bytes()
            settings["tls_require_client_cert"] = tls.require_client_cert
        presets = self.service.presets_for_engine()
        if presets:
            settings["presets"] = presets
        dictionaries = self.service.dictionaries_for_engine()
        if dictionaries:
            settings["dictionaries"] = dictionaries
        self._engine = self._factory(settings)

    async def start(
        self, tls: TlsFiles, tls_ticket_keys: tuple[int, list[tuple[int, bytes]]]
    ) -> int:
        """Listen for devices; returns the MMTP port."""
        self.build(tls, tls_ticket_keys)
        server = self.config.server
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self.engine.event_fd(), self._on_events)
        if self.router is not None:
            self._send_table()
        return self.listen("mmtp", server.host, server.port, tls=True, proxy=server.proxy_protocol)

    def listen(self, kind: str, host: str, port: int, *, tls: bool, proxy: bool = False) -> int:
        """Another listener on this engine (the MQTT front's); returns the real port.
        ``proxy``: its peers are balancers sending a PROXY header first (only those in
        ``[server] proxy_trusted`` may connect)."""
        server = self.config.server
        reuse_port = server.reuse_port or server.workers > 1
        return self.engine.listen(
            kind,  # type: ignore[arg-type]
            host,
            port,
            tls=tls,
            reuse_port=reuse_port,
            backlog=4096,
            fast_open_queue=max(0, server.tcp_fastopen_queue),
            proxy=proxy,
        )

    def reload_tls(self, tls: TlsFiles) -> None:
        """New certificate (and client CA) for new connections; open ones keep theirs,
        and TLS session tickets stay valid (their keys are the fleet's, not the
        certificate's). Files that do not load raise ``TlsReloadError`` and change nothing.
        """
        cert, key, client_ca = tls.read()
        try:
            self.engine.reload_tls(cert, key, client_ca, tls.require_client_cert)
        except ValueError as exc:
            raise TlsReloadError(f"{exc} ({tls.cert}, {tls.key})") from exc

    # ------------------------------------------------------------- commands

    def command(self, command: tuple[Any, ...]) -> None:
        """Queue a command for this turn's ``submit``."""
        self._commands.append(command)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._turn_end)

    def _turn_end(self) -> None:
        self._flush_scheduled = False
        self._flushed_early = False
        self.flush_commands()

    def flush_commands(self) -> None:
        commands, self._commands = self._commands, []
        if commands and self._engine is not None:
            self._engine.submit(commands)

    def flush_early(self) -> None:
        """Submit now what is queued (an RPC answer), not at the end of the loop turn:
        the answer leaves while Python finishes its bookkeeping, a loop turn sooner.
        Once per turn, and never while an event batch is being handled (its end
        submits): what follows in the same turn still goes down in one batch. A flush
        with nothing queued does not count (it would hold back the turn's answer)."""
        if self._flushed_early or self._dispatching or not self._commands:
            return
        self._flushed_early = True
        self.flush_commands()
        if self._one_cpu():
            # The engine thread was just woken to write the answer, but confined to this
            # thread's one CPU it runs only once this thread stops: after the turn's
            # bookkeeping (metrics, sampling, the pool), tens of µs later. Step aside now.
            os.sched_yield()

    def _one_cpu(self) -> bool:
        """This thread may run on one CPU only (a pinned worker), re-read once a second."""
        now = time.monotonic()
        if now >= self._affinity_read_at + 1.0:
            self._affinity_read_at = now
            self._pinned = _one_cpu_affinity()
        return self._pinned

    def next_call_token(self) -> int:
        self._next_token += 1
        return self._next_token

    # --------------------------------------------------------------- events

    def _on_events(self) -> None:
        engine = self._engine
        if engine is None:
            return
        self._dispatching = True
        try:
            for event in engine.take_events():
                handler = self._handlers.get(event[0])
                if handler is not None:
                    handler(self, event)
        except Exception:
            log.exception("native engine event failed")
        finally:
            self._dispatching = False
        if self._issued:
            issued, self._issued = self._issued, []
            self._spawn(self._store_tickets(issued))
        self.flush_commands()

    def _hello(self, event: tuple[Any, ...]) -> None:
        _, conn, peer_ip, fields_, cert_cn, fast_open = event
        service = self.service
        if self.draining:
            self.metric_refused(ErrorCode.SHUTTING_DOWN)
            self.command(
                (
                    "REJECT",
                    conn,
                    ErrorCode.SHUTTING_DOWN,
                    "node is draining; reconnect elsewhere",
                    service.retry_hint_ms(),
                )
            )
            return
        hello = Hello(**fields_)
        try:
            result = service.authenticate(hello, cert_cn, peer_ip)
        except AuthFailure as failure:
            self.command(("REJECT", conn, failure.code, failure.message, 0))
            return
        compression = service.compression
        self.command(
            (
                "ACCEPT",
                conn,
                result.session_id,
                result.resume_ticket,
                service.heartbeat_for(hello.heartbeat_s),
                int(time.time() * 1000),
                result.resumed,
                compression.current_dictionary(hello.app_id),
            )
        )
        # The ticket went out in HELLO_ACK; no secret outlives its use.
        kept = AuthResult(
            result.device, result.session_id, result.resumed, b"", result.auth_expires_at
        )
        session = NativeMmtpSession(self, conn, kept)
        self._sessions[conn] = session
        service.authenticated(result.resumed, fast_open)
        service.registry.add(session)
        dictionary = compression.dictionary_to_deliver(hello)
        if dictionary is not None:
            self.command(("DICT", [conn], dictionary.dict_id))
            compression.delivering(hello.app_id, dictionary.dict_id, 1)

    # ------------------------------------------------------- dictionaries

    def dictionary_published(self, app_id: str, dictionary: Dictionary) -> None:
        """A new current dictionary of ``app_id``: the engine holds it, then delivers it to
        the app's connected devices (paced in Rust), without a reconnect."""
        self.command(("SET_USAGE_APPS", self.service.compression.usage_apps()))
        self.command(("ADD_DICTIONARY", dictionary.to_file_bytes()))
        conns = [
            s.conn
            for s in self._sessions.values()
            if s.auth is not None and s.auth.device.app_id == app_id and not s.closed
        ]
        if conns:
            self.command(("DICT", conns, dictionary.dict_id))
            self.service.compression.delivering(app_id, dictionary.dict_id, len(conns))

    def preset_published(self, preset: Preset) -> None:
        self.command(("ADD_PRESET", *preset_for_engine(preset)))

    def usage(self) -> dict[str, list[tuple[int, ...]]]:
        """Bodies by app and dictionary id, as the engine counted them."""
        if self._engine is None:
            return {}
        return {app: list(rows) for app, rows in self._engine.usage().items()}

    def _request(self, event: tuple[Any, ...]) -> None:
        _, conn, stream_id, op, headers, body, early, gate, busy = event
        session = self._sessions.get(conn)
        if session is not None:
            session.on_request(stream_id, op, headers, body, early, gate, busy)

    # ------------------------------------------------- single-use TLS tickets

    def _tls_ticket(self, event: tuple[Any, ...]) -> None:
        self._issued.append((event[1], event[2]))  # stored once the batch is read

    def _tls_resume(self, event: tuple[Any, ...]) -> None:
        _, conn, ticket_id = event
        self._spawn(self._redeem(conn, ticket_id))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._ticket_tasks.add(task)
        task.add_done_callback(self._ticket_tasks.discard)

    async def _store_tickets(self, issued: list[tuple[bytes, bytes]]) -> None:
        if self.tls_tickets is None:
            return
        try:
            await self.tls_tickets.put_many(issued, self.config.native.ticket_lifetime_s)
        except Exception as exc:
            # Their devices will do a full handshake next time: worth a line, no more.
            self.ticket_store_errors += 1
            log.warning("tls tickets not stored", extra=fields(count=len(issued), error=str(exc)))

    async def _redeem(self, conn: int, ticket_id: bytes) -> None:
        """Take the ticket a device presents (once, fleet-wide) and let its handshake go
        on: resumed (with its early data) if found, else full."""
        state: bytes | None = None
        store = self.tls_tickets
        if store is not None:
            timeout_s = self.config.tls.ticket_store_timeout_ms / 1000
            try:
                state = await asyncio.wait_for(store.take(ticket_id), timeout_s)
            except Exception as exc:
                self.ticket_store_errors += 1
                log.info("tls ticket look-up failed", extra=fields(error=repr(exc)))
        self.command(("TLS_RESUME", conn, ticket_id, state))

    def _answer(self, event: tuple[Any, ...]) -> None:
        _, conn, token, status, headers, body, retry_after_ms, message = event
        session = self._sessions.get(conn)
        if session is not None:
            session.on_answer(token, RpcResponse(status, headers, body, retry_after_ms, message))

    def _acks(self, event: tuple[Any, ...]) -> None:
        # Every ACK of the event batch, flat: message_ids[i] came on conns[i].
        _, conns, message_ids = event
        get = self._sessions.get
        self.service.registry.acks_many([get(conn) for conn in conns], message_ids)

    def _fanout_acks(self, event: tuple[Any, ...]) -> None:
        self.service.registry.fanout_acks({m.decode(): n for m, n in event[1].items()})

    def _fanout_done(self, event: tuple[Any, ...]) -> None:
        self.fanout_written += event[2]
        self.fanout_skipped += event[3]

    def _push_failed(self, event: tuple[Any, ...]) -> None:
        _, conn, message_id, reason = event
        session = self._sessions.get(conn)
        if session is None:
            handler = self._mqtt.get(conn)
            if handler is not None and reason not in _TRANSIENT_PUSH_FAILURES:
                handler.push_refused(message_id.decode(), reason)
            return  # the connection is gone: the push stays queued for the next one
        permanent = reason not in _TRANSIENT_PUSH_FAILURES and _TOO_MANY_UNACKED not in reason
        self.service.registry.push_failed(session, message_id.decode(), reason, permanent)

    def _cancel(self, event: tuple[Any, ...]) -> None:
        session = self._sessions.get(event[1])
        if session is not None:
            session.on_cancel(event[2])

    def _goaway(self, event: tuple[Any, ...]) -> None:
        session = self._sessions.get(event[1])
        if session is not None:
            # The device is leaving (app to background): finish, then close.
            session.draining_started()
            session.close_when_idle()

    def _closed(self, event: tuple[Any, ...]) -> None:
        conn = event[1]
        session = self._sessions.pop(conn, None)
        if session is not None:
            session.gone()
            self.service.registry.remove(session)
        handler = self._mqtt.pop(conn, None)
        if handler is not None:
            handler.connection_lost()
        if not self._sessions and not self._mqtt and self._all_gone is not None:
            self._all_gone.set()

    def _mqtt_open(self, event: tuple[Any, ...]) -> None:
        _, conn, peer_ip, cert_cn, tls = event
        front = self.mqtt_front
        if front is None:
            self.command(("ABORT", conn))
            return
        self._mqtt[conn] = front.opened(NativeMqttTransport(self, conn, peer_ip, cert_cn, tls))

    def _mqtt_packets(self, event: tuple[Any, ...]) -> None:
        handler = self._mqtt.get(event[1])
        if handler is not None:
            handler.packets_received(event[2])

    def _mqtt_pubacks(self, event: tuple[Any, ...]) -> None:
        # Bare PUBACKs of many connections (ids[i] came on conns[i]): the pushes they
        # acknowledge go to the registry in one call, as an ACKS event's do.
        _, conns, ids = event
        get = self._mqtt.get
        sessions: list[Session | None] = []
        message_ids: list[str] = []
        for conn, packet_ids in zip(conns, ids, strict=True):
            handler = get(conn)
            if handler is not None:
                handler.pubacks_received(packet_ids, sessions, message_ids)
        if message_ids:
            self.service.registry.acks_many(sessions, message_ids)

    def _mqtt_acks(self, event: tuple[Any, ...]) -> None:
        # Pushes the engine held for MQTT boxes, acknowledged: as ACKS (message_ids[i]
        # came on conns[i]); the handlers are the boxes' sessions (MqttConnection).
        _, conns, message_ids = event
        get = self._mqtt.get
        sessions = cast("list[Session | None]", [get(conn) for conn in conns])
        self.service.registry.acks_many(sessions, message_ids)

    def _mqtt_refused(self, event: tuple[Any, ...]) -> None:
        # A push the engine held, refused by the box (PUBACK 0x80 or more).
        _, conn, message_id, tracked, reason = event
        handler = self._mqtt.get(conn)
        if handler is not None:
            handler.refused_by_box(message_id.decode(), tracked, reason)

    _handlers: ClassVar[dict[str, Callable[[NativeEngine, tuple[Any, ...]], None]]] = {
        "HELLO": _hello,
        "REQUEST": _request,
        "ANSWER": _answer,
        "ACKS": _acks,
        "FANOUT_ACKS": _fanout_acks,
        "FANOUT_DONE": _fanout_done,
        "PUSH_FAILED": _push_failed,
        "CANCEL": _cancel,
        "GOAWAY": _goaway,
        "CLOSED": _closed,
        "MQTT_OPEN": _mqtt_open,
        "MQTT_PACKETS": _mqtt_packets,
        "MQTT_PUBACKS": _mqtt_pubacks,
        "MQTT_ACKS": _mqtt_acks,
        "MQTT_REFUSED": _mqtt_refused,
        "TLS_TICKET": _tls_ticket,
        "TLS_RESUME": _tls_resume,
        "RPC_HANDOFF": _rpc_handoff,
        "RPC_DONE": _rpc_done,
    }

    def metric_refused(self, code: ErrorCode) -> None:
        # The other refusals (limits) are the engine's own counters (stats()).
        if code is ErrorCode.SHUTTING_DOWN:
            self.refused_draining += 1

    # --------------------------------------------------------------- fan-out

    def fanout(self, pushes: Sequence[FanoutPush], sessions: Sequence[Session] | None) -> int:
        """Hand fan-out pushes to the engine: encoded once, written to each target by
        Rust. ``sessions`` None: every accepted MMTP connection of this engine."""
        if sessions is None:
            targets: list[int] | None = None
            count = len(self._sessions)
        else:
            targets = [s.conn for s in sessions if isinstance(s, NativeMmtpSession)]
            count = len(targets)
            if not targets:
                return 0
        for push in pushes:
            self.command(("FANOUT", push.message_id.encode(), push.headers, push.body, targets))
        return count * len(pushes)

    # ---------------------------------------------------------------- drain

    @property
    def connection_count(self) -> int:
        """Authenticated devices (MMTP) and MQTT connections held by this engine."""
        return len(self._sessions) + len(self._mqtt)

    def stop_accepting(self) -> None:
        if self._engine is not None:
            self._engine.close_listeners()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, tell every device to reconnect later, finish calls, close."""
        self.draining = True
        self.stop_accepting()
        base = self.config.server.reconnect_after_ms
        for session in list(self._sessions.values()):
            session.goaway(ErrorCode.SHUTTING_DOWN, jittered(base), "node restarting")
        self.flush_commands()
        self._all_gone = asyncio.Event()
        if self._sessions or self._mqtt:
            try:
                await asyncio.wait_for(self._all_gone.wait(), timeout_s)
            except TimeoutError:
                log.warning("drain timed out", extra=fields(left=self.connection_count))
        for conn in list(self._sessions) + list(self._mqtt):
            self.command(("ABORT", conn))
        self.flush_commands()

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(engine.event_fd())
        # The engine thread is joined without the GIL (close_listeners/shutdown release it).
        await asyncio.to_thread(engine.shutdown)

    def stats(self) -> dict[str, Any]:
        return self._engine.stats() if self._engine is not None else {}

    def held_mqtt_pushes_of(self, conn: int) -> tuple[int, int]:
        """(in flight, waiting) of the QoS 1 pushes this engine holds for one connection."""
        return self._engine.mqtt_held(conn) if self._engine is not None else (0, 0)

    def held_mqtt_packets(self) -> tuple[dict[int, int], dict[int, int]]:
        """MQTT packets (in, out) by type that only this engine saw: the PUBACKs /
        PUBCOMPs of the pushes it holds, and the PUBLISHes / PUBRELs it held and wrote."""
        stats = self.stats()
        return (
            {4: stats.get("mqtt_held_pubacks_in", 0), 7: stats.get("mqtt_held_pubcomps_in", 0)},
            {3: stats.get("mqtt_held_publishes_out", 0), 6: stats.get("mqtt_held_pubrels_out", 0)},
        )

    def held_mqtt_pushes(self) -> tuple[int, int]:
        """(in flight, waiting) of the QoS 1 pushes this engine holds for MQTT boxes."""
        stats = self.stats()
        return stats.get("mqtt_pushes_inflight", 0), stats.get("mqtt_pushes_waiting", 0)


class NativeMmtpSession(MmtpSession):
    """One authenticated device held by the native engine: an id and who it is."""

    __slots__ = (
        "_closing",
        "_connected",
        "_draining",
        "_native",
        "conn",
        "flush_group",
        "native_rpc",
    )

    def __init__(self, engine: NativeEngine, conn: int, auth: AuthResult) -> None:
        super().__init__(engine.service)
        self._native = engine
        #: ``flush`` submits the engine's batch, every session's at once.
        self.flush_group = engine
        self.conn = conn
        self.auth = auth
        self._closing = False
        self._connected = True
        self._draining = False
        #: The engine serves its plain calls (None: not asked yet, at its first call;
        #: False: they stay Python's for this session).
        self.native_rpc: bool | None = None

    @property
    def fanout_engine(self) -> NativeEngine:  # type: ignore[override]
        return self._native

    # -------------------------------------------------------------- pushes

    def push(self, message_id: str, body: bytes, headers: Headers, tracked: bool) -> str | None:
        # Whether it fits the device's limits is known in Rust: a refusal comes back as
        # PUSH_FAILED (registry.push_failed).
        self._native.command(("PUSH", self.conn, message_id.encode(), headers, body, tracked))
        return None

    def push_fanout(self, pushes: Sequence[FanoutPush]) -> int:
        return self._native.fanout(pushes, [self])

    def flush(self) -> None:
        """The first flush of a loop turn submits at once; the rest go down at the end
        of the turn, with every other session's (``NativeEngine.flush_early``)."""
        self._native.flush_early()

    # -------------------------------------------------- MmtpSession primitives

    def _send_answer(self, stream_id: int, response: RpcResponse) -> None:
        # Too large for the device: the engine ends the stream with UPSTREAM_ERROR.
        body = response.body if response.status == 0 else response.body or response.message.encode()
        self._native.command(
            ("RESPOND", self.conn, stream_id, response.status, response.headers, body)
        )

    def _send_stream_error(
        self, stream_id: int, code: ErrorCode, message: str, retry_after_ms: int = 0
    ) -> None:
        self._native.command(("STREAM_ERROR", self.conn, stream_id, code, message, retry_after_ms))

    def _start_call(self, op: str, body: bytes, headers: Headers) -> int | RpcResponse:
        token = self._native.next_call_token()
        self._native.command(("CALL", self.conn, token, op, headers, body))
        return token

    def _cancel_call(self, key: int) -> None:
        if not self._closing:
            self._native.command(("CANCEL_CALL", self.conn, key))

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._native.command(("CLOSE", self.conn))

    def _bucket_used(self, bucket: TokenBucket) -> None:
        if self.native_rpc is None:
            self.native_rpc = self._native.rpc_session(self, bucket.tokens)

    def _close_idle(self) -> None:
        if self._closing:
            return
        # The engine closes once the calls it serves itself are answered too; one it
        # hands back comes as a call of this session, which asks again once it is answered.
        self._closing_when_idle = True
        self._native.command(("CLOSE_IDLE", self.conn))

    def on_handoff(self, stream_id: int, call: AdoptedCall, early: bool) -> None:
        """A call the engine sent upstream and hands back (``RPC_HANDOFF``): served on
        from there in a task, as the router's fast path goes on after its first try."""
        service = self._service
        if early:
            service.early_request_allowed(call.request.op)  # counted as on_request does
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = {}
        tasks[stream_id] = asyncio.get_running_loop().create_task(
            self._serve_adopted(stream_id, call)
        )
        device = call.request.device
        service.compression.sample(device.app_id, device.device_id, call.request.body)

    async def _serve_adopted(self, stream_id: int, call: AdoptedCall) -> None:
        router = self._native.router
        assert router is not None
        try:
            response = await router.adopted(call)
        except asyncio.CancelledError:
            self._pop_task(stream_id)
            raise
        except Exception:
            log.exception("rpc handler failed", extra=fields(op=call.request.op))
            response = RpcResponse.error(ErrorCode.INTERNAL_ERROR, "gateway error")
        self._answered(stream_id, call.request, call.started, response)

    @property
    def _gone(self) -> bool:
        return self._closing or not self._connected

    # --------------------------------------------------------------- closing

    def goaway(self, code: ErrorCode, reconnect_after_ms: int, message: str) -> None:
        if self._closing or self._draining:
            self._close()
            return
        self._draining = True
        self._native.command(("GOAWAY", self.conn, code, reconnect_after_ms, message))
        # Requests the device sent before it saw the GOAWAY are still on the wire: give
        # them time to arrive (REFUSED_STREAM, replayed elsewhere) before closing.
        loop = asyncio.get_running_loop()
        loop.call_later(self._service.config.server.goaway_grace_s, self.close_when_idle)

    def end(self, code: ErrorCode, message: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._native.command(("END", self.conn, code, message))

    def abort(self) -> None:
        self._closing = True
        self._native.command(("ABORT", self.conn))

    def draining_started(self) -> None:
        self._draining = True

    def gone(self) -> None:
        """The engine closed the connection (CLOSED): fail what waited for the device."""
        self._closing = True
        self._connected = False
        self.connection_gone()

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def draining(self) -> bool:
        return self._draining


class NativeMqttTransport:
    """How an MQTT connection held by the native engine writes (``channel/mqtt``)."""

    __slots__ = ("_native", "client_cert_cn", "conn", "peer_ip", "tls")

    def __init__(
        self, engine: NativeEngine, conn: int, peer_ip: str, client_cert_cn: str | None, tls: bool
    ) -> None:
        self._native = engine
        self.conn = conn
        self.peer_ip = peer_ip
        self.client_cert_cn = client_cert_cn
        self.tls = tls

    def write(self, data: bytes) -> None:
        self._native.command(("MQTT_WRITE", self.conn, data))

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        self._native.command(("CLOSE", self.conn))

    def abort(self) -> None:
        self._native.command(("ABORT", self.conn))

    def set_idle(self, timeout_ms: int) -> None:
        """Keepalive × 1.5 (0: none); also ends the handshake deadline (send with CONNACK)."""
        self._native.command(("SET_IDLE", self.conn, timeout_ms))

    def push_holder(self) -> NativeMqttTransport:
        """This engine holds QoS 1 pushes (``channel.mqtt.transport.PushHolder``)."""
        return self

    def hold_pushes(
        self,
        head: bytes,
        mqtt5: bool,
        limit: int,
        max_waiting: int,
        max_packet_bytes: int,
        dup_before_ms: int,
    ) -> None:
        self._native.command(("MQTT_PUSHES", self.conn, head, mqtt5, limit, max_waiting,
                              max_packet_bytes, dup_before_ms))  # fmt: skip

    def push(self, message_id: str, headers: Headers, body: bytes, tracked: bool) -> None:
        self._native.command(("MQTT_PUSH", self.conn, message_id.encode(), headers, body, tracked))

    def write_held(self, data: bytes) -> None:
        self._native.command(("MQTT_HELD", self.conn, data))

    def held(self) -> tuple[int, int]:
        return self._native.held_mqtt_pushes_of(self.conn)
