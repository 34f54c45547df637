"""Sans-I/O HTTP/1.1 client codec for the RPC proxy's upstream calls.

Bytes in, events out: ``ClientConnection`` never touches a socket, a loop or
a clock. ``send_request()`` returns the bytes to write; ``receive_data(data)``
(``b""`` = the peer closed) returns the events the bytes completed:
``Response`` (final status and headers; 1xx interim answers are skipped),
``Data`` and ``EndOfMessage``. After ``EndOfMessage``, ``keep_alive`` says
whether the connection may carry another request (``start_next_cycle()``).

Bodies are framed by ``Transfer-Encoding: chunked`` (extensions ignored,
trailers parsed), ``Content-Length``, or the end of the connection; 204, 304
and interim answers have none. Every read is bounded by ``Limits``, so a
hostile upstream cannot make the parser buffer without bound; anything
malformed raises ``H1ProtocolError`` with a ``code`` (``BodyTooLarge`` for an
answer over ``max_body_bytes``) and the connection is not reusable.

Only what the RPC proxy needs: requests carry a whole body with
``Content-Length``, no pipelining, no ``Upgrade``, no ``HEAD``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum, auto

USER_AGENT = "channel-gateway"


class VettedHeaders(list[tuple[str, str]]):
    """Request headers whose maker guarantees what ``encode_request`` checks: names are
    lower-case HTTP tokens and none of host, content-length, transfer-encoding; values
    hold no CR, LF or NUL. ``encode_request`` takes them without checking again
    (``channel.rpc.upstream.upstream_headers`` makes them, once per call)."""

    __slots__ = ()


class H1ErrorCode(StrEnum):
    HEAD_TOO_LARGE = "head_too_large"
    TOO_MANY_HEADERS = "too_many_headers"
    BAD_STATUS_LINE = "bad_status_line"
    BAD_HEADER = "bad_header"
    BAD_CONTENT_LENGTH = "bad_content_length"
    BAD_TRANSFER_ENCODING = "bad_transfer_encoding"
    BAD_CHUNK = "bad_chunk"
    BODY_TOO_LARGE = "body_too_large"
    UNEXPECTED_UPGRADE = "unexpected_upgrade"
    #: The peer closed before a single byte of the response arrived.
    NO_RESPONSE = "no_response"
    #: The peer closed in the middle of a response.
    INCOMPLETE = "incomplete"


class H1ProtocolError(Exception):
    """The upstream sent something this client will not accept; the connection is done."""

    def __init__(self, code: H1ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class BodyTooLarge(H1ProtocolError):
    def __init__(self, limit: int, announced: int | None = None) -> None:
        detail = f" (Content-Length {announced})" if announced is not None else ""
        super().__init__(H1ErrorCode.BODY_TOO_LARGE, f"response body exceeds {limit} bytes{detail}")
        self.limit = limit


class LocalProtocolError(ValueError):
    """The caller asked for something invalid: a bad header, or a request in the wrong state."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what one response may make the parser hold."""

    #: Status line plus headers, summed over interim (1xx) answers and trailers.
    max_head_bytes: int = 64 * 1024
    #: Header lines in one head (and in the trailers).
    max_headers: int = 100
    #: Decoded body (without chunk framing).
    max_body_bytes: int = 1024 * 1024
    #: One chunk-size line, extensions included.
    max_chunk_line_bytes: int = 4096


class Headers:
    """Response header fields in order, names lowercased; repeated fields are kept."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = [(name.lower(), value) for name, value in items]

    @classmethod
    def _from_lowered(cls, items: list[tuple[str, str]]) -> Headers:
        headers = cls.__new__(cls)
        headers._items = items
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (any case), else ``default``."""
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def getall(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._items if key == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: Headers
    #: ``"1.1"`` or ``"1.0"``.
    http_version: str


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: Headers


Event = Response | Data | EndOfMessage

#: The end of every message without trailers (events are immutable, so one will do).
_END = EndOfMessage(Headers())


class State(IntEnum):
    # IntEnum, not Enum: members hash in C, and the parser looks states up per event.
    IDLE = auto()
    AWAIT_HEAD = auto()
    BODY_LENGTH = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()
    TRAILERS = auto()
    BODY_UNTIL_EOF = auto()
    DONE = auto()
    CLOSED = auto()
    ERROR = auto()


_S = State
#: Every move the parser may make; anything else is a bug and raises.
_TRANSITIONS: dict[State, frozenset[State]] = {
    _S.IDLE: frozenset({_S.AWAIT_HEAD, _S.CLOSED}),
    _S.AWAIT_HEAD: frozenset({_S.BODY_LENGTH, _S.CHUNK_SIZE, _S.BODY_UNTIL_EOF, _S.DONE}),
    _S.BODY_LENGTH: frozenset({_S.DONE}),
    _S.CHUNK_SIZE: frozenset({_S.CHUNK_DATA, _S.TRAILERS}),
    _S.CHUNK_DATA: frozenset({_S.CHUNK_END}),
    _S.CHUNK_END: frozenset({_S.CHUNK_SIZE}),
    _S.TRAILERS: frozenset({_S.DONE}),
    _S.BODY_UNTIL_EOF: frozenset({_S.DONE}),
    _S.DONE: frozenset({_S.IDLE, _S.CLOSED}),
    _S.CLOSED: frozenset(),
    _S.ERROR: frozenset(),
}

_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = re.compile(f"{_TCHAR}+")
#: Names joined by "\n" (the count of "\n" is checked, so no name holds one).
_TOKEN_LINES = re.compile(f"{_TCHAR}+(?:\n{_TCHAR}+)*")
#: One well-formed field line of a head whose lines were joined by "\n".
_FIELD_LINE = re.compile(f"^({_TCHAR}+):[ \t]*([^\n]*)", re.M)
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_TARGET = re.compile(r"/[!-~]*")
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
#: Framing headers the codec writes itself.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
_NO_BODY_STATUSES = frozenset({204, 304})


def encode_request(
    method: str,
    target: str,
    *,
    host: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    user_agent: str = USER_AGENT,
) -> bytes:
    """One HTTP/1.1 request with ``Content-Length``; raises LocalProtocolError on bad fields.

    ``user_agent`` is sent unless ``headers`` carry the device's own ``user-agent``
    (forwarded as is: a second one makes servers refuse the request). ``VettedHeaders``
    are not checked again."""
    if not _TOKEN.fullmatch(method):
        raise LocalProtocolError(f"method {method!r} is not an HTTP token")
    if not _TARGET.fullmatch(target):
        raise LocalProtocolError(f"request target {target!r} must be '/' + visible ASCII")
    if _BAD_VALUE.search(host) or not host:
        raise LocalProtocolError(f"host {host!r} is empty or contains CR, LF or NUL")
    if type(headers) is VettedHeaders:
        block = "".join([f"{name}: {value}\r\n" for name, value in headers])
        # Exact: vetted values hold no CR or LF, so each "\r\n" ends a field line.
        if block.startswith("user-agent: ") or "\r\nuser-agent: " in block:
            user_agent = ""
    elif headers:
        # Checked in bulk (a handful of C calls instead of several per header);
        # _check_fields names the offender when the bulk check fails.
        names = "\n".join([name for name, _ in headers])
        block = "".join([f"{name}: {value}\r\n" for name, value in headers])
        count = len(headers)
        # Whole names are found as substrings of "\n"-wrapped lower-case names: a regex
        # with alternatives costs several µs here, tried at every position.
        lines = f"\n{names.lower()}\n"
        if (
            names.count("\n") != count - 1
            or not _TOKEN_LINES.fullmatch(names)
            or "\nhost\n" in lines
            or "\ncontent-length\n" in lines
            or "\ntransfer-encoding\n" in lines
            or block.count("\r") != count
            or block.count("\n") != count
            or "\x00" in block
        ):
            _check_fields(headers)
        if "\nuser-agent\n" in lines:
            user_agent = ""
    else:
        block = ""
    own_agent = f"user-agent: {user_agent}\r\n" if user_agent else ""
    return (
        f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n{own_agent}"
        f"content-length: {len(body)}\r\n{block}\r\n"
    ).encode() + body


def _check_fields(headers: Sequence[tuple[str, str]]) -> None:
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or name.lower() in _OWN_HEADERS:
            raise LocalProtocolError(
                f"header name {name!r} is not an HTTP token or is set by the codec itself"
            )
        if _BAD_VALUE.search(value):
            raise LocalProtocolError(f"header {name!r}: value contains CR, LF or NUL")
    raise AssertionError("bulk header check failed but no field is bad")  # pragma: no cover


def encode_chunked(chunks: Iterable[bytes], trailers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A chunked body (for tests and peers written in Python); empty chunks are skipped."""
    out = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks if chunk]
    out.append(b"0\r\n")
    out.extend(f"{name}: {value}\r\n".encode() for name, value in trailers)
    out.append(b"\r\n")
    return b"".join(out)


def _parse_fields(block: str, limits: Limits) -> list[tuple[str, str]]:
    """A head's field lines (joined by "\n") → lowercased (name, value) pairs.

    One regex pass when every line is well formed; otherwise line by line,
    joining obs-fold continuations with a space or naming the bad line.
    """
    if not block:
        return []
    count = block.count("\n") + 1
    if count > limits.max_headers:
        raise H1ProtocolError(
            H1ErrorCode.TOO_MANY_HEADERS, f"more than {limits.max_headers} header fields"
        )
    pairs = _FIELD_LINE.findall(block)
    if len(pairs) == count:
        return [(name.lower(), value.rstrip(" \t")) for name, value in pairs]
    items: list[tuple[str, str]] = []
    lines = block.split("\n")
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not items:
                raise H1ProtocolError(H1ErrorCode.BAD_HEADER, "continuation line before a header")
            name, value = items[-1]
            items[-1] = (name, (value + " " + line.strip(" \t")).strip(" "))
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise H1ProtocolError(H1ErrorCode.BAD_HEADER, f"malformed header line {line[:80]!r}")
        items.append((name.lower(), value.strip(" \t")))
    return items


def _check_lines(head: bytes) -> None:
    """Lines end in CRLF only; no bare CR or LF, no NUL (response splitting, smuggling)."""
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf or b"\x00" in head:
        raise H1ProtocolError(H1ErrorCode.BAD_HEADER, "bare CR, bare LF or NUL in the head")


def _content_length(values: list[str], limit: int) -> int:
    if len(values) == 1 and values[0].isdigit() and values[0].isascii() and len(values[0]) <= 18:
        length = int(values[0])  # the common case, decided without splitting
        if length > limit:
            raise BodyTooLarge(limit, length)
        return length
    lengths = {part.strip(" \t") for value in values for part in value.split(",")}
    if len(lengths) != 1:
        raise H1ProtocolError(
            H1ErrorCode.BAD_CONTENT_LENGTH, f"conflicting Content-Length values {values!r}"
        )
    (text,) = lengths
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise H1ProtocolError(H1ErrorCode.BAD_CONTENT_LENGTH, f"bad Content-Length {text!r}")
    length = int(text)
    if length > limit:
        raise BodyTooLarge(limit, length)
    return length


class ClientConnection:
    """One client connection's HTTP/1.1 state: one request, then its response, then again."""

    __slots__ = (
        "_body_bytes",
        "_buf",
        "_head_bytes",
        "_remaining",
        "_scan_from",
        "keep_alive",
        "limits",
        "response_started",
        "state",
    )

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.state = State.IDLE
        #: False once the connection must not carry another request.
        self.keep_alive = True
        #: A byte of the current response has arrived (keep-alive races are retried on False).
        self.response_started = False
        self._buf = b""
        self._scan_from = 0
        self._head_bytes = 0
        self._body_bytes = 0
        self._remaining = 0

    def _go(self, new: State) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise LocalProtocolError(f"no transition {self.state.name} -> {new.name}")
        self.state = new

    # -- sending ---------------------------------------------------------------

    def send_request(
        self,
        method: str,
        target: str,
        *,
        host: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        user_agent: str = USER_AGENT,
    ) -> bytes:
        """The bytes of a request; the connection then awaits its response."""
        if self.state is not State.IDLE:
            raise LocalProtocolError(f"cannot send a request in state {self.state.name}")
        data = encode_request(
            method, target, host=host, headers=headers, body=body, user_agent=user_agent
        )
        self.begin_request()
        return data

    def begin_request(self) -> None:
        """A request made by ``encode_request()`` is being written: await its response."""
        if self.state is not State.IDLE:
            raise LocalProtocolError(f"cannot send a request in state {self.state.name}")
        self._go(State.AWAIT_HEAD)
        self.response_started = False
        self._head_bytes = self._body_bytes = 0

    def start_next_cycle(self) -> None:
        """After ``EndOfMessage`` on a keep-alive connection: ready for the next request."""
        if self.state is not State.DONE or not self.keep_alive:
            raise LocalProtocolError(
                f"connection not reusable (state {self.state.name}, keep_alive {self.keep_alive})"
            )
        self._go(State.IDLE)

    # -- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer (``b""`` = it closed); returns the events they completed."""
        state = self.state
        if state is State.ERROR or state is State.CLOSED:
            raise LocalProtocolError(f"receive_data in state {state.name}")
        if not data:
            return self._receive_eof()
        if state is State.IDLE or state is State.DONE:
            # Bytes nobody asked for: the next answer could not be told apart from them.
            self.keep_alive = False
            return []
        self.response_started = True
        if self._buf:
            data = self._buf + data
            self._buf = b""
        events: list[Event] = []
        try:
            pos = 0
            end = len(data)
            while pos < end:
                state = self.state
                if state is State.DONE:
                    self.keep_alive = False  # data after a complete response
                    return events
                new_pos = _READERS[state](self, data, pos, events)
                if new_pos < 0:
                    self._buf = data[pos:]
                    return events
                pos = new_pos
            # A chunked body's trailer section may be an empty line that is still to come,
            # but a body whose length ran out here is complete.
            return events
        except H1ProtocolError:
            self.state = State.ERROR
            self.keep_alive = False
            raise

    def receive_whole(self, data: bytes) -> tuple[Response, bytes] | None:
        """The common answer in one read, without events: a final status, one numeric
        ``Content-Length``, no ``Transfer-Encoding``, and ``data`` is exactly the head and
        that body. Then the same response and body ``receive_data(data)`` would give,
        with the same state after (DONE); for anything else None and nothing changed:
        feed ``data`` to ``receive_data()``, which also names what is wrong."""
        if self.state is not State.AWAIT_HEAD or self._buf or self._head_bytes:
            return None
        end = data.find(b"\r\n\r\n")
        limits = self.limits
        if end < 0 or end + 4 > limits.max_head_bytes:
            return None
        head = data[:end]
        crlf = head.count(b"\r\n")
        if head.count(b"\r") != crlf or head.count(b"\n") != crlf or b"\x00" in head:
            return None
        status_line, _, fields = (
            head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").partition("\n")
        )
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            return None
        minor, status_text, reason = match.groups()
        status = int(status_text)
        if status < 200 or status in _NO_BODY_STATUSES:
            return None
        if fields:
            if fields.count("\n") + 1 > limits.max_headers:
                return None
            pairs = _FIELD_LINE.findall(fields)
            if len(pairs) != fields.count("\n") + 1:
                return None
            items = [(name.lower(), value.rstrip(" \t")) for name, value in pairs]
        else:
            items = []
        length: str | None = None
        keep_alive = minor == "1"
        for name, value in items:
            if name == "content-length":
                if length is not None:
                    return None
                length = value
            elif name == "transfer-encoding":
                return None
            elif name == "connection" and any(
                token.strip(" \t").lower() == "close" for token in value.split(",")
            ):
                keep_alive = False
        if (
            length is None
            or not (length.isdigit() and length.isascii())
            or len(length) > 18
            or int(length) > limits.max_body_bytes
            or len(data) - end - 4 != int(length)
        ):
            return None
        self.response_started = True
        self._head_bytes = end + 4
        if not keep_alive:
            self.keep_alive = False
        self.state = State.DONE
        response = Response(status, reason or "", Headers._from_lowered(items), f"1.{minor}")
        return response, data[end + 4 :]

    def _receive_eof(self) -> list[Event]:
        state = self.state
        self.keep_alive = False
        if state is State.BODY_UNTIL_EOF and not self._buf:
            self._go(State.DONE)
            self._go(State.CLOSED)
            return [_END]
        if state in (State.IDLE, State.DONE):
            self._go(State.CLOSED)
            return []
        self.state = State.ERROR
        if state is State.AWAIT_HEAD and not self.response_started:
            raise H1ProtocolError(
                H1ErrorCode.NO_RESPONSE, "the upstream closed the connection without answering"
            )
        raise H1ProtocolError(
            H1ErrorCode.INCOMPLETE,
            f"the upstream closed the connection in the middle of a response ({state.name})",
        )

    # Each reader consumes from data[pos:], appends events and returns the new
    # position, or -1 when it needs more bytes (data[pos:] is then buffered).

    def _read_head(self, data: bytes, pos: int, events: list[Event]) -> int:
        limits = self.limits
        end = data.find(b"\r\n\r\n", max(pos, self._scan_from - 3))
        if end < 0:
            if self._head_bytes + len(data) - pos > limits.max_head_bytes:
                raise H1ProtocolError(
                    H1ErrorCode.HEAD_TOO_LARGE,
                    f"status line and headers exceed {limits.max_head_bytes} bytes",
                )
            self._scan_from = len(data) - pos
            return -1
        self._scan_from = 0
        self._head_bytes += end + 4 - pos
        if self._head_bytes > limits.max_head_bytes:
            raise H1ProtocolError(
                H1ErrorCode.HEAD_TOO_LARGE,
                f"status line and headers exceed {limits.max_head_bytes} bytes",
            )
        head = data[pos:end]
        _check_lines(head)
        status_line, _, fields = (
            head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").partition("\n")
        )
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise H1ProtocolError(
                H1ErrorCode.BAD_STATUS_LINE, f"malformed status line {status_line[:80]!r}"
            )
        minor, status_text, reason = match.groups()
        status = int(status_text)
        items = _parse_fields(fields, limits)
        pos = end + 4
        if status < 200:
            if status == 101:
                raise H1ProtocolError(
                    H1ErrorCode.UNEXPECTED_UPGRADE, "101 Switching Protocols without an Upgrade"
                )
            return pos  # interim answer (100 Continue, 103 Early Hints): skipped
        events.append(Response(status, reason or "", Headers._from_lowered(items), f"1.{minor}"))
        self._frame_body(status, minor == "1", items, events)
        return pos

    def _frame_body(
        self, status: int, http11: bool, items: list[tuple[str, str]], events: list[Event]
    ) -> None:
        lengths: list[str] = []
        codings: list[str] = []
        for name, value in items:
            if name == "content-length":
                lengths.append(value)
            elif name == "transfer-encoding":
                codings.extend(c.strip(" \t").lower() for c in value.split(","))
            elif name == "connection" and any(
                token.strip(" \t").lower() == "close" for token in value.split(",")
            ):
                self.keep_alive = False
        if not http11:
            self.keep_alive = False
        if status in _NO_BODY_STATUSES:
            self._finish(events, _END)
        elif codings:
            if lengths:
                raise H1ProtocolError(
                    H1ErrorCode.BAD_TRANSFER_ENCODING,
                    "both Transfer-Encoding and Content-Length (request smuggling)",
                )
            if codings != ["chunked"]:
                raise H1ProtocolError(
                    H1ErrorCode.BAD_TRANSFER_ENCODING,
                    f"unsupported Transfer-Encoding {', '.join(codings)!r} (only 'chunked')",
                )
            self._go(State.CHUNK_SIZE)
        elif lengths:
            self._remaining = _content_length(lengths, self.limits.max_body_bytes)
            if self._remaining:
                self._go(State.BODY_LENGTH)
            else:
                self._finish(events, _END)
        else:
            self.keep_alive = False
            self._go(State.BODY_UNTIL_EOF)

    def _finish(self, events: list[Event], end: EndOfMessage) -> None:
        events.append(end)
        self._go(State.DONE)

    def _read_length(self, data: bytes, pos: int, events: list[Event]) -> int:
        take = min(self._remaining, len(data) - pos)
        events.append(Data(data[pos : pos + take] if pos or take < len(data) else data))
        self._remaining -= take
        if not self._remaining:
            self._finish(events, _END)
        return pos + take

    def _count_body(self, size: int) -> None:
        self._body_bytes += size
        if self._body_bytes > self.limits.max_body_bytes:
            raise BodyTooLarge(self.limits.max_body_bytes)

    def _read_until_eof(self, data: bytes, pos: int, events: list[Event]) -> int:
        self._count_body(len(data) - pos)
        events.append(Data(data[pos:]))
        return len(data)

    def _read_chunk_size(self, data: bytes, pos: int, events: list[Event]) -> int:
        limit = self.limits.max_chunk_line_bytes
        end = data.find(b"\r\n", pos, pos + limit + 2)
        if end < 0:
            if len(data) - pos > limit:
                raise H1ProtocolError(H1ErrorCode.BAD_CHUNK, f"chunk-size line over {limit} bytes")
            return -1
        line = data[pos:end]
        size_text = line.split(b";", 1)[0].rstrip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size_text) or b"\r" in line or b"\n" in line:
            raise H1ProtocolError(H1ErrorCode.BAD_CHUNK, f"bad chunk-size line {line[:40]!r}")
        size = int(size_text, 16)
        if size:
            self._count_body(size)
            self._remaining = size
            self._go(State.CHUNK_DATA)
        else:
            self._go(State.TRAILERS)
        return end + 2

    def _read_chunk_data(self, data: bytes, pos: int, events: list[Event]) -> int:
        take = min(self._remaining, len(data) - pos)
        events.append(Data(data[pos : pos + take]))
        self._remaining -= take
        if not self._remaining:
            self._go(State.CHUNK_END)
        return pos + take

    def _read_chunk_end(self, data: bytes, pos: int, events: list[Event]) -> int:
        if len(data) - pos < 2:
            return -1
        if data[pos : pos + 2] != b"\r\n":
            raise H1ProtocolError(H1ErrorCode.BAD_CHUNK, "chunk data not followed by CRLF")
        self._go(State.CHUNK_SIZE)
        return pos + 2

    def _read_trailers(self, data: bytes, pos: int, events: list[Event]) -> int:
        if len(data) - pos < 2:
            return -1
        if data[pos : pos + 2] == b"\r\n":
            self._finish(events, _END)
            return pos + 2
        limit = self.limits.max_head_bytes
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if self._head_bytes + len(data) - pos > limit:
                raise H1ProtocolError(H1ErrorCode.HEAD_TOO_LARGE, f"trailers exceed {limit} bytes")
            return -1
        self._head_bytes += end + 4 - pos
        if self._head_bytes > limit:
            raise H1ProtocolError(H1ErrorCode.HEAD_TOO_LARGE, f"trailers exceed {limit} bytes")
        block = data[pos:end]
        _check_lines(block)
        text = block.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        self._finish(events, EndOfMessage(Headers._from_lowered(_parse_fields(text, self.limits))))
        return end + 4


_READERS = {
    State.AWAIT_HEAD: ClientConnection._read_head,
    State.BODY_LENGTH: ClientConnection._read_length,
    State.BODY_UNTIL_EOF: ClientConnection._read_until_eof,
    State.CHUNK_SIZE: ClientConnection._read_chunk_size,
    State.CHUNK_DATA: ClientConnection._read_chunk_data,
    State.CHUNK_END: ClientConnection._read_chunk_end,
    State.TRAILERS: ClientConnection._read_trailers,
}
