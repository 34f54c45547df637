"""The asyncio client: one long-lived MMTP connection per device, kept alive for the app.

The app connects once and then calls, receives pushes and answers backend
calls; the client takes care of the rest:

* **Handshake** — HELLO with the resume ticket of the last session (and the
  token as fallback), the dictionaries it holds and its limits; calls waiting
  for a connection are written in the same TLS record right behind the HELLO
  (pipelining: the first answer arrives one round trip after TLS).
* **Reconnects** — exponential backoff with full jitter, at least the
  server's hint; TLS sessions and MMTP sessions are resumed. Calls made while
  disconnected wait (within their timeout) for the next connection. A call
  the server refused unprocessed (REFUSED_STREAM) is retried once; a call
  lost with its connection is retried only if it is ``idempotent``. Auth
  failures stop the reconnecting and are raised to callers.
* **GOAWAY** — the draining connection finishes its calls, new calls go to
  a new connection.
* **Heartbeats** — a PING whenever nothing was sent for ``heartbeat_s``; no
  byte from the server within 1.5 × ``heartbeat_s`` after a PING means the
  connection is dead.
* **Pushes** — handed to the ``on_push`` handler one at a time in arrival
  order, de-duplicated by message id, acknowledged after the handler returns.
* **Backend → device calls** — dispatched to ``handle(op)`` handlers.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import inspect
import json
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from channel import fastopen
from channel.default_dictionary import load_default_dictionary
from channel.default_presets import register_default_presets
from channel.security.tokens import token_device_id
from channel.wire import (
    BodyCodec,
    Connection,
    ConnectionErrorReceived,
    Dictionary,
    DictionaryReceived,
    DictionaryStore,
    ErrorCode,
    Event,
    FrameCounters,
    FrameType,
    GoAwayReceived,
    Hello,
    HelloAccepted,
    HelloAck,
    Limits,
    LocalProtocolError,
    PongReceived,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    Setting,
    SettingsReceived,
    State,
    StreamCancelled,
    StreamErrorReceived,
    StreamsExhausted,
)
from channel.wire.frames import encode_frame
from channel.wire.headers import Header, Headers
from channel.wire.hello import MAX_HELLO_DICTIONARIES, encode_hello, encode_hello_ack
from channel.wire.presets import Preset, register_preset
from sdk_client.backoff import Backoff
from sdk_client.dedupe import DedupeWindow
from sdk_client.dictstore import DictionaryFiles
from sdk_client.errors import (
    AuthError,
    BadRequest,
    ChannelError,
    InternalError,
    Timeout,
    Unavailable,
    error_for,
    is_fatal,
)
from sdk_client.protocol import ClientProtocol, client_tls_context
from sdk_client.tcp import open_socket, release_after_failed_handoff

log = logging.getLogger("channel.sdk")

#: Gateway built-in operations for topic subscriptions (channel/gateway/builtin.py).
SUBSCRIBE_OP = "channel.subscribe"
UNSUBSCRIBE_OP = "channel.unsubscribe"


def _log_failure(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("re-subscribing topics failed: %s", task.exception())


#: Used when the server leaves the heartbeat to the client (HELLO_ACK heartbeat_s = 0).
DEFAULT_HEARTBEAT_S = 60
#: A dead connection is declared after this many heartbeats without a byte after a PING.
DEAD_AFTER_HEARTBEATS = 1.5
#: A connection that stayed up this long resets the backoff to its first step.
STABLE_CONNECTION_S = 5.0
#: Retries of an idempotent call whose connection died with the call in flight.
MAX_LOST_RETRIES = 2
#: Retries of a call the server refused unprocessed (REFUSED_STREAM).
MAX_REFUSED_RETRIES = 1
STATE_FILE_VERSION = 1


# ------------------------------------------------------------------ values


def _header(headers: Headers, name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


@dataclass(frozen=True)
class Response:
    """A call's answer. ``call`` returns only successes (``status == 0``)."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return _header(self.headers, name)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Push:
    """A push from the backend; ``message_id`` is its de-duplication key."""

    message_id: bytes
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return _header(self.headers, name)


@dataclass(frozen=True)
class Request:
    """A call from the backend to this device (answer it with a ``handle`` handler)."""

    op: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return _header(self.headers, name)


@dataclass
class ClientStats:
    """Counters of one client since it was created (plain ints, read any time)."""

    #: Connections that completed the handshake; ``resumed_sessions`` of them resumed.
    connects: int = 0
    resumed_sessions: int = 0
    #: Connections whose TLS handshake was an abbreviated (resumed) one.
    tls_resumed: int = 0
    #: Connections whose SYN carried the ClientHello (TCP Fast Open): one round trip saved.
    fast_open_connects: int = 0
    #: Connects tried again because fast open had no cookie yet (see ``_connect_tls``).
    fast_open_retries: int = 0
    #: Connection attempts that failed (network, TLS, refused HELLO).
    connect_failures: int = 0
    calls: int = 0
    call_errors: int = 0
    calls_retried: int = 0
    pushes_received: int = 0
    pushes_delivered: int = 0
    #: Dictionaries the server delivered (stored when ``dictionary_dir`` is set).
    dictionaries_received: int = 0
    pushes_duplicate: int = 0
    push_handler_errors: int = 0
    requests_served: int = 0
    pings_sent: int = 0
    #: Round trip of the last PING answered, seconds (0 until one was).
    last_rtt_s: float = 0.0
    #: Bytes handed to / received from TLS, over all connections.
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Sizes of the last HELLO and HELLO_ACK frames (incl. the 3-4 byte frame header).
    hello_bytes: int = 0
    hello_ack_bytes: int = 0
    #: What the last connection's first write carried: HELLO plus pipelined REQUESTs.
    first_write_bytes: int = 0
    first_write_requests: int = 0
    #: Loop seconds from starting TCP to HELLO_ACK, last connection.
    handshake_s: float = 0.0
    frames: FrameCounters = field(default_factory=FrameCounters, repr=False)


PushHandler = Callable[[Push], Awaitable[None] | None]
RequestHandler = Callable[[Request], Awaitable[bytes | Response] | bytes | Response]
DisconnectHandler = Callable[[ChannelError], Awaitable[None] | None]
PushHandlerT = TypeVar("PushHandlerT", bound=PushHandler)
RequestHandlerT = TypeVar("RequestHandlerT", bound=RequestHandler)
DisconnectHandlerT = TypeVar("DisconnectHandlerT", bound=DisconnectHandler)


# --------------------------------------------------------------- internals


class _Refused(Exception):
    """The server did not process the call: safe to retry.

    ``counts`` is False when the whole HELLO was refused (the retry limit is
    for REFUSED_STREAM answers; a refused HELLO is retried within the timeout).
    """

    def __init__(self, error: ChannelError, *, counts: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.counts = counts


class _Lost(Exception):
    """The connection died with the call in flight: it may or may not have run."""

    def __init__(self, error: ChannelError) -> None:
        super().__init__(error.message)
        self.error = error


class _Call:
    __slots__ = ("body", "future", "headers", "link", "op", "stream_id")

    def __init__(self, op: str, body: bytes, headers: Headers, future: asyncio.Future[Response]):
        self.op = op
        self.body = body
        self.headers = headers
        self.future = future
        self.link: _Link | None = None
        self.stream_id = 0


class _Link:
    """The client's bookkeeping for one connection."""

    def __init__(self, client: Client, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        self.client = client
        self.protocol = ClientProtocol(conn, self, client.stats)
        self.conn = conn
        # perf_counter, not loop.time(): uvloop's clock has millisecond steps.
        self.started_at = time.perf_counter()
        self.opened_at = 0.0
        self.hello_ack: asyncio.Future[HelloAck] = loop.create_future()
        #: Resolved once no new stream may start here: (why, server's retry hint in s).
        self.unusable: asyncio.Future[tuple[ChannelError, float]] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.calls: dict[int, _Call] = {}
        #: Resolved (and replaced) whenever one of our calls on this link ends.
        self.progress: asyncio.Future[None] = loop.create_future()
        self.served: dict[int, asyncio.Task[None]] = {}
        self.pings: dict[bytes, tuple[float, asyncio.Future[float]]] = {}
        self.heartbeat_s = 0
        self.heartbeat_task: asyncio.Task[None] | None = None
        #: Why the server ended the connection (ERROR on stream 0), with its hint.
        self.reason: ChannelError | None = None
        self.hint_s = 0.0
        self.rejected = False

    # ConnectionListener: forward to the client with this link.

    def connection_made(self, protocol: ClientProtocol) -> None:
        self.client._on_connection_made(self)

    def events_received(self, protocol: ClientProtocol, events: list[Event]) -> None:
        self.client._on_events(self, events)

    def connection_lost(self, protocol: ClientProtocol, error: ChannelError | None) -> None:
        self.client._link_lost(self, error)

    @property
    def can_start_streams(self) -> bool:
        return (
            self.protocol.transport is not None
            and not self.protocol.lost
            and self.conn.state in (State.HELLO_SENT, State.OPEN)
            and not self.conn.draining
        )

    @property
    def open(self) -> bool:
        return self.hello_ack.done() and not self.protocol.lost and not self.conn.closed

    def note_progress(self) -> None:
        if not self.progress.done():
            self.progress.set_result(None)
        self.progress = asyncio.get_running_loop().create_future()

    def mark_unusable(self, reason: ChannelError, hint_s: float) -> None:
        if not self.unusable.done():
            self.unusable.set_result((reason, hint_s))
            if self.client._link is self:
                self.client._open.clear()


def _now_ms() -> int:
    return int(time.time() * 1000)


_DEFAULT_DICTIONARIES: tuple[Dictionary, ...] = ()


def _default_dictionaries() -> tuple[Dictionary, ...]:
    """The packaged dictionary, read once per process."""
    global _DEFAULT_DICTIONARIES
    if not _DEFAULT_DICTIONARIES:
        _DEFAULT_DICTIONARIES = (load_default_dictionary(),)
    return _DEFAULT_DICTIONARIES


# ------------------------------------------------------------------ client


class Client:
    """An MMTP device connection to a Channel gateway (see the module docstring).

    Identity: ``device_id``, ``app_id``, ``app_version`` and ``platform`` as
    the token was issued; ``token`` is the device token, as the base64url text
    ``channel token issue`` prints (``str``) or as its bytes. ``client_cert``/
    ``client_key`` present a certificate instead (mutual TLS devices).

    Transport: ``ca_file`` is the CA that signed the gateway's certificate
    (None: the system store); ``server_hostname`` is the name the certificate
    must carry. ``preset_id`` picks the HPACK preset table (2: the packaged
    wallet demo preset); ``preset`` is an app preset (``channel preset build``,
    a ``Preset`` or the path of its JSON file: registered here, and its id
    used); ``connection_header_names`` are headers sent once per connection
    besides those the preset names (spec 9.11: the gateway re-attaches them to
    every call). ``dictionaries`` defaults to the packaged dictionary, and
    dictionaries the server delivers are added to it; with
    ``dictionary_dir`` (default: ``<state_file>.dicts`` when ``state_file`` is
    set) delivered dictionaries are stored there and announced in the next
    HELLOs. ``limits`` are the receive limits announced in HELLO.

    Behaviour: ``reconnect`` keeps a connection up after the first one, with
    ``backoff`` between attempts; ``call_timeout_s`` is the default of
    ``call(timeout=...)``; ``connect_timeout_s`` bounds TCP + TLS + HELLO_ACK;
    ``dedupe_window`` is how many push message ids are remembered;
    ``heartbeat_hint_s`` asks the server for a shorter heartbeat;
    ``token_with_ticket`` sends the token next to a resume ticket (one round
    trip saved if the ticket was refused, ~80 bytes more per resumed HELLO);
    ``state_file`` keeps the resume ticket across processes (it is a
    credential: written with mode 0600); ``endpoints`` are more gateway
    addresses, tried in turn after a failed connection attempt (without a load
    balancer in front, or a node that died); ``tcp_fast_open`` sends the TLS
    ClientHello in the TCP SYN once the kernel holds a fast-open cookie for the
    gateway (Linux; one round trip fewer on every reconnect, see
    ``channel/fastopen.py``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        device_id: str,
        token: bytes | str = b"",
        ca_file: Path | None = None,
        app_id: str = "",
        app_version: str = "",
        platform: str = "",
        preset_id: int = 2,
        preset: Preset | Path | None = None,
        connection_header_names: Sequence[str] = (),
        dictionaries: DictionaryStore | None = None,
        dictionary_dir: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        server_hostname: str | None = "localhost",
        reconnect: bool = True,
        backoff: Backoff | None = None,
        call_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        dedupe_window: int = 4096,
        limits: Limits | None = None,
        heartbeat_hint_s: int = 0,
        token_with_ticket: bool = True,
        state_file: Path | None = None,
        endpoints: Sequence[tuple[str, int]] = (),
        tcp_fast_open: bool = True,
    ) -> None:
        register_default_presets()
        self.host = host
        self.port = port
        #: Every gateway address to try, in turn, when a connection attempt fails.
        self.endpoints: list[tuple[str, int]] = [(host, port), *endpoints]
        self._endpoint = 0
        self._topics: set[str] = set()
        self.device_id = device_id
        self._token = b""
        self.token = token
        self.app_id = app_id
        self.app_version = app_version
        self.platform = platform
        if preset is not None:
            if not isinstance(preset, Preset):
                preset = Preset.from_json(Path(preset).read_text(encoding="utf-8"))
            register_preset(preset)
            preset_id = preset.preset_id
        self.preset_id = preset_id
        self.connection_header_names = frozenset(connection_header_names)
        self.server_hostname = server_hostname
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.call_timeout_s = call_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.limits = limits or Limits()
        self.heartbeat_hint_s = heartbeat_hint_s
        #: Send the token next to a resume ticket, so an expired ticket costs no round trip.
        self.token_with_ticket = token_with_ticket
        self.state_file = state_file
        #: Send the ClientHello in the SYN once the kernel holds a cookie for the gateway.
        self.tcp_fast_open = tcp_fast_open
        self.stats = ClientStats()
        if dictionary_dir is None and state_file is not None:
            dictionary_dir = state_file.with_name(state_file.name + ".dicts")
        #: Where delivered dictionaries are kept (None: in memory only).
        self.dictionary_files = DictionaryFiles(dictionary_dir) if dictionary_dir else None
        # A codec of its own: a dictionary the server delivers joins this client's store,
        # never one another client (of another server, whose ids mean other content) uses.
        # A store passed in is this client's own (it sees what the server delivers).
        store = (
            dictionaries
            if dictionaries is not None
            else DictionaryStore(list(_default_dictionaries()))
        )
        if self.dictionary_files is not None:
            for stored in self.dictionary_files.load():
                if stored.dict_id not in store:
                    store.add(stored)
        self._codec = BodyCodec(store)
        self._tls = client_tls_context(ca_file, client_cert=client_cert, client_key=client_key)
        self._dedupe = DedupeWindow(dedupe_window)
        self._ticket = b""
        #: Newest dictionary id a HELLO_ACK (or DICT) told us the server holds.
        self._server_dictionary = 0
        self._last_ack: HelloAck | None = None
        self._link: _Link | None = None
        self._links: set[_Link] = set()
        self._queue: deque[_Call] = deque()
        self._push_handler: PushHandler | None = None
        self._handlers: dict[str, RequestHandler] = {}
        self._disconnect_handlers: list[DisconnectHandler] = []
        self._pushes: asyncio.Queue[tuple[_Link, PushReceived]] | None = None
        self._push_worker: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connecting = False
        #: Why the client is not connecting (any more); calls fail fast with it.
        self._stopped: ChannelError | None = None
        self._closed = False
        self._ping_counter = 0
        #: Set while the current link is open and accepting new streams.
        self._open = asyncio.Event()
        self._load_state()

    # ------------------------------------------------------------ properties

    @property
    def token(self) -> bytes:
        """The device token; replace it (e.g. after AUTH_EXPIRED) before ``connect()``.

        Set it to the base64url text ``channel token issue`` prints (surrounding
        whitespace, as read from a file, is ignored) or to the token's bytes;
        ``ValueError`` for text that is not base64url, ``TypeError`` for anything else.
        """
        return self._token

    @token.setter
    def token(self, value: bytes | bytearray | memoryview | str) -> None:
        self._token = token_bytes(value)

    @property
    def connected(self) -> bool:
        """True while a connection is open and accepting new calls."""
        link = self._link
        return link is not None and link.open and not link.unusable.done()

    @property
    def session_id(self) -> bytes:
        """The server's id of this device session (b"" before the first HELLO_ACK)."""
        return self._last_ack.session_id if self._last_ack else b""

    @property
    def resumed(self) -> bool:
        """True if the last connection resumed the previous session (ticket accepted)."""
        return self._last_ack.resumed if self._last_ack else False

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat interval in use on the current connection (0 before one)."""
        link = self._link
        return link.heartbeat_s if link is not None else 0

    @property
    def resume_ticket(self) -> bytes:
        """The ticket the next HELLO presents (confidential, like the token)."""
        return self._ticket

    @property
    def dictionaries(self) -> DictionaryStore:
        """The dictionaries this client holds and announces."""
        return self._codec.dictionaries

    # --------------------------------------------------------------- handlers

    def on_push(self, handler: PushHandlerT) -> PushHandlerT:
        """Register the push handler (decorator); sync or async, one push at a time.

        A push is acknowledged after the handler returns; if it raises, the
        push is not acknowledged and the server delivers it again on a later
        connection. Without a handler pushes are left unacknowledged too.
        """
        self._push_handler = handler
        return handler

    def handle(self, op: str) -> Callable[[RequestHandlerT], RequestHandlerT]:
        """Register the handler of backend → device calls of ``op`` (decorator).

        The handler gets a ``Request`` and returns the response body (bytes)
        or a ``Response``; raising a ``ChannelError`` answers with its code,
        any other exception with INTERNAL_ERROR. Unknown ops get NOT_FOUND.
        """

        def register(handler: RequestHandlerT) -> RequestHandlerT:
            self._handlers[op] = handler
            return handler

        return register

    def on_disconnect(self, handler: DisconnectHandlerT) -> DisconnectHandlerT:
        """Register a callback (decorator) told why each connection ended or drained.

        Called with the reason as a ``ChannelError``; when the reason is fatal
        (``AuthError``, ``SessionEnded``) the client has stopped reconnecting.
        """
        self._disconnect_handlers.append(handler)
        return handler

    # ------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, *, retry: bool = False) -> None:
        """Open the first connection and start keeping one open.

        Raises ``AuthError`` if the server refuses the credential (never
        retried), ``Unavailable`` if the gateway cannot be reached, or the
        error the server gave. With ``retry=True`` transient failures are
        retried with backoff until a connection is up.
        """
        if self._closed:
            raise Unavailable(ErrorCode.UNAVAILABLE, "client is closed")
        if self._supervisor is not None or self._connecting:
            return
        self._stopped = None
        self._connecting = True
        try:
            attempt = 0
            while True:
                try:
                    await self._establish()
                    self._resubscribe()
                    break
                except ChannelError as exc:
                    if not retry or is_fatal(exc):
                        # Nobody is connecting now: waiting calls fail with this error.
                        self._stop(exc)
                        raise
                    delay = self.backoff.delay(attempt, hint_s=exc.retry_after_ms / 1000)
                    attempt += 1
                    log.info("connect failed, retrying", extra={"error": str(exc)})
                    await asyncio.sleep(delay)
        finally:
            self._connecting = False
        if self._closed:  # close() ran while we were connecting
            await self._close_links(0)
            raise Unavailable(ErrorCode.UNAVAILABLE, "client closed while connecting")
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self, timeout_s: float = 2.0) -> None:
        """Say GOAWAY, let calls in flight finish (up to ``timeout_s``), then close.

        Calls still waiting for a connection fail with ``Unavailable``.
        """
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        self._fail_queue(Unavailable(ErrorCode.UNAVAILABLE, "client closed"))
        await self._close_links(timeout_s)
        if self._push_worker is not None:
            self._push_worker.cancel()
            self._push_worker = None

    async def _close_links(self, timeout_s: float) -> None:
        for link in list(self._links):
            self._say_goaway(link)
        if self._links and timeout_s > 0:
            await asyncio.wait([link.ended for link in self._links], timeout=timeout_s)
        for link in list(self._links):
            link.protocol.abort()
        if self._links:
            await asyncio.wait([link.ended for link in self._links], timeout=1.0)

    def _say_goaway(self, link: _Link) -> None:
        if link.conn.state in (State.OPEN, State.CLOSING):
            link.protocol.send_pending_acks()
            link.conn.send_goaway(ErrorCode.NO_ERROR, message="client closing")
            link.protocol.flush()
            if not link.calls and not link.served:
                link.protocol.close()
        else:
            link.protocol.close()

    # ------------------------------------------------------------ connecting

    def _make_hello(self) -> Hello:
        ticket = self._ticket
        token = self.token if not ticket or self.token_with_ticket else b""
        # Spec 7.2: a token that names this device carries the device id; a ticket is
        # bound to the device id sent with it.
        leave_to_token = bool(token) and not ticket and token_device_id(token) == self.device_id
        return Hello(
            device_id="" if leave_to_token else self.device_id,
            app_id=self.app_id,
            token=token,
            resume_ticket=ticket,
            dictionaries=self._hello_dictionaries(),
            preset_id=self.preset_id,
            heartbeat_s=self.heartbeat_hint_s,
            app_version=self.app_version,
            platform=self.platform,
            client_time_ms=_now_ms(),
        )

    def _hello_dictionaries(self) -> tuple[int, ...]:
        # The newest ones only: a HELLO lists at most MAX_HELLO_DICTIONARIES.
        return self._codec.dictionaries.ids[-MAX_HELLO_DICTIONARIES:]

    def _pipeline_dictionary(self) -> int:
        usable = [d for d in self._hello_dictionaries() if d <= self._server_dictionary]
        return max(usable, default=0)

    async def _establish(self) -> None:
        """One connection attempt up to HELLO_ACK; a bad ticket is retried with the token."""
        try:
            await self._establish_once()
        except AuthError as exc:
            if exc.code != ErrorCode.TICKET_INVALID or not self._ticket or not self.token:
                raise
            log.info("resume ticket refused; connecting with the token")
            self._ticket = b""
            await self._establish_once()

    async def _establish_once(self) -> None:
        self._ensure_push_worker()
        conn = Connection(
            Role.CLIENT,
            limits=self.limits,
            body_codec=self._codec,
            frame_counters=self.stats.frames,
            connection_header_names=self.connection_header_names,
        )
        link = _Link(self, conn)
        self._links.add(link)
        self._link = link
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._connect_tls(link, loop)
                await link.hello_ack
        except BaseException as exc:
            self.stats.connect_failures += 1
            self._next_endpoint()
            link.protocol.abort()
            if not link.ended.done():
                # create_connection failed before the protocol existed for the loop.
                self._link_lost(link, None)
            if isinstance(exc, ChannelError):
                raise
            if isinstance(exc, TimeoutError):
                raise Unavailable(
                    ErrorCode.UNAVAILABLE,
                    f"no HELLO_ACK from {self.host}:{self.port} within {self.connect_timeout_s} s",
                ) from None
            if isinstance(exc, OSError):
                raise Unavailable(
                    ErrorCode.UNAVAILABLE, f"cannot connect to {self.host}:{self.port}: {exc}"
                ) from exc
            raise

    async def _connect_tls(self, link: _Link, loop: asyncio.AbstractEventLoop) -> None:
        """TCP (with fast open if on) and TLS to the current endpoint.

        With TCP fast open and no cookie for the server yet, Linux sends a bare SYN
        and fails the first write (the ClientHello) with EINPROGRESS, which the event
        loop's transport takes for a broken connection. The cookie arrives with that
        SYN's answer, so trying once more connects (with the ClientHello in the SYN).
        """
        fast_open = self.tcp_fast_open
        for attempt in (1, 2):
            sock = await open_socket(self.host, self.port, fast_open=fast_open)
            try:
                await loop.create_connection(
                    lambda: link.protocol,
                    sock=sock,
                    ssl=self._tls,
                    server_hostname=self.server_hostname,
                    ssl_handshake_timeout=self.connect_timeout_s,
                )
                return
            except BaseException as exc:
                release_after_failed_handoff(sock)
                if not (
                    isinstance(exc, OSError)
                    and fast_open
                    and exc.errno == errno.EINPROGRESS
                    and attempt == 1
                ):
                    raise
                self.stats.fast_open_retries += 1

    def _next_endpoint(self) -> None:
        if len(self.endpoints) > 1:
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            self.host, self.port = self.endpoints[self._endpoint]

    def _ensure_push_worker(self) -> None:
        if self._push_worker is None or self._push_worker.done():
            self._pushes = asyncio.Queue()
            self._push_worker = asyncio.get_running_loop().create_task(self._deliver_pushes())

    async def _supervise(self) -> None:
        """Keep a connection: wait for the current one to end or drain, then reconnect."""
        attempt = 0
        while True:
            link = self._link
            if link is None:
                reason: ChannelError = Unavailable(ErrorCode.UNAVAILABLE, "not connected")
                hint_s = 0.0
            else:
                reason, hint_s = await link.unusable
                lived_s = time.perf_counter() - link.opened_at
                if link.opened_at and lived_s >= STABLE_CONNECTION_S:
                    attempt = 0
            await self._notify_disconnect(reason)
            if is_fatal(reason) or not self.reconnect:
                self._stop(reason)
                return
            while True:
                delay = self.backoff.delay(attempt, hint_s=hint_s)
                attempt += 1
                log.info(
                    "reconnecting",
                    extra={"reason": str(reason), "delay_s": round(delay, 3)},
                )
                await asyncio.sleep(delay)
                try:
                    await self._establish()
                    break
                except ChannelError as exc:
                    if is_fatal(exc):
                        await self._notify_disconnect(exc)
                        self._stop(exc)
                        return
                    reason, hint_s = exc, exc.retry_after_ms / 1000

    def _stop(self, error: ChannelError) -> None:
        """Give up reconnecting: fail waiting calls with ``error`` (``connect()`` restarts)."""
        self._stopped = error
        self._supervisor = None
        self._fail_queue(error)

    def _fail_queue(self, error: ChannelError) -> None:
        while self._queue:
            call = self._queue.popleft()
            if not call.future.done():
                call.future.set_exception(error)

    async def _notify_disconnect(self, reason: ChannelError) -> None:
        for handler in self._disconnect_handlers:
            try:
                result = handler(reason)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_disconnect handler failed")

    # ------------------------------------------------- connection callbacks

    def _on_connection_made(self, link: _Link) -> None:
        """TLS is up: HELLO and every waiting call behind it leave in one write."""
        ssl_object = link.protocol.ssl_object
        if ssl_object is not None and ssl_object.session_reused:
            self.stats.tls_resumed += 1
        link.conn.send_hello(self._make_hello(), pipeline_dictionary=self._pipeline_dictionary())
        self._pump(link)  # the protocol flushes right after this returns

    def _on_events(self, link: _Link, events: list[Event]) -> None:
        for event in events:
            self._dispatch(link, event)
        if self._queue:
            self._pump(link)
        self._maybe_retire(link)

    def _link_lost(self, link: _Link, error: ChannelError | None) -> None:
        if link.ended.done():
            return
        reason = link.reason or error or Unavailable(ErrorCode.UNAVAILABLE, "connection lost")
        if not link.hello_ack.done():
            link.hello_ack.set_exception(reason)
            link.hello_ack.exception()  # retrieved: connect() reports it
        for call in link.calls.values():
            if call.future.done():
                continue
            # A rejected HELLO means none of the pipelined requests was processed.
            outcome = _Refused(reason, counts=False) if link.rejected else _Lost(reason)
            call.future.set_exception(outcome)
        link.calls.clear()
        for task in link.served.values():
            task.cancel()
        link.served.clear()
        for _, future in link.pings.values():
            if not future.done():
                future.set_exception(reason)
        link.pings.clear()
        if link.heartbeat_task is not None:
            link.heartbeat_task.cancel()
        link.mark_unusable(reason, link.hint_s)
        link.ended.set_result(None)
        self._links.discard(link)
        if self._link is link:
            self._link = None

    # ----------------------------------------------------------------- events

    def _dispatch(self, link: _Link, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            self._finish_call(link, event.stream_id, _response_outcome(event))
        elif isinstance(event, PushReceived):
            self.stats.pushes_received += 1
            assert self._pushes is not None
            self._pushes.put_nowait((link, event))
        elif isinstance(event, StreamErrorReceived):
            error = error_for(event.code, event.message, event.retry_after_ms)
            refused = event.code == ErrorCode.REFUSED_STREAM
            self._finish_call(link, event.stream_id, _Refused(error) if refused else error)
        elif isinstance(event, HelloAccepted):
            self._on_hello_ack(link, event.ack)
        elif isinstance(event, RequestReceived):
            self._on_request(link, event)
        elif isinstance(event, PongReceived):
            entry = link.pings.pop(event.payload, None)
            if entry is not None and not entry[1].done():
                rtt = time.perf_counter() - entry[0]
                self.stats.last_rtt_s = rtt
                entry[1].set_result(rtt)
        elif isinstance(event, GoAwayReceived):
            reason = error_for(event.code, event.message or "server is draining")
            log.info(
                "GOAWAY", extra={"code": reason.code_name, "after_ms": event.reconnect_after_ms}
            )
            link.mark_unusable(reason, event.reconnect_after_ms / 1000)
        elif isinstance(event, ConnectionErrorReceived):
            link.reason = error_for(event.code, event.message, event.retry_after_ms)
            link.hint_s = event.retry_after_ms / 1000
            link.rejected = not link.hello_ack.done()
            if link.rejected:
                link.hello_ack.set_exception(link.reason)
                link.hello_ack.exception()  # retrieved: connect() reports it
            link.mark_unusable(link.reason, link.hint_s)
        elif isinstance(event, StreamCancelled):
            task = link.served.pop(event.stream_id, None)
            if task is not None:
                task.cancel()
        elif isinstance(event, SettingsReceived):
            for key, value in event.settings:
                if key == Setting.HEARTBEAT_S and value > 0:
                    link.heartbeat_s = value
        elif isinstance(event, DictionaryReceived):
            self._server_dictionary = max(self._server_dictionary, event.dictionary.dict_id)
            self.stats.dictionaries_received += 1
            if self.dictionary_files is not None:
                try:
                    self.dictionary_files.save(event.dictionary)
                except OSError as exc:
                    log.warning("cannot store dictionary %d: %s", event.dictionary.dict_id, exc)
            self._save_state()

    def _on_hello_ack(self, link: _Link, ack: HelloAck) -> None:
        loop = asyncio.get_running_loop()
        link.opened_at = time.perf_counter()
        link.heartbeat_s = ack.heartbeat_s or DEFAULT_HEARTBEAT_S
        self._last_ack = ack
        if ack.resume_ticket:
            self._ticket = ack.resume_ticket
        self._server_dictionary = max(self._server_dictionary, ack.newest_dictionary)
        ssl_object = link.protocol.ssl_object
        if ssl_object is not None and ssl_object.session is not None:
            self._tls.resume_session = ssl_object.session
        stats = self.stats
        stats.connects += 1
        stats.resumed_sessions += int(ack.resumed)
        transport = link.protocol.transport
        if transport is not None and fastopen.syn_carried_data(transport.get_extra_info("socket")):
            stats.fast_open_connects += 1
        stats.handshake_s = link.opened_at - link.started_at
        stats.first_write_bytes = link.protocol.first_write_bytes
        stats.first_write_requests = link.protocol.first_write_frames.count(FrameType.REQUEST)
        assert link.conn.hello is not None
        stats.hello_bytes = len(encode_frame(FrameType.HELLO, 0, encode_hello(link.conn.hello)))
        stats.hello_ack_bytes = len(encode_frame(FrameType.HELLO_ACK, 0, encode_hello_ack(ack)))
        link.heartbeat_task = loop.create_task(self._heartbeat(link))
        if not link.hello_ack.done():
            link.hello_ack.set_result(ack)
        if self._link is link:
            self._open.set()
        self._save_state()

    def _maybe_retire(self, link: _Link) -> None:
        """Close a draining connection once nothing of ours is left on it."""
        if (
            link.unusable.done()
            and link.conn.draining
            and not link.calls
            and not link.served
            and not link.protocol.lost
        ):
            link.protocol.close()

    # ------------------------------------------------------------------ calls

    async def subscribe(self, *topics: str) -> int:
        """Receive topic pushes for ``topics`` (kept across reconnects); returns the count.

        Raises ``Forbidden`` (nothing subscribed) when the gateway's ``[topics] allow``
        rules do not give this device one of them; by default a device may join
        ``public.*`` topics and ``user.<its user id>.*``, ``device.<its device id>.*``."""
        count = await self._topic_call(SUBSCRIBE_OP, topics)
        self._topics.update(topics)  # only once the gateway took them
        return count

    async def unsubscribe(self, *topics: str) -> int:
        self._topics.difference_update(topics)
        return await self._topic_call(UNSUBSCRIBE_OP, topics)

    async def _topic_call(self, op: str, topics: Sequence[str]) -> int:
        response = await self.call(
            op, json.dumps({"topics": list(topics)}).encode(), idempotent=True
        )
        count = json.loads(response.body)["topics"]
        return int(count)

    def _resubscribe(self) -> None:
        # Subscriptions live on the connection: a new one starts with none.
        if self._topics:
            task = asyncio.get_running_loop().create_task(
                self._topic_call(SUBSCRIBE_OP, sorted(self._topics))
            )
            task.add_done_callback(_log_failure)

    async def call(
        self,
        op: str,
        body: bytes = b"",
        *,
        headers: Sequence[Header] = (),
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Response:
        """Call ``op`` on the backend and return its ``Response`` (status 0).

        Waits for a connection if there is none (within ``timeout``, default
        ``call_timeout_s``). A non-zero status or a stream error raises the
        matching ``ChannelError`` subclass; no answer in time raises
        ``Timeout``. With ``idempotent=True`` a call whose connection died
        before the answer is sent again on the next connection (up to twice);
        a call the server refused unprocessed (REFUSED_STREAM) is sent once more.
        """
        loop = asyncio.get_running_loop()
        timeout_s = self.call_timeout_s if timeout is None else timeout
        deadline = loop.time() + timeout_s
        frozen_headers = tuple(headers)
        refused = lost = 0
        self.stats.calls += 1
        while True:
            self._check_can_call()
            call = _Call(op, body, frozen_headers, loop.create_future())
            self._queue.append(call)
            if self._link is not None:
                self._pump(self._link)
            try:
                async with asyncio.timeout_at(deadline):
                    try:
                        return await call.future
                    except _Refused as exc:
                        if is_fatal(exc.error):
                            raise _fresh(exc.error) from None
                        if exc.counts:
                            if refused >= MAX_REFUSED_RETRIES:
                                raise Unavailable(
                                    ErrorCode.REFUSED_STREAM,
                                    f"{op}: refused again after a retry ({exc.error.message})",
                                    exc.error.retry_after_ms,
                                ) from None
                            refused += 1
                            await self._before_refused_retry(call, exc.error)
                    except _Lost as exc:
                        if not idempotent or lost >= MAX_LOST_RETRIES:
                            raise Unavailable(
                                ErrorCode.UNAVAILABLE,
                                f"{op}: connection lost before the answer ({exc.error.message})",
                            ) from None
                        lost += 1
            except TimeoutError:
                self._abandon(call)
                self.stats.call_errors += 1
                where = "no connection" if call.link is None else "sent, no answer"
                raise Timeout(
                    ErrorCode.TIMEOUT, f"{op}: no response within {timeout_s} s ({where})"
                ) from None
            except asyncio.CancelledError:
                self._abandon(call)
                raise
            except ChannelError:
                self.stats.call_errors += 1
                raise
            self.stats.calls_retried += 1

    def _check_can_call(self) -> None:
        if self._stopped is not None:
            raise _fresh(self._stopped)
        if self._closed:
            raise Unavailable(ErrorCode.UNAVAILABLE, "client is closed")

    async def _before_refused_retry(self, call: _Call, error: ChannelError) -> None:
        """Wait until a retry can succeed: a stream of ours ended there, or a new connection."""
        if error.retry_after_ms:
            await asyncio.sleep(error.retry_after_ms / 1000)
        link = call.link
        if link is not None and link.calls and not link.unusable.done():
            waiters: list[asyncio.Future[Any]] = [link.progress, link.unusable]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)

    def _pump(self, link: _Link) -> None:
        """Start waiting calls on ``link`` while it has free streams."""
        if not link.can_start_streams:
            return
        started = False
        while self._queue:
            call = self._queue[0]
            if call.future.done():
                self._queue.popleft()
                continue
            try:
                stream_id = link.conn.send_request(call.op, call.body, call.headers)
            except StreamsExhausted:
                break  # a finished stream pumps again
            except LocalProtocolError as exc:
                self._queue.popleft()
                call.future.set_exception(BadRequest(ErrorCode.BAD_REQUEST, str(exc)))
                continue
            self._queue.popleft()
            call.link = link
            call.stream_id = stream_id
            link.calls[stream_id] = call
            started = True
        if started:
            link.protocol.schedule_flush()

    def _finish_call(self, link: _Link, stream_id: int, outcome: Response | BaseException) -> None:
        call = link.calls.pop(stream_id, None)
        link.note_progress()
        if call is None or call.future.done():
            return
        if isinstance(outcome, Response):
            call.future.set_result(outcome)
        else:
            call.future.set_exception(outcome)

    def _abandon(self, call: _Call) -> None:
        link = call.link
        if link is None:
            return  # still queued: the pump skips done futures
        if link.calls.pop(call.stream_id, None) is not None and not link.protocol.lost:
            link.conn.send_cancel(call.stream_id)
            link.protocol.schedule_flush()
        self._maybe_retire(link)

    # ------------------------------------------------------------------ pings

    async def ping(self, timeout: float | None = None) -> float:
        """Send a PING on the current connection and return the round trip in seconds."""
        loop = asyncio.get_running_loop()
        timeout_s = self.call_timeout_s if timeout is None else timeout
        async with asyncio.timeout(timeout_s):
            link = await self._open_link()
            self._ping_counter += 1
            payload = struct.pack(">Q", self._ping_counter)
            future: asyncio.Future[float] = loop.create_future()
            link.pings[payload] = (time.perf_counter(), future)
            link.conn.send_ping(payload)
            self.stats.pings_sent += 1
            link.protocol.flush()
            return await future

    async def _open_link(self) -> _Link:
        while True:
            self._check_can_call()
            link = self._link
            if link is not None and link.open and not link.unusable.done():
                return link
            await self._open.wait()

    async def _heartbeat(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        protocol = link.protocol
        while not protocol.lost:
            interval = link.heartbeat_s
            idle_s = loop.time() - protocol.last_sent
            if idle_s < interval:
                await asyncio.sleep(interval - idle_s)
                continue
            if link.conn.closed:
                return
            link.conn.send_ping(b"")
            self.stats.pings_sent += 1
            protocol.flush()
            grace_s = interval * DEAD_AFTER_HEARTBEATS
            if not await protocol.wait_for_data(grace_s):
                log.info("connection dead: no answer to PING", extra={"after_s": grace_s})
                protocol.abort(
                    Unavailable(ErrorCode.UNAVAILABLE, f"no frame from the server for {grace_s} s")
                )
                return

    # ----------------------------------------------------------------- pushes

    async def _deliver_pushes(self) -> None:
        queue = self._pushes
        assert queue is not None
        while True:
            link, event = await queue.get()
            if self._dedupe.seen(event.message_id):
                self.stats.pushes_duplicate += 1
                link.protocol.ack(event.delivery_id)
                continue
            handler = self._push_handler
            if handler is None:
                continue
            try:
                result = handler(Push(event.message_id, event.headers, event.body))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.stats.push_handler_errors += 1
                log.exception("push handler failed; the push stays unacknowledged")
                continue
            self._dedupe.add(event.message_id)
            self.stats.pushes_delivered += 1
            link.protocol.ack(event.delivery_id)

    # --------------------------------------------------- backend -> device

    def _on_request(self, link: _Link, event: RequestReceived) -> None:
        handler = self._handlers.get(event.op)
        if handler is None:
            link.conn.send_error(event.stream_id, ErrorCode.NOT_FOUND, f"no handler for {event.op}")
            return
        request = Request(event.op, event.headers, event.body)
        serve = self._serve(link, event.stream_id, handler, request)
        link.served[event.stream_id] = asyncio.get_running_loop().create_task(serve)

    async def _serve(
        self, link: _Link, stream_id: int, handler: RequestHandler, request: Request
    ) -> None:
        error: ChannelError | None = None
        response = Response(0, (), b"")
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            response = result if isinstance(result, Response) else Response(0, (), bytes(result))
        except asyncio.CancelledError:
            link.served.pop(stream_id, None)
            raise
        except ChannelError as exc:
            error = exc
        except Exception as exc:
            log.exception("request handler failed", extra={"op": request.op})
            error = InternalError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:200])
        link.served.pop(stream_id, None)
        if link.protocol.lost or link.conn.closed:
            return
        self.stats.requests_served += 1
        try:
            if error is not None:
                link.conn.send_error(
                    stream_id, _wire_code(error.code), error.message[:200], error.retry_after_ms
                )
            else:
                link.conn.send_response(stream_id, response.body, response.headers, response.status)
        except LocalProtocolError as exc:
            link.conn.send_error(stream_id, ErrorCode.INTERNAL_ERROR, str(exc)[:200])
        link.protocol.schedule_flush()
        self._maybe_retire(link)

    # ------------------------------------------------------------------ state

    def _load_state(self) -> None:
        path = self.state_file
        if path is None or not path.exists():
            return
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("version") != STATE_FILE_VERSION:
                return
            if state.get("device_id") != self.device_id:
                return
            self._ticket = base64.urlsafe_b64decode(state.get("resume_ticket", ""))
            self._server_dictionary = int(state.get("server_dictionary", 0))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable state file %s: %s", path, exc)

    def _save_state(self) -> None:
        path = self.state_file
        if path is None:
            return
        state = {
            "version": STATE_FILE_VERSION,
            "device_id": self.device_id,
            "resume_ticket": base64.urlsafe_b64encode(self._ticket).decode(),
            "server_dictionary": self._server_dictionary,
        }
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, path)


def _response_outcome(event: ResponseReceived) -> Response | ChannelError:
    if event.status == 0:
        return Response(0, event.headers, event.body)
    return error_for(event.status, event.body.decode("utf-8", "replace"))


def _fresh(error: ChannelError) -> ChannelError:
    """A new exception like ``error`` (raising one instance many times piles up tracebacks)."""
    return type(error)(error.code, error.message, error.retry_after_ms)


def _wire_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL_ERROR


#: Longest token text accepted: a token is at most 2048 bytes (the server's limit).
_MAX_TOKEN_TEXT_CHARS = (2048 * 4 + 2) // 3
_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def token_bytes(token: bytes | bytearray | memoryview | str) -> bytes:
    """A device token as bytes, from its bytes or its base64url text (``channel token issue``)."""
    if isinstance(token, bytes | bytearray | memoryview):
        return bytes(token)
    if not isinstance(token, str):
        raise TypeError(
            f"token must be the text `channel token issue` prints (str) or bytes, "
            f"not {type(token).__name__}"
        )
    text = token.strip().encode("ascii", "replace")
    if len(text) > _MAX_TOKEN_TEXT_CHARS or len(text) % 4 == 1 or not _BASE64URL.issuperset(text):
        raise ValueError(
            "token text is not a base64url device token (A-Z a-z 0-9 - _, as "
            "`channel token issue` prints it)"
        )
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
