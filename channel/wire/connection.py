"""The MMTP connection: a sans-I/O state machine for either role.

Feed it bytes with ``receive_data`` and get events back; call ``send_*``
methods and collect the bytes to write with ``data_to_send``. It never
touches a socket, a loop or a clock, so the gateway, the SDK, the stress
tool and the tests all drive the same object.

On any protocol violation by the peer, ``receive_data`` queues an ERROR
frame for stream 0 and raises ``ProtocolError``; the caller writes out
``data_to_send()`` and closes the transport.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from channel.wire import messages as m
from channel.wire.body import RAW_BODY, BodyCodec, BodyUsage, EncodedBody
from channel.wire.connheaders import (
    apply_connection_update,
    check_connection_update,
    effective_request_headers,
    lift_connection_headers,
)
from channel.wire.dictionaries import MAX_DICTIONARY_ID, Dictionary
from channel.wire.errors import (
    ErrorCode,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolError,
    StreamsExhausted,
)
from channel.wire.events import (
    AckReceived,
    ConnectionErrorReceived,
    DictionaryReceived,
    Event,
    GoAwayReceived,
    HelloAccepted,
    HelloReceived,
    PingReceived,
    PongReceived,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    SettingsReceived,
    StreamCancelled,
    StreamErrorReceived,
)
from channel.wire.frames import (
    FLAG_CONN,
    FLAG_DICT_LAST,
    FLAG_SETTINGS_ACK,
    FrameParser,
    FrameType,
    RawFrame,
    encode_frame,
)
from channel.wire.headers import (
    Header,
    HeaderDecoder,
    HeaderEncoder,
    Headers,
    encode_context_free,
    header_list_size,
)
from channel.wire.hello import (
    MAX_HELLO_DICTIONARIES,
    Hello,
    HelloAck,
    decode_hello,
    decode_hello_ack,
    encode_hello,
    encode_hello_ack,
)
from channel.wire.limits import INITIAL_HEADER_TABLE_SIZE, Limits
from channel.wire.presets import known_preset
from channel.wire.state import CAN_START_STREAM, RECEIVABLE, Role, State, next_state
from channel.wire.typed import GENERIC_TABLE, TypedTable
from channel.wire.varint import decode_varint_complete, encode_varint

OP_HEADER = ":op"
MAX_PING_PAYLOAD = 8
#: What ``_remote_stream`` returns for a stream that is not open (None is a trace-id).
_NOT_OPEN = object()


class Setting:
    """SETTINGS identifiers (see the spec's SETTINGS table)."""

    HEADER_TABLE_SIZE = 1
    MAX_FRAME_SIZE = 2
    MAX_CONCURRENT_STREAMS = 3
    MAX_BODY_SIZE = 4
    HEARTBEAT_S = 5
    MAX_HEADER_LIST_SIZE = 6


@dataclass
class PreparedPush:
    """A push encoded once for many connections (broadcast, topic fan-out).

    Its header block uses only context-free HPACK representations (static
    table names, literals without indexing), so the same bytes are valid on
    every connection whatever its dynamic table holds; the body is
    compressed once per dictionary id and cached.
    """

    message_id: bytes
    header_block: bytes
    body: bytes
    codec: BodyCodec
    #: RFC 7541 size of the headers, checked against each peer's limit.
    header_list_size: int = 0
    _tails: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    _bodies: dict[int, EncodedBody] = field(default_factory=dict)

    @classmethod
    def build(
        cls, message_id: bytes, body: bytes, headers: Sequence[Header], codec: BodyCodec
    ) -> PreparedPush:
        """Encode a push once, for ``send_prepared_push`` on any connection."""
        fields = tuple(headers)
        return cls(message_id, encode_context_free(fields), body, codec, header_list_size(fields))

    def _body(self, dict_id: int) -> EncodedBody:
        encoded = self._bodies.get(dict_id)
        if encoded is None:
            encoded = self.codec.encode(self.body, dict_id)
            self._bodies[dict_id] = encoded
        return encoded

    def body_for(self, dict_id: int) -> EncodedBody:
        """The body as it goes to a connection using ``dict_id`` (encoded once per id)."""
        return self._body(dict_id)

    def tail_for(self, dict_id: int, size_update: bytes = b"") -> tuple[int, bytes]:
        """Flags and payload after the delivery id, for a connection using ``dict_id``.

        ``size_update`` is an HPACK dynamic table size update that connection's
        encoder still owes; it must open the block, so such a tail is not cached.
        """
        tail = None if size_update else self._tails.get(dict_id)
        if tail is None:
            encoded = self._body(dict_id)
            block = size_update + self.header_block
            flags, rest = m.encode_tail(block, encoded.data, encoded.compressed)
            tail = (flags, encode_varint(len(self.message_id)) + self.message_id + rest)
            if not size_update:
                self._tails[dict_id] = tail
        return tail


class FrameCounters:
    """Frames and bytes by type and direction, shared by all connections of a process.

    One object per process (not per connection) so counting costs no memory
    per device; metrics exporters read the plain lists at scrape time.
    """

    __slots__ = ("received", "received_bytes", "sent", "sent_bytes")

    def __init__(self) -> None:
        size = len(FrameType)
        self.sent = [0] * size
        self.sent_bytes = [0] * size
        self.received = [0] * size
        self.received_bytes = [0] * size


@dataclass
class _DictTransfer:
    dict_id: int
    total_size: int
    data: bytearray


class Connection:
    """One endpoint of an MMTP connection (``Role.CLIENT`` or ``Role.SERVER``)."""

    __slots__ = (
        "_app_usage",
        "_cancelled",
        "_conn_headers",
        "_conn_names",
        "_counters",
        "_decoder",
        "_dict_transfer",
        "_encoder",
        "_encoder_table_size_cap",
        "_first_local_id",
        "_goaway_received",
        "_goaway_sent",
        "_last_delivery_id",
        "_local_streams",
        "_next_delivery_id",
        "_outbound",
        "_parser",
        "_recv_epoch_ms",
        "_remote_streams",
        "_send_epoch_ms",
        "_send_typed_headers",
        "_settings_awaiting_ack",
        "_typed",
        "_unacked",
        "_usage",
        "body_codec",
        "hello",
        "hello_ack",
        "limits",
        "outgoing_dictionary",
        "peer_max_body_size",
        "peer_max_concurrent_streams",
        "peer_max_frame_size",
        "peer_max_header_list_size",
        "role",
        "state",
    )

    def __init__(
        self,
        role: Role,
        *,
        limits: Limits | None = None,
        body_codec: BodyCodec | None = None,
        encoder_table_size_cap: int = INITIAL_HEADER_TABLE_SIZE,
        send_typed_headers: bool = True,
        frame_counters: FrameCounters | None = None,
        connection_header_names: frozenset[str] = frozenset(),
        usage_for_app: Callable[[str], BodyUsage | None] | None = None,
    ) -> None:
        """``connection_header_names`` (client): headers sent as connection-scoped ones
        besides those the preset names. ``usage_for_app`` (server): where the bodies
        of a device of this app are counted, chosen at its HELLO (None: not counted).
        """
        self.role = role
        self.limits = limits or Limits()
        self.body_codec = body_codec or BodyCodec()
        self.state = State.IDLE if role is Role.CLIENT else State.AWAIT_HELLO
        self.hello: Hello | None = None
        self.hello_ack: HelloAck | None = None
        self._encoder_table_size_cap = encoder_table_size_cap
        # Receivers always accept typed fields; turning them off on the sending
        # side exists for measurement and for peers that log raw header blocks.
        self._send_typed_headers = send_typed_headers
        self._counters = frame_counters
        # A server reads its first frame, the HELLO, under max_hello_size (_on_hello lifts it).
        first_frame_size = self.limits.max_frame_size
        if role is Role.SERVER:
            first_frame_size = min(first_frame_size, self.limits.max_hello_size)
        self._parser = FrameParser(first_frame_size)
        # Frames queued for the next data_to_send (None: nothing queued).
        self._outbound: list[bytes] | None = None
        self._encoder: HeaderEncoder | None = None
        self._decoder: HeaderDecoder | None = None
        defaults = Limits()
        self.peer_max_frame_size = defaults.max_frame_size
        self.peer_max_body_size = defaults.max_body_size
        self.peer_max_concurrent_streams = defaults.max_concurrent_streams
        self.peer_max_header_list_size = defaults.max_header_list_size
        # SETTINGS we sent that lower our own limits wait for the peer's ACK.
        self._settings_awaiting_ack: tuple[tuple[tuple[int, int], ...], ...] = ()
        self.outgoing_dictionary = 0
        self._first_local_id = 1 if role is Role.CLIENT else 2
        # Open streams, each with its request's trace-id (for the RESPONSE echo).
        # These tables exist only while they hold something (None otherwise): most
        # connections of a gateway are idle, and a dict that ever held an entry
        # keeps its table (~220 bytes) after the entry is gone.
        self._local_streams: dict[int, str | None] | None = None
        # Dicts used as sets: a dict costs less than a set.
        self._cancelled: dict[int, None] | None = None
        self._remote_streams: dict[int, str | None] | None = None
        # Epochs of typed timestamps, one per direction (see typed.py).
        self._send_epoch_ms = 0
        self._recv_epoch_ms = 0
        self._goaway_sent = False
        self._goaway_received = False
        self._next_delivery_id = 1
        self._last_delivery_id = 0
        self._unacked: dict[int, None] | None = None
        self._dict_transfer: _DictTransfer | None = None
        # The preset's typed fields (set with the preset at HELLO).
        self._typed: TypedTable = GENERIC_TABLE
        # Connection-scoped headers in force (client→server; None: none).
        self._conn_headers: tuple[Header, ...] | None = None
        self._conn_names = connection_header_names
        self._app_usage = usage_for_app
        self._usage: BodyUsage | None = None

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, coalesced for one write."""
        outbound = self._outbound
        if outbound is None:
            return b""
        self._outbound = None
        return outbound[0] if len(outbound) == 1 else b"".join(outbound)

    def _queue(self, frame_type: FrameType, flags: int, payload: bytes) -> None:
        frame = encode_frame(frame_type, flags, payload)
        if self._outbound is None:
            self._outbound = [frame]
        else:
            self._outbound.append(frame)
        if self._counters is not None:
            self._counters.sent[frame_type] += 1
            self._counters.sent_bytes[frame_type] += len(frame)

    # ------------------------------------------------------------- properties

    @property
    def has_output(self) -> bool:
        """Frames are queued for ``data_to_send``."""
        return self._outbound is not None

    @property
    def open_local_streams(self) -> frozenset[int]:
        return frozenset(self._local_streams or ())

    @property
    def open_remote_streams(self) -> frozenset[int]:
        return frozenset(self._remote_streams or ())

    @property
    def unacked_deliveries(self) -> frozenset[int]:
        return frozenset(self._unacked or ())

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def draining(self) -> bool:
        return self._goaway_sent or self._goaway_received

    # -------------------------------------------------------------- handshake

    def send_hello(self, hello: Hello, *, pipeline_dictionary: int = 0) -> None:
        """Client: open the conversation. Requests may follow at once.

        ``pipeline_dictionary`` is a dictionary the client knows the server
        holds (from an earlier HELLO_ACK); requests sent before this
        connection's HELLO_ACK are compressed with it (0: no dictionary).
        """
        self._require_role(Role.CLIENT, "send HELLO")
        if pipeline_dictionary and pipeline_dictionary not in self.body_codec.dictionaries:
            raise LocalProtocolError(f"pipeline dictionary {pipeline_dictionary} is not held")
        if len(hello.dictionaries) > MAX_HELLO_DICTIONARIES:
            raise LocalProtocolError(
                f"a HELLO lists at most {MAX_HELLO_DICTIONARIES} dictionaries (send the newest)"
            )
        try:
            preset = known_preset(hello.preset_id)
        except ProtocolError as exc:
            raise LocalProtocolError(exc.message) from None
        # What we announce is what we enforce: the limits come from ours.
        hello = dataclasses.replace(
            hello,
            header_table_size=self.limits.header_table_size,
            max_frame_size=self.limits.max_frame_size,
            max_header_list_size=self.limits.max_header_list_size,
            max_body_size=self.limits.max_body_size,
            max_concurrent_streams=self.limits.max_concurrent_streams,
        )
        self.state = next_state(self.role, self.state, "send_hello", by_peer=False)
        self.hello = hello
        self._encoder = HeaderEncoder(hello.preset_id, self._encoder_table_size_cap)
        self._decoder = HeaderDecoder(
            hello.preset_id, hello.header_table_size, self.limits.max_header_list_size
        )
        self.outgoing_dictionary = pipeline_dictionary
        self._send_epoch_ms = hello.client_time_ms
        self._typed = preset.typed_table
        if preset.connection:
            self._conn_names = self._conn_names | frozenset(preset.connection)
        self._queue(FrameType.HELLO, 0, encode_hello(hello))

    def accept(
        self,
        *,
        session_id: bytes = b"",
        resume_ticket: bytes = b"",
        heartbeat_s: int = 0,
        server_time_ms: int = 0,
        resumed: bool = False,
        newest_dictionary: int | None = None,
    ) -> HelloAck:
        """Server: the device is verified; send HELLO_ACK with our limits.

        ``newest_dictionary`` is the dictionary announced to the device (its
        app's current one); None announces the newest the codec holds.
        """
        self._require_role(Role.SERVER, "accept")
        if newest_dictionary is not None and newest_dictionary not in (
            0,
            *self.body_codec.dictionaries.ids,
        ):
            raise LocalProtocolError(f"dictionary {newest_dictionary} is not held")
        self.state = next_state(self.role, self.state, "accept", by_peer=False)
        assert self.hello is not None
        if newest_dictionary is None:
            newest = self.body_codec.dictionaries.newest
            newest_dictionary = newest.dict_id if newest else 0
        ack = HelloAck(
            session_id=session_id,
            resume_ticket=resume_ticket,
            heartbeat_s=heartbeat_s,
            preset_id=self.hello.preset_id,
            newest_dictionary=newest_dictionary,
            header_table_size=self.limits.header_table_size,
            max_frame_size=self.limits.max_frame_size,
            max_concurrent_streams=self.limits.max_concurrent_streams,
            max_header_list_size=self.limits.max_header_list_size,
            max_body_size=self.limits.max_body_size,
            server_time_ms=server_time_ms,
            resumed=resumed,
            max_connection_header_list_size=self.limits.max_connection_header_list_size,
        )
        self.hello_ack = ack
        self._send_epoch_ms = server_time_ms
        self._queue(FrameType.HELLO_ACK, 0, encode_hello_ack(ack))
        return ack

    def forget_credentials(self) -> None:
        """Drop the HELLO's token and ticket once verified: no secret outlives its use."""
        if self.hello is not None and (self.hello.token or self.hello.resume_ticket):
            self.hello = dataclasses.replace(self.hello, token=b"", resume_ticket=b"")
        if self.hello_ack is not None and self.hello_ack.resume_ticket:
            self.hello_ack = dataclasses.replace(self.hello_ack, resume_ticket=b"")

    def reject(self, code: ErrorCode, message: str, retry_after_ms: int = 0) -> None:
        """Server: refuse the device (bad token, overload); the connection ends."""
        self._require_role(Role.SERVER, "reject")
        self.close_with_error(code, message, retry_after_ms)

    def close_with_error(self, code: ErrorCode, message: str, retry_after_ms: int = 0) -> None:
        """End the connection with ERROR on stream 0 (write it out, then close)."""
        if self.state is State.CLOSED:
            return
        self._queue(FrameType.ERROR, 0, m.encode_error(0, code, retry_after_ms, message))
        self.state = State.CLOSED

    # ---------------------------------------------------------------- streams

    def send_request(self, op: str, body: bytes = b"", headers: Sequence[Header] = ()) -> int:
        """Start a stream with a REQUEST; return its stream id."""
        if not op:
            raise LocalProtocolError("a REQUEST needs a non-empty operation type")
        if self.state not in CAN_START_STREAM[self.role] or self.draining:
            raise LocalProtocolError(f"cannot start a stream in state {self.state.value}")
        local = self._local_streams
        if local is None:
            local = self._local_streams = {}
        if len(local) >= self.peer_max_concurrent_streams:
            raise StreamsExhausted(
                f"peer allows {self.peer_max_concurrent_streams} concurrent streams"
            )
        stream_id = self._first_local_id
        while stream_id in local:
            stream_id += 2
        own: Sequence[Header] = headers
        update: tuple[Header, ...] = ()
        after = self._conn_headers
        if self._conn_names and self.role is Role.CLIENT:
            own, update, after = lift_connection_headers(
                headers, self._conn_names, self._conn_headers
            )
        all_headers = ((OP_HEADER, op), *own)
        effective = effective_request_headers(after, all_headers)
        if update:
            self._check_connection_headers(after)
        prefix = encode_varint(stream_id)
        flags, tail = self._encode_tail(
            prefix, all_headers, body, conn_update=update, list_size=header_list_size(effective)
        )
        self._conn_headers = after
        local[stream_id] = self._typed.echo_value_of(effective)
        self._queue(FrameType.REQUEST, flags, prefix + tail)
        return stream_id

    def _check_connection_headers(self, headers: tuple[Header, ...] | None) -> None:
        limit = (
            self.hello_ack.max_connection_header_list_size
            if self.hello_ack is not None
            else Limits.max_connection_header_list_size
        )
        size = header_list_size(headers or ())
        if size > limit:
            raise MessageTooLarge(
                f"connection headers of {size} bytes exceed the server's "
                f"max_connection_header_list_size {limit}"
            )

    @property
    def connection_headers(self) -> tuple[Header, ...]:
        """The connection-scoped headers in force (spec 9.11)."""
        return self._conn_headers or ()

    def send_response(
        self, stream_id: int, body: bytes = b"", headers: Sequence[Header] = (), status: int = 0
    ) -> bool:
        """Answer a peer's stream; False if it was cancelled or already answered.

        ``MessageTooLarge`` if the answer exceeds the peer's limits: the stream
        then stays open, for ``send_error`` to end it.
        """
        request_trace_id = self._remote_stream(stream_id)
        if request_trace_id is _NOT_OPEN:
            return False
        prefix = encode_varint(stream_id) + encode_varint(status)
        trace_id = request_trace_id if isinstance(request_trace_id, str) else None
        # Encoded (and checked against the peer's limits) before the stream is closed.
        flags, tail = self._encode_tail(prefix, tuple(headers), body, trace_id)
        self._close_remote_stream(stream_id)
        self._queue(FrameType.RESPONSE, flags, prefix + tail)
        return True

    def send_error(
        self, stream_id: int, code: ErrorCode, message: str = "", retry_after_ms: int = 0
    ) -> bool:
        """End a peer's stream with an error instead of a RESPONSE."""
        if self._remote_stream(stream_id) is _NOT_OPEN:
            return False
        self._close_remote_stream(stream_id)
        self._queue(FrameType.ERROR, 0, m.encode_error(stream_id, code, retry_after_ms, message))
        return True

    def send_cancel(self, stream_id: int) -> None:
        """Give up on a stream we started; its id stays taken until the peer's final frame."""
        if stream_id not in (self._local_streams or ()):
            return
        if self._cancelled is None:
            self._cancelled = {}
        elif stream_id in self._cancelled:
            return
        self._cancelled[stream_id] = None
        self._queue(FrameType.CANCEL, 0, encode_varint(stream_id))

    def _remote_stream(self, stream_id: int) -> object:
        """The trace-id of a peer's open stream's request (None: none), or ``_NOT_OPEN``."""
        if self.state not in (State.OPEN, State.CLOSING):
            raise LocalProtocolError(f"cannot answer streams in state {self.state.value}")
        remote = self._remote_streams
        if remote is None:
            return _NOT_OPEN
        return remote.get(stream_id, _NOT_OPEN)

    def _close_remote_stream(self, stream_id: int) -> None:
        remote = self._remote_streams
        assert remote is not None
        del remote[stream_id]
        if not remote:
            self._remote_streams = None

    def _encode_tail(
        self,
        prefix: bytes,
        headers: Headers,
        body: bytes,
        echo_value: str | None = None,
        *,
        conn_update: tuple[Header, ...] = (),
        list_size: int | None = None,
    ) -> tuple[int, bytes]:
        """Flags and payload after ``prefix``. ``conn_update`` is a connection header
        block's fields (REQUEST); ``list_size`` the size of the list the peer will
        decode, when it is not ``headers``' (connection headers re-attached)."""
        assert self._encoder is not None
        if len(body) > self.peer_max_body_size:
            raise MessageTooLarge(
                f"body of {len(body)} bytes exceeds the peer's max_body_size "
                f"{self.peer_max_body_size}"
            )
        encoded = self.body_codec.encode(body, self.outgoing_dictionary)
        # Checked before HPACK runs: once the encoder's table has changed the
        # frame must go out, or both sides' tables disagree for good. A string
        # literal is never longer than its octets plus a 5-byte length.
        if list_size is None:
            list_size = header_list_size(headers)
        if list_size > self.peer_max_header_list_size:
            raise MessageTooLarge(
                f"header list of {list_size} bytes exceeds the peer's max_header_list_size "
                f"{self.peer_max_header_list_size}"
            )
        fields = (*headers, *conn_update)
        header_bound = header_list_size(fields) - 20 * len(fields) + 8 * (1 + bool(conn_update))
        if len(prefix) + len(encoded.data) + header_bound > self.peer_max_frame_size:
            raise MessageTooLarge(
                f"message of ~{len(encoded.data) + header_bound} bytes exceeds the peer's "
                f"max_frame_size {self.peer_max_frame_size}"
            )
        if self._send_typed_headers:
            hpack_headers, typed = self._typed.split(headers, self._send_epoch_ms, echo_value)
        else:
            hpack_headers, typed = headers, b""
        header_block = self._encoder.encode(hpack_headers) if hpack_headers else b""
        conn_block = b""
        if conn_update:
            conn_block = encode_context_free(conn_update, self._encoder.never_indexed)
        if self._usage is not None:
            dict_id = self.outgoing_dictionary if encoded.compressed else RAW_BODY
            self._usage.sent(dict_id, len(body), len(encoded.data))
        return m.encode_tail(header_block, encoded.data, encoded.compressed, typed, conn_block)

    # ------------------------------------------------------------------ pushes

    def send_push(self, message_id: bytes, body: bytes, headers: Sequence[Header] = ()) -> int:
        """Server: deliver a push; return its delivery id (acknowledged by ACK)."""
        self._require_pushable(message_id)
        delivery_id = self._next_delivery_id
        prefix = encode_varint(delivery_id)
        msg_id = encode_varint(len(message_id)) + message_id
        flags, tail = self._encode_tail(prefix + msg_id, tuple(headers), body)
        # Taken only once encoding succeeded: a refused push leaves no phantom delivery.
        self._take_delivery_id()
        self._queue(FrameType.PUSH, flags, prefix + msg_id + tail)
        return delivery_id

    def prepare_push(
        self, message_id: bytes, body: bytes, headers: Sequence[Header] = ()
    ) -> PreparedPush:
        """Encode a push once for ``send_prepared_push`` on many connections."""
        return PreparedPush.build(message_id, body, headers, self.body_codec)

    def send_prepared_push(self, prepared: PreparedPush) -> int:
        self._require_pushable(prepared.message_id)
        if len(prepared.body) > self.peer_max_body_size:
            raise MessageTooLarge("push body exceeds the peer's max_body_size")
        if prepared.header_list_size > self.peer_max_header_list_size:
            raise MessageTooLarge("push headers exceed the peer's max_header_list_size")
        assert self._encoder is not None
        # Checked before taking the encoder's owed size update, which must then go out.
        flags, tail = prepared.tail_for(self.outgoing_dictionary)
        if len(tail) + 16 > self.peer_max_frame_size:
            raise MessageTooLarge("push exceeds the peer's max_frame_size")
        size_update = self._encoder.take_size_update()
        if size_update:
            flags, tail = prepared.tail_for(self.outgoing_dictionary, size_update)
        if self._usage is not None:
            body = prepared.body_for(self.outgoing_dictionary)
            dict_id = self.outgoing_dictionary if body.compressed else RAW_BODY
            self._usage.sent(dict_id, len(prepared.body), len(body.data))
        delivery_id = self._take_delivery_id()
        self._queue(FrameType.PUSH, flags, encode_varint(delivery_id) + tail)
        return delivery_id

    def _require_pushable(self, message_id: bytes) -> None:
        self._require_role(Role.SERVER, "send PUSH")
        if self.state not in (State.OPEN, State.CLOSING):
            raise LocalProtocolError(f"cannot push in state {self.state.value}")
        if not 1 <= len(message_id) <= self.limits.max_message_id_length:
            raise LocalProtocolError(
                f"message id must be 1..{self.limits.max_message_id_length} bytes"
            )

    def _take_delivery_id(self) -> int:
        delivery_id = self._next_delivery_id
        self._next_delivery_id += 1
        if self._unacked is None:
            self._unacked = {}
        self._unacked[delivery_id] = None
        return delivery_id

    def send_ack(self, *delivery_ids: int) -> None:
        """Client: acknowledge pushes (batch several ids in one frame)."""
        self._require_role(Role.CLIENT, "send ACK")
        self._require_open("ACK")
        for start in range(0, len(delivery_ids), self.limits.max_acks_per_frame):
            chunk = delivery_ids[start : start + self.limits.max_acks_per_frame]
            self._queue(FrameType.ACK, 0, m.encode_ack(chunk))

    # ------------------------------------------------------------ connection

    def _require_open(self, what: str) -> None:
        if self.state not in (State.OPEN, State.CLOSING):
            raise LocalProtocolError(f"cannot send {what} in state {self.state.value}")

    def send_ping(self, payload: bytes = b"") -> None:
        self._require_open("PING")
        if len(payload) > MAX_PING_PAYLOAD:
            raise LocalProtocolError(f"PING payload is at most {MAX_PING_PAYLOAD} bytes")
        self._queue(FrameType.PING, 0, payload)

    def send_settings(self, settings: Sequence[tuple[int, int]]) -> None:
        """Announce changed receive limits (or a new heartbeat) to the peer.

        A raised limit applies to what we accept at once; a lowered one only
        after the peer's ACK, since frames it sent before seeing ours may
        still be on their way.
        """
        self._require_open("SETTINGS")
        pairs = tuple(settings)
        problem = m.settings_problem(pairs)
        if problem:
            raise LocalProtocolError(problem)
        for key, value in pairs:
            problem = _setting_problem(key, value)
            if problem:
                raise LocalProtocolError(f"SETTINGS {key}={value}: {problem}")
        lowered = []
        for key, value in pairs:
            # A later value supersedes any lowering of the same key still awaiting its ACK.
            self._settings_awaiting_ack = tuple(
                tuple(p for p in pending if p[0] != key) for pending in self._settings_awaiting_ack
            )
            if self._own_setting_raises(key, value):
                self._apply_own_setting(key, value)
            else:
                lowered.append((key, value))
        self._settings_awaiting_ack = (*self._settings_awaiting_ack, tuple(lowered))
        self._queue(FrameType.SETTINGS, 0, m.encode_settings(pairs))

    _OWN_LIMITS: ClassVar[dict[int, str]] = {
        Setting.HEADER_TABLE_SIZE: "header_table_size",
        Setting.MAX_FRAME_SIZE: "max_frame_size",
        Setting.MAX_CONCURRENT_STREAMS: "max_concurrent_streams",
        Setting.MAX_BODY_SIZE: "max_body_size",
        Setting.MAX_HEADER_LIST_SIZE: "max_header_list_size",
    }

    def _own_setting_raises(self, key: int, value: int) -> bool:
        field_name = self._OWN_LIMITS.get(key)
        return field_name is not None and value >= getattr(self.limits, field_name)

    def _apply_own_setting(self, key: int, value: int) -> None:
        field_name = self._OWN_LIMITS.get(key)
        if field_name is None:
            return
        self.limits = dataclasses.replace(self.limits, **{field_name: value})
        self._parser.max_frame_size = self.limits.max_frame_size
        if key == Setting.HEADER_TABLE_SIZE and self._decoder is not None:
            self._decoder.allow_table_size(value)
        if key == Setting.MAX_HEADER_LIST_SIZE and self._decoder is not None:
            self._decoder.max_header_list_size = value

    def send_goaway(
        self,
        code: ErrorCode = ErrorCode.NO_ERROR,
        *,
        reconnect_after_ms: int = 0,
        alternate_endpoint: str = "",
        message: str = "",
    ) -> None:
        """Start draining: the peer should open no new streams and reconnect later."""
        self.state = next_state(self.role, self.state, "goaway", by_peer=False)
        self._goaway_sent = True
        self._queue(
            FrameType.GOAWAY,
            0,
            m.encode_goaway(code, reconnect_after_ms, alternate_endpoint, message),
        )

    def send_dictionary(self, dictionary: Dictionary) -> None:
        """Server: deliver a whole dictionary now, in chunks of (peer max_frame_size - 32)."""
        offset = 0
        while offset < len(dictionary.content):
            offset = self.send_dictionary_chunk(dictionary, offset)

    def send_dictionary_chunk(
        self, dictionary: Dictionary, offset: int, max_chunk_bytes: int | None = None
    ) -> int:
        """Server: send the DICT chunk of ``dictionary`` starting at ``offset``; return
        the next offset (``len(content)``: that was the last chunk, and frames sent
        after it are compressed with the dictionary when its id is the larger).

        Chunks are at most (peer ``max_frame_size`` - 32) bytes, and at most
        ``max_chunk_bytes``, so a gateway can pace a delivery between other frames.
        """
        self._require_role(Role.SERVER, "send DICT")
        if self.state not in (State.OPEN, State.CLOSING):
            raise LocalProtocolError(f"cannot send DICT in state {self.state.value}")
        content = dictionary.content
        if not 0 <= offset < len(content):
            raise LocalProtocolError(f"DICT offset {offset} is outside the dictionary")
        # We hold what we deliver: later frames are compressed with it.
        self.body_codec.dictionaries.add(dictionary)
        chunk_size = self.peer_max_frame_size - 32
        if max_chunk_bytes is not None:
            chunk_size = max(1, min(chunk_size, max_chunk_bytes))
        end = min(len(content), offset + chunk_size)
        self._queue(
            FrameType.DICT,
            FLAG_DICT_LAST if end == len(content) else 0,
            m.encode_dict_chunk(dictionary.dict_id, len(content), offset, content[offset:end]),
        )
        if end == len(content):
            self.outgoing_dictionary = max(self.outgoing_dictionary, dictionary.dict_id)
        return end

    def _require_role(self, role: Role, action: str) -> None:
        if self.role is not role:
            raise LocalProtocolError(f"only the {role.value} may {action}")

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Process bytes from the peer; return the events they carried."""
        return self.receive_frames(data, None)[0]

    def receive_frames(
        self, data: bytes | bytearray | memoryview, max_frames: int | None
    ) -> tuple[list[Event], bool]:
        """Like ``receive_data``, processing at most ``max_frames`` frames (None: all).

        Returns the events and whether complete frames may still be buffered:
        then ``receive_frames(b"", n)`` goes on. This lets an I/O adapter bound
        the work one peer causes at a time (the gateway budgets each device's
        CPU time between frames).
        """
        events: list[Event] = []
        if self.closed:
            return events, False
        parser = self._parser
        try:
            if self.state is State.AWAIT_HELLO and max_frames != 0:
                # The HELLO alone first, under max_hello_size; the frames behind it
                # are read under the limits it sets.
                hello = parser.feed(data, 1)
                data = b""
                for frame in hello:
                    self._handle(frame, events)
                if not hello or self.closed:
                    return events, False
                if max_frames is not None:
                    max_frames -= 1
            frames = parser.feed(data, max_frames)
            for frame in frames:
                self._handle(frame, events)
                if self.closed:
                    return events, False
        except ProtocolError as exc:
            self.close_with_error(exc.code, exc.message)
            raise
        more = max_frames is not None and len(frames) == max_frames and parser.buffered_bytes > 0
        return events, more

    def _handle(self, frame: RawFrame, events: list[Event]) -> None:
        if self._counters is not None:
            self._counters.received[frame.frame_type] += 1
            self._counters.received_bytes[frame.frame_type] += len(frame.payload)
        allowed = RECEIVABLE.get((self.role, self.state), frozenset())
        if frame.frame_type not in allowed:
            raise ProtocolError(
                ErrorCode.STATE_ERROR,
                f"{self.role.value} cannot receive {frame.frame_type.name} in state "
                f"{self.state.value}",
            )
        _HANDLERS[frame.frame_type](self, frame, events)

    def _on_hello(self, frame: RawFrame, events: list[Event]) -> None:
        hello = decode_hello(frame.payload, self.limits)
        self._typed = known_preset(hello.preset_id).typed_table
        self._parser.max_frame_size = self.limits.max_frame_size
        self.hello = hello
        self._decoder = HeaderDecoder(
            hello.preset_id, self.limits.header_table_size, self.limits.max_header_list_size
        )
        self._encoder = HeaderEncoder(hello.preset_id, self._encoder_table_size_cap)
        self._encoder.use_peer_table_size(hello.header_table_size)
        self.peer_max_frame_size = hello.max_frame_size
        self.peer_max_body_size = hello.max_body_size
        self.peer_max_concurrent_streams = hello.max_concurrent_streams
        self.peer_max_header_list_size = hello.max_header_list_size
        held = [d for d in hello.dictionaries if d in self.body_codec.dictionaries]
        self.outgoing_dictionary = max(held, default=0)
        self._recv_epoch_ms = hello.client_time_ms
        if self._app_usage is not None:
            self._usage = self._app_usage(hello.app_id)
            self._app_usage = None
        self.state = next_state(self.role, self.state, "recv_hello", by_peer=True)
        events.append(HelloReceived(hello))

    def _on_hello_ack(self, frame: RawFrame, events: list[Event]) -> None:
        ack = decode_hello_ack(frame.payload)
        assert self.hello is not None and self._encoder is not None
        if ack.preset_id != self.hello.preset_id:
            raise ProtocolError(
                ErrorCode.UNKNOWN_PRESET,
                f"HELLO_ACK preset {ack.preset_id} differs from the HELLO's {self.hello.preset_id}",
            )
        self.hello_ack = ack
        self._recv_epoch_ms = ack.server_time_ms
        self._encoder.use_peer_table_size(ack.header_table_size)
        self.peer_max_frame_size = ack.max_frame_size
        self.peer_max_body_size = ack.max_body_size
        self.peer_max_concurrent_streams = ack.max_concurrent_streams
        self.peer_max_header_list_size = ack.max_header_list_size
        usable = [
            d
            for d in self.body_codec.dictionaries.ids
            if d <= ack.newest_dictionary and d in self.hello.dictionaries
        ]
        self.outgoing_dictionary = max(usable, default=0)
        self.state = next_state(self.role, self.state, "recv_hello_ack", by_peer=True)
        events.append(HelloAccepted(ack))

    def _decode_message(
        self, payload: bytes, offset: int, flags: int, echo_value: str | None = None
    ) -> tuple[Headers, bytes]:
        """Header block, typed section and body of a RESPONSE or PUSH."""
        tail = m.decode_tail(payload, offset, flags)
        headers = self._decode_block(tail.header_block)
        headers = self._decode_typed(tail, headers, echo_value, header_list_size(headers))
        return headers, self._decode_body(tail)

    def _decode_block(self, block: bytes) -> Headers:
        assert self._decoder is not None
        return self._decoder.decode(block) if block else ()

    def _decode_typed(
        self, tail: m.MessageTail, headers: Headers, echo_value: str | None, used: int
    ) -> Headers:
        if not tail.typed_section:
            return headers
        budget = self.limits.max_header_list_size - used
        typed = self._typed.decode(tail.typed_section, self._recv_epoch_ms, echo_value, budget)
        return (*headers, *typed)

    def _decode_body(self, tail: m.MessageTail) -> bytes:
        usage = self._usage
        if not tail.compressed:
            if len(tail.body) > self.limits.max_body_size:
                raise ProtocolError(ErrorCode.BODY_TOO_LARGE, "raw body exceeds max_body_size")
            if usage is not None:
                usage.received(RAW_BODY, len(tail.body), len(tail.body))
            return tail.body
        body = self.body_codec.decode(
            tail.body, self.limits.max_body_size, self.limits.max_zstd_window_size
        )
        if usage is not None:
            usage.received(decode_varint_complete(tail.body, 0)[0], len(body), len(tail.body))
        return body

    def _decode_request(
        self, payload: bytes, offset: int, flags: int
    ) -> tuple[Headers, bytes, tuple[Header, ...] | None]:
        """A REQUEST's effective headers, body and the connection headers after it,
        checked in the order of spec section 6.4."""
        if flags & FLAG_CONN and self.role is Role.CLIENT:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONN flag on a server's REQUEST")
        tail = m.decode_tail(payload, offset, flags)
        own = self._decode_block(tail.header_block)
        connection = self._conn_headers
        if tail.conn_block:
            update = self._decode_block(tail.conn_block)
            check_connection_update(update)
            connection = apply_connection_update(connection, update)
            size = header_list_size(connection or ())
            limit = self.limits.max_connection_header_list_size
            if size > limit:
                raise ProtocolError(
                    ErrorCode.HEADER_LIST_TOO_LARGE,
                    f"connection headers of {size} bytes exceed "
                    f"max_connection_header_list_size {limit}",
                )
        own = self._decode_typed(tail, own, None, header_list_size(own))
        headers = effective_request_headers(connection, own)
        if connection and header_list_size(headers) > self.limits.max_header_list_size:
            raise ProtocolError(
                ErrorCode.HEADER_LIST_TOO_LARGE,
                "request with its connection headers exceeds max_header_list_size "
                f"{self.limits.max_header_list_size}",
            )
        body = self._decode_body(tail)
        if not own or own[0][0] != OP_HEADER or not own[0][1]:
            raise ProtocolError(ErrorCode.FIELD_ERROR, "REQUEST must start with an :op header")
        return headers, body, connection

    def _on_request(self, frame: RawFrame, events: list[Event]) -> None:
        stream_id, offset = m.decode_stream_id(frame.payload)
        if stream_id % 2 == self._first_local_id % 2:
            raise ProtocolError(
                ErrorCode.STREAM_ID_ERROR, f"REQUEST on stream {stream_id} has our parity"
            )
        if stream_id in (self._remote_streams or ()):
            raise ProtocolError(ErrorCode.STREAM_ID_ERROR, f"stream {stream_id} is already open")
        headers, body, self._conn_headers = self._decode_request(frame.payload, offset, frame.flags)
        if self._goaway_sent:
            self._refuse(stream_id, "draining: retry on a new connection")
            return
        remote = self._remote_streams
        if remote is None:
            remote = self._remote_streams = {}
        if len(remote) >= self.limits.max_concurrent_streams:
            self._refuse(stream_id, f"max_concurrent_streams {self.limits.max_concurrent_streams}")
            return
        remote[stream_id] = self._typed.echo_value_of(headers)
        events.append(RequestReceived(stream_id, headers[0][1], headers[1:], body))

    def _refuse(self, stream_id: int, why: str) -> None:
        self._queue(FrameType.ERROR, 0, m.encode_error(stream_id, ErrorCode.REFUSED_STREAM, 0, why))

    def _take_local_stream(self, stream_id: int, frame_name: str) -> bool:
        """Close one of our streams; return False if we had cancelled it."""
        local = self._local_streams
        if local is None or stream_id not in local:
            raise ProtocolError(
                ErrorCode.STREAM_ID_ERROR, f"{frame_name} for stream {stream_id} that is not open"
            )
        del local[stream_id]
        if not local:
            self._local_streams = None
        cancelled = self._cancelled
        if cancelled is not None and stream_id in cancelled:
            del cancelled[stream_id]
            if not cancelled:
                self._cancelled = None
            return False
        return True

    def _on_response(self, frame: RawFrame, events: list[Event]) -> None:
        stream_id, offset = m.decode_stream_id(frame.payload)
        status, offset = decode_varint_complete(frame.payload, offset)
        echo_value = (self._local_streams or {}).get(stream_id)
        headers, body = self._decode_message(frame.payload, offset, frame.flags, echo_value)
        if self._take_local_stream(stream_id, "RESPONSE"):
            events.append(ResponseReceived(stream_id, status, headers, body))

    def _on_push(self, frame: RawFrame, events: list[Event]) -> None:
        payload = frame.payload
        delivery_id, offset = decode_varint_complete(payload, 0)
        if delivery_id <= self._last_delivery_id:
            raise ProtocolError(
                ErrorCode.PROTOCOL_ERROR,
                f"PUSH delivery id {delivery_id} is not above {self._last_delivery_id}",
            )
        self._last_delivery_id = delivery_id
        length, offset = decode_varint_complete(payload, offset)
        if not 1 <= length <= self.limits.max_message_id_length or offset + length > len(payload):
            raise ProtocolError(ErrorCode.FIELD_ERROR, f"PUSH message id length {length} invalid")
        message_id = payload[offset : offset + length]
        headers, body = self._decode_message(payload, offset + length, frame.flags)
        events.append(PushReceived(delivery_id, message_id, headers, body))

    def _on_ack(self, frame: RawFrame, events: list[Event]) -> None:
        ids = m.decode_ack(frame.payload, self.limits.max_acks_per_frame)
        unacked = self._unacked
        if unacked is None:
            return
        known = tuple(i for i in dict.fromkeys(ids) if i in unacked)
        for delivery_id in known:
            del unacked[delivery_id]
        if not unacked:
            self._unacked = None
        if known:
            events.append(AckReceived(known))

    def _on_ping(self, frame: RawFrame, events: list[Event]) -> None:
        if len(frame.payload) > MAX_PING_PAYLOAD:
            raise ProtocolError(
                ErrorCode.FIELD_ERROR, f"PING payload over {MAX_PING_PAYLOAD} bytes"
            )
        self._queue(FrameType.PONG, 0, frame.payload)
        events.append(PingReceived(frame.payload))

    def _on_pong(self, frame: RawFrame, events: list[Event]) -> None:
        events.append(PongReceived(frame.payload))

    def _on_settings(self, frame: RawFrame, events: list[Event]) -> None:
        if frame.flags & FLAG_SETTINGS_ACK:
            if frame.payload:
                raise ProtocolError(ErrorCode.FIELD_ERROR, "SETTINGS ACK must be empty")
            # An ACK we did not ask for changes nothing, so it is ignored.
            if self._settings_awaiting_ack:
                first, self._settings_awaiting_ack = (
                    self._settings_awaiting_ack[0],
                    self._settings_awaiting_ack[1:],
                )
                for key, value in first:
                    self._apply_own_setting(key, value)
            events.append(SettingsAcknowledged())
            return
        settings = m.decode_settings(frame.payload)
        for key, value in settings:
            self._apply_setting(key, value)
        self._queue(FrameType.SETTINGS, FLAG_SETTINGS_ACK, b"")
        events.append(SettingsReceived(settings))

    def _apply_setting(self, key: int, value: int) -> None:
        problem = _setting_problem(key, value)
        if problem:
            raise ProtocolError(ErrorCode.FIELD_ERROR, f"SETTINGS {key}={value}: {problem}")
        if key == Setting.HEADER_TABLE_SIZE:
            if value < INITIAL_HEADER_TABLE_SIZE:
                raise ProtocolError(ErrorCode.FIELD_ERROR, "SETTINGS header table size below 4096")
            if self._encoder is not None:
                self._encoder.use_peer_table_size(value)
        elif key == Setting.MAX_FRAME_SIZE:
            if value < 1024:
                raise ProtocolError(ErrorCode.FIELD_ERROR, "SETTINGS max frame size below 1024")
            self.peer_max_frame_size = value
        elif key == Setting.MAX_CONCURRENT_STREAMS:
            if value < 1:
                raise ProtocolError(ErrorCode.FIELD_ERROR, "SETTINGS max concurrent streams 0")
            self.peer_max_concurrent_streams = value
        elif key == Setting.MAX_BODY_SIZE:
            self.peer_max_body_size = value
        elif key == Setting.MAX_HEADER_LIST_SIZE:
            self.peer_max_header_list_size = value
        # HEARTBEAT_S and unknown settings need no wire-level action.

    def _on_goaway(self, frame: RawFrame, events: list[Event]) -> None:
        goaway = m.decode_goaway(frame.payload)
        self._goaway_received = True
        self.state = next_state(self.role, self.state, "goaway", by_peer=True)
        events.append(
            GoAwayReceived(
                goaway.code, goaway.reconnect_after_ms, goaway.alternate_endpoint, goaway.message
            )
        )

    def _on_error(self, frame: RawFrame, events: list[Event]) -> None:
        error = m.decode_error(frame.payload)
        if error.stream_id == 0:
            self.state = State.CLOSED
            events.append(ConnectionErrorReceived(error.code, error.retry_after_ms, error.message))
            return
        if self._take_local_stream(error.stream_id, "ERROR"):
            events.append(
                StreamErrorReceived(
                    error.stream_id, error.code, error.retry_after_ms, error.message
                )
            )

    def _on_cancel(self, frame: RawFrame, events: list[Event]) -> None:
        stream_id, offset = m.decode_stream_id(frame.payload)
        if offset != len(frame.payload):
            raise ProtocolError(ErrorCode.FIELD_ERROR, "CANCEL carries bytes after its stream id")
        remote = self._remote_streams
        if remote is None or stream_id not in remote:
            return  # already answered: our final frame crossed the CANCEL
        del remote[stream_id]
        if not remote:
            self._remote_streams = None
        self._queue(FrameType.ERROR, 0, m.encode_error(stream_id, ErrorCode.CANCELLED, 0, ""))
        events.append(StreamCancelled(stream_id))

    def _on_dict(self, frame: RawFrame, events: list[Event]) -> None:
        chunk = m.decode_dict_chunk(frame.payload)
        limit = self.limits.max_dictionary_size
        if not 0 < chunk.dict_id <= MAX_DICTIONARY_ID or not 0 < chunk.total_size <= limit:
            raise ProtocolError(
                ErrorCode.DICTIONARY_ERROR,
                f"DICT id {chunk.dict_id} size {chunk.total_size} (limit {limit})",
            )
        transfer = self._dict_transfer
        if transfer is None:
            transfer = _DictTransfer(chunk.dict_id, chunk.total_size, bytearray())
            self._dict_transfer = transfer
        if (
            chunk.dict_id != transfer.dict_id
            or chunk.total_size != transfer.total_size
            or chunk.offset != len(transfer.data)
            or len(transfer.data) + len(chunk.chunk) > transfer.total_size
        ):
            raise ProtocolError(ErrorCode.DICTIONARY_ERROR, "DICT chunk out of sequence")
        transfer.data += chunk.chunk
        if not frame.flags & FLAG_DICT_LAST:
            return
        self._dict_transfer = None
        if len(transfer.data) != transfer.total_size:
            raise ProtocolError(ErrorCode.DICTIONARY_ERROR, "DICT ended before its total size")
        dictionary = Dictionary(transfer.dict_id, bytes(transfer.data))
        self.body_codec.check_dictionary(dictionary)
        self.body_codec.dictionaries.add(dictionary)
        # The server holds what it delivers, so requests may use it too.
        self.outgoing_dictionary = max(self.outgoing_dictionary, dictionary.dict_id)
        events.append(DictionaryReceived(dictionary))


def _setting_problem(key: int, value: int) -> str:
    """Why a SETTINGS value is invalid ("" if it is fine); the same rule both ways."""
    if key == Setting.HEADER_TABLE_SIZE and value < INITIAL_HEADER_TABLE_SIZE:
        return f"header table size below {INITIAL_HEADER_TABLE_SIZE}"
    if key == Setting.MAX_FRAME_SIZE and value < 1024:
        return "max frame size below 1024"
    if key == Setting.MAX_CONCURRENT_STREAMS and value < 1:
        return "max concurrent streams below 1"
    if key == Setting.MAX_HEADER_LIST_SIZE and value < 256:
        return "max header list size below 256"
    return ""


_HANDLERS = {
    FrameType.HELLO: Connection._on_hello,
    FrameType.HELLO_ACK: Connection._on_hello_ack,
    FrameType.REQUEST: Connection._on_request,
    FrameType.RESPONSE: Connection._on_response,
    FrameType.PUSH: Connection._on_push,
    FrameType.ACK: Connection._on_ack,
    FrameType.PING: Connection._on_ping,
    FrameType.PONG: Connection._on_pong,
    FrameType.SETTINGS: Connection._on_settings,
    FrameType.GOAWAY: Connection._on_goaway,
    FrameType.ERROR: Connection._on_error,
    FrameType.CANCEL: Connection._on_cancel,
    FrameType.DICT: Connection._on_dict,
}
