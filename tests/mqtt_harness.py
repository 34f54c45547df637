"""MQTT clients for tests against a real gateway: paho-mqtt, and a raw client on the codec.

``PahoBox`` is paho-mqtt (its own network thread, real TLS) with waitable
events: CONNACK, SUBACK, PUBACK, received messages, the server's DISCONNECT.
``RawBox`` speaks MQTT through ``channel.mqtt`` (``Parser`` in the client role,
``encode``) over asyncio streams, for what a library hides: packet ids, DUP,
QoS 2 steps, acknowledgements held back. Every wait is bounded (``WAIT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties as PahoProperties

from channel.mqtt import (
    MQTT_5,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Parser,
    Role,
    encode,
)
from channel.security.tokens import encode_token_text

WAIT_S = 20.0


def mqtt_ssl_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """What an MQTT box uses: TLS 1.3 to the gateway's CA, no ALPN."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    dup: bool
    properties: Any = None

    def user_properties(self) -> dict[str, str]:
        props = self.properties
        return dict(getattr(props, "UserProperty", []) or []) if props is not None else {}


class ProxiedPahoClient(paho.Client):
    """paho-mqtt behind an L4 balancer: the balancer's PROXY header goes out on the TCP
    connection before paho's first byte (before TLS, as a balancer passing TLS through
    sends it)."""

    proxy_header = b""

    def _create_socket_connection(self) -> Any:
        sock = super()._create_socket_connection()
        sock.sendall(self.proxy_header)
        return sock


@dataclass
class PahoBox:
    """A paho-mqtt client on a background thread; see the module docstring."""

    port: int
    client_id: str
    version: int = MQTT_5
    ca: Path | None = None
    username: str | None = None
    password: str | bytes | None = None
    clean: bool = True
    keepalive: int = 60
    context: ssl.SSLContext | None = None
    #: Sent before anything else on the connection, as a balancer would (b"": none).
    proxy_header: bytes = b""
    #: Where the gateway (or its balancer) listens.
    host: str = "127.0.0.1"
    messages: queue.Queue[Received] = field(default_factory=queue.Queue)
    _acks: dict[int, queue.Queue[Any]] = field(default_factory=dict)
    _connacks: queue.Queue[tuple[Any, Any, Any]] = field(default_factory=queue.Queue)
    _disconnects: queue.Queue[Any] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        protocol = paho.MQTTv5 if self.version == MQTT_5 else paho.MQTTv311
        kwargs: dict[str, Any] = {"client_id": self.client_id, "protocol": protocol}
        if self.version != MQTT_5:
            kwargs["clean_session"] = self.clean
        if self.proxy_header:
            client = ProxiedPahoClient(CallbackAPIVersion.VERSION2, **kwargs)
            client.proxy_header = self.proxy_header
            self.client = client
        else:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        if self.ca is not None or self.context is not None:
            self.client.tls_set_context(self.context or mqtt_ssl_context(self.ca))  # type: ignore[arg-type]
        if self.username is not None or self.password is not None:
            self.client.username_pw_set(self.username, self.password)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_unsuback
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    # -------------------------------------------------------------- callbacks

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connacks.put((flags, rc, props))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages.put(
            Received(msg.topic, msg.payload, msg.qos, bool(msg.retain), msg.mid, bool(msg.dup),
                     getattr(msg, "properties", None))
        )  # fmt: skip

    def _queue_for(self, mid: int) -> queue.Queue[Any]:
        with self._lock:
            return self._acks.setdefault(mid, queue.Queue())

    def _on_ack(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._queue_for(mid).put(codes)

    def _on_unsuback(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._queue_for(mid).put(codes)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._queue_for(mid).put(rc)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._disconnects.put(rc)

    # ------------------------------------------------------------- blocking

    def _connect_blocking(self, clean_start: bool, properties: PahoProperties | None,
                          will: tuple[Any, ...] | None) -> tuple[Any, Any, Any]:  # fmt: skip
        if will is not None:
            self.client.will_set(*will)
        kwargs: dict[str, Any] = {"keepalive": self.keepalive}
        if self.version == MQTT_5:
            kwargs["clean_start"] = clean_start
            kwargs["properties"] = properties
        self.client.connect(self.host, self.port, **kwargs)
        self.client.loop_start()
        return self._connacks.get(timeout=WAIT_S)

    def _wait_ack(self, mid: int) -> Any:
        return self._queue_for(mid).get(timeout=WAIT_S)

    # ---------------------------------------------------------------- async

    async def connect(
        self,
        *,
        clean_start: bool = True,
        expiry_s: int | None = None,
        properties: PahoProperties | None = None,
        will: tuple[Any, ...] | None = None,
    ) -> tuple[Any, Any, Any]:
        """(flags, reason code, CONNACK properties); raises nothing on a refusal."""
        if expiry_s is not None:
            properties = properties or PahoProperties(1)  # PacketTypes.CONNECT
            properties.SessionExpiryInterval = expiry_s
        return await asyncio.to_thread(self._connect_blocking, clean_start, properties, will)

    async def subscribe(self, topic_filter: str, qos: int = 1, **options: Any) -> list[Any]:
        if self.version == MQTT_5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            properties = options.pop("properties", None)
            _result, mid = self.client.subscribe(
                topic_filter, options=SubscribeOptions(qos=qos, **options), properties=properties
            )
        else:
            _result, mid = self.client.subscribe(topic_filter, qos)
        return list(await asyncio.to_thread(self._wait_ack, mid))

    async def unsubscribe(self, topic_filter: str) -> Any:
        _result, mid = self.client.unsubscribe(topic_filter)
        return await asyncio.to_thread(self._wait_ack, mid)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
        properties: PahoProperties | None = None,
    ) -> Any:  # fmt: skip
        """Publish and wait for its acknowledgement (QoS 0: for it to be written)."""
        info = self.client.publish(topic, payload, qos, retain, properties)
        if qos == 0:
            await asyncio.to_thread(info.wait_for_publish, WAIT_S)
            return None
        return await asyncio.to_thread(self._wait_ack, info.mid)

    async def message(self, timeout_s: float = WAIT_S) -> Received:
        return await asyncio.to_thread(self.messages.get, True, timeout_s)

    async def no_message(self) -> bool:
        """True if nothing is waiting now (call after an event that would follow one)."""
        return self.messages.empty()

    async def disconnected(self, timeout_s: float = WAIT_S) -> Any:
        """The reason the server ended the connection (paho's reason code)."""
        return await asyncio.to_thread(self._disconnects.get, True, timeout_s)

    async def disconnect(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self._disconnects.get, True, WAIT_S)
        self.client.loop_stop()

    def kill(self) -> None:
        """Cut the connection without DISCONNECT (the will is due)."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()


def token_password(gw: Any, device_id: str, **claims: Any) -> str:
    return encode_token_text(gw.token(device_id, **claims))


class RawBox:
    """MQTT over the codec: exact packets in and out (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int):
        self.reader = reader
        self.writer = writer
        self.version = version
        self.parser = Parser(Role.CLIENT, version, max_packet_size_bytes=1 << 24)
        self._ready: list[Packet] = []

    @classmethod
    async def connect(
        cls, port: int, connect: Connect, version: int, *, ca: Path | None = None,
        context: ssl.SSLContext | None = None, proxy_header: bytes = b"",
    ) -> tuple[RawBox, Connack | None]:  # fmt: skip
        """Open, send ``connect``; (box, the CONNACK, or None if the server closed).
        ``proxy_header``: sent first, before TLS, as a balancer would."""
        if context is None and ca is not None:
            context = mqtt_ssl_context(ca)
        if proxy_header:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(proxy_header)
            await writer.drain()
            if context is not None:
                await writer.start_tls(context, server_hostname="localhost")
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        box = cls(reader, writer, version)
        await box.send(connect)
        try:
            first = await box.recv()
        except (EOFError, ConnectionError):
            return box, None
        assert isinstance(first, Connack), first
        return box, first

    async def send(self, *packets: Packet) -> None:
        self.writer.write(b"".join(encode(p, self.version) for p in packets))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout_s: float = WAIT_S) -> Packet:
        async with asyncio.timeout(timeout_s):
            while not self._ready:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the server closed the connection")
                self._ready.extend(self.parser.feed(data))
        return self._ready.pop(0)

    async def expect(self, kind: type[Any], timeout_s: float = WAIT_S) -> Any:
        packet = await self.recv(timeout_s)
        assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
        return packet

    async def closed(self, timeout_s: float = WAIT_S) -> list[Packet]:
        """Read until the server closes; every packet it sent before."""
        got: list[Packet] = []
        try:
            while True:
                got.append(await self.recv(timeout_s))
        except (EOFError, ConnectionError):
            return got

    async def disconnect(self) -> None:
        await self.send(Disconnect())
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()


async def admin_get(gw: Any, path: str) -> Any:
    """GET on the node's admin port with its dev key (every scope); the JSON body."""
    import aiohttp

    url = f"http://127.0.0.1:{gw.admin_port}{path}"
    headers = {"Authorization": f"Bearer {gw.api_key}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as reply:
        return await reply.json()
