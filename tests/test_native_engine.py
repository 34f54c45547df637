"""The native engine (``channel._engine``) driven directly from Python over real
sockets: MMTP devices made of Python's ``ssl`` and ``channel.wire``, MQTT devices
made of paho-mqtt, events awaited on the engine's eventfd.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from channel import fastopen
from channel._engine import Engine
from channel.mqtt.flow import stable_packet_id
from channel.mqtt.publish import encode_publish, push_bytes, push_properties, topic_head
from channel.mqtt.reasons import MQTT_3_1_1, MQTT_5
from channel.wire import (
    Connection,
    ConnectionErrorReceived,
    ErrorCode,
    GoAwayReceived,
    Hello,
    HelloAccepted,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    StreamErrorReceived,
)
from tests.native_engine_harness import (
    CERTS,
    WAIT_S,
    Device,
    Driver,
    accepted,
    client_context,
    engine_config,
    pem,
)


@pytest.fixture
def make_engine() -> Iterator[Any]:
    engines: list[Engine] = []

    def make(**config: Any) -> tuple[Driver, int]:
        engine = Engine(engine_config(**config))
        engines.append(engine)
        port = engine.listen("mmtp", "127.0.0.1", 0, tls=True)
        return Driver(engine), port

    yield make
    for engine in engines:
        engine.shutdown()


def error_of(events: list[Any]) -> ConnectionErrorReceived:
    errors = [e for e in events if isinstance(e, ConnectionErrorReceived)]
    assert errors, events
    return errors[0]


# ------------------------------------------------------------------ MMTP


def test_hello_event_then_accept_gives_a_hello_ack_the_client_decodes(make_engine: Any) -> None:
    driver, port = make_engine()
    device = Device.connect(port)
    device.hello("dev-1", app_id="demo", token=b"tok", platform="ios", dictionaries=(1,))
    _, conn, peer_ip, hello, cn, fast_open = driver.expect("HELLO")
    assert peer_ip == "127.0.0.1" and cn is None and fast_open is False
    assert hello["device_id"] == "dev-1" and hello["app_id"] == "demo"
    assert hello["token"] == b"tok" and hello["platform"] == "ios"
    assert hello["dictionaries"] == (1,)
    driver.engine.submit([("ACCEPT", conn, b"\x01" * 8, b"resume-me", 90, 1_700_000_000_000, True)])
    (accepted_event,) = device.events()
    assert isinstance(accepted_event, HelloAccepted)
    ack = accepted_event.ack
    assert (ack.session_id, ack.resume_ticket, ack.heartbeat_s, ack.resumed) == (
        b"\x01" * 8,
        b"resume-me",
        90,
        True,
    )
    assert driver.stats()["tls_handshakes_full"] == 1


def test_requests_pipelined_behind_hello_arrive_in_order_and_are_answered(
    make_engine: Any,
) -> None:
    driver, port = make_engine()
    device = Device.connect(port)
    device.conn.send_hello(Hello(device_id="d2"))
    first = device.conn.send_request("user.get", b'{"id":1}', [("locale", "zh-CN")])
    second = device.conn.send_request("user.list", b"")
    device.flush()
    conn = driver.hello("d2")
    requests = driver.expect_n("REQUEST", 2)
    assert [(r[2], r[3], r[5]) for r in requests] == [
        (first, "user.get", b'{"id":1}'),
        (second, "user.list", b""),
    ]
    assert requests[0][4] == (("locale", "zh-CN"),)
    assert [r[6] for r in requests] == [False, False]  # not TLS early data
    driver.accept(conn)
    driver.engine.submit(
        [
            ("RESPOND", conn, first, 0, [("x-answer", "1")], b"one"),
            ("RESPOND", conn, second, int(ErrorCode.NOT_FOUND), (), b"no such user"),
        ]
    )
    events: list[Any] = []
    while len(events) < 3:
        events.extend(device.events())
    assert isinstance(events[0], HelloAccepted)
    assert isinstance(events[1], ResponseReceived) and events[1].body == b"one"
    assert events[1].headers == (("x-answer", "1"),)
    assert isinstance(events[2], ResponseReceived) and events[2].status == ErrorCode.NOT_FOUND


def test_stream_error_and_device_cancel(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "d3")
    a = device.conn.send_request("slow.op", b"")
    b = device.conn.send_request("limited.op", b"")
    device.flush()
    driver.expect_n("REQUEST", 2)
    device.conn.send_cancel(a)
    device.flush()
    assert driver.expect("CANCEL")[1:] == (conn, a)
    driver.engine.submit([("STREAM_ERROR", conn, b, int(ErrorCode.RATE_LIMITED), "slow down", 250)])
    events = device.events()
    errors = [e for e in events if isinstance(e, StreamErrorReceived) and e.stream_id == b]
    assert errors and errors[0].code == ErrorCode.RATE_LIMITED
    assert errors[0].retry_after_ms == 250


def test_push_and_ack_become_acks_with_message_ids(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "d4")
    driver.engine.submit(
        [
            ("PUSH", conn, b"msg-1", [("title", "hi")], b"first", True),
            ("PUSH", conn, b"msg-2", [], b"second", True),
        ]
    )
    pushes: list[PushReceived] = []
    while len(pushes) < 2:
        pushes.extend(e for e in device.events() if isinstance(e, PushReceived))
    assert [(p.message_id, p.body) for p in pushes] == [(b"msg-1", b"first"), (b"msg-2", b"second")]
    device.conn.send_ack(*(p.delivery_id for p in pushes))
    device.flush()
    assert driver.expect("ACKS") == ("ACKS", [conn, conn], ["msg-1", "msg-2"])
    stats = driver.stats()
    assert stats["pushes_written"] == 2 and stats["acks_tracked"] == 2
    assert stats["frames_out"]["PUSH"] == 2 and stats["frames_in"]["ACK"] >= 1


def test_acks_of_many_connections_come_up_as_one_flat_event(make_engine: Any) -> None:
    """Python takes every ACK of an event batch in one call: one ACKS event, the
    connections and message ids in two flat lists, instead of one event per connection."""
    driver, port = make_engine()
    devices = [accepted(driver, port, f"d-acks-{i}") for i in range(2)]
    driver.engine.submit(
        [("PUSH", conn, f"m-{i}".encode(), [], b"x", True) for i, (_, conn) in enumerate(devices)]
    )
    for device, _ in devices:
        pushes: list[PushReceived] = []
        while not pushes:
            pushes.extend(e for e in device.events() if isinstance(e, PushReceived))
        device.conn.send_ack(pushes[0].delivery_id)
        device.flush()
    # Both ACKs read by the engine before Python takes its events: one batch.
    deadline = time.monotonic() + WAIT_S
    while driver.stats()["acks_tracked"] < 2:
        assert time.monotonic() < deadline, "the engine did not read both ACKs"
        select.select([], [], [], 0.01)
    (conn_a, conn_b) = (conn for _, conn in devices)
    assert driver.expect("ACKS") == ("ACKS", [conn_a, conn_b], ["m-0", "m-1"])
    assert not [e for e in driver.backlog if e[0] == "ACKS"]


def test_backend_call_to_the_device_and_its_answer(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "d5")
    driver.engine.submit([("CALL", conn, 77, "device.ping", [("k", "v")], b"are you there")])
    (request,) = device.events()
    assert isinstance(request, RequestReceived) and request.op == "device.ping"
    device.conn.send_response(request.stream_id, b"yes", [("a", "b")])
    device.flush()
    answer = driver.expect("ANSWER")
    assert answer == ("ANSWER", conn, 77, 0, (("a", "b"),), b"yes", 0, "")
    # A call still open when the device goes: UNAVAILABLE.
    driver.engine.submit([("CALL", conn, 78, "device.ping", [], b"")])
    assert isinstance(device.events()[0], RequestReceived)
    device.close()
    answer = driver.expect("ANSWER")
    assert answer[2:4] == (78, int(ErrorCode.UNAVAILABLE))
    assert driver.expect("CLOSED")[1] == conn


def test_fanout_to_a_thousand_devices_every_one_gets_it_and_acks_are_counted(
    make_engine: Any,
) -> None:
    driver, port = make_engine()
    devices = [Device.connect(port) for _ in range(1000)]
    for i, device in enumerate(devices):
        device.hello(f"fan-{i}")
    hellos = driver.expect_n("HELLO", 1000)
    now_ms = int(time.time() * 1000)
    driver.engine.submit([("ACCEPT", e[1], b"s" * 8, b"", 60, now_ms, False) for e in hellos])
    for device in devices:
        assert isinstance(device.events()[0], HelloAccepted)
    driver.engine.submit([("FANOUT", b"broadcast-1", [("topic", "news")], b"to all", None)])
    for device in devices:
        (push,) = device.events()
        assert isinstance(push, PushReceived)
        assert (push.message_id, push.body, push.headers) == (
            b"broadcast-1",
            b"to all",
            (("topic", "news"),),
        )
        device.conn.send_ack(push.delivery_id)
        device.flush()
    assert driver.expect("FANOUT_DONE") == ("FANOUT_DONE", b"broadcast-1", 1000, 0)
    driver.wait_fanout_acks(b"broadcast-1", 1000)
    assert driver.fanout_acks[b"broadcast-1"] == 1000
    stats = driver.stats()
    assert stats["fanout_deliveries"] == 1000 and stats["acks_fanout"] == 1000
    for device in devices:
        device.close()


def test_fanout_to_a_list_skips_gone_and_unaccepted_connections(make_engine: Any) -> None:
    driver, port = make_engine()
    a, conn_a = accepted(driver, port, "a")
    gone, conn_gone = accepted(driver, port, "gone")
    waiting = Device.connect(port)
    waiting.hello("waiting")
    conn_waiting = driver.hello("waiting")
    gone.close()
    driver.expect("CLOSED", lambda e: e[1] == conn_gone)
    driver.engine.submit([("FANOUT", b"m", [], b"x", [conn_a, conn_gone, conn_waiting])])
    assert driver.expect("FANOUT_DONE") == ("FANOUT_DONE", b"m", 1, 2)
    assert isinstance(a.events()[0], PushReceived)


def test_idle_deadline_ends_a_silent_device(make_engine: Any) -> None:
    # A handshake deadline far beyond the idle one: the idle deadline must not wait for it.
    driver, port = make_engine(idle_factor=1.2, sweep_interval_ms=20, handshake_timeout_ms=60_000)
    device = Device.connect(port)
    device.hello("quiet")
    conn = driver.hello("quiet")
    driver.engine.submit([("ACCEPT", conn, b"s" * 8, b"", 1, int(time.time() * 1000), False)])
    started = time.monotonic()
    seen = device.until_closed()
    assert isinstance(seen[0], HelloAccepted)
    assert error_of(seen).code == ErrorCode.IDLE_TIMEOUT
    assert time.monotonic() - started >= 1.1  # 1 s heartbeat x 1.2
    assert driver.expect("CLOSED") == ("CLOSED", conn, int(ErrorCode.IDLE_TIMEOUT))
    assert driver.stats()["idle_closed"] == 1


def test_a_device_that_pings_is_not_idle(make_engine: Any) -> None:
    driver, port = make_engine(idle_factor=1.2, sweep_interval_ms=20)
    device = Device.connect(port)
    device.hello("pinger")
    conn = driver.hello("pinger")
    driver.engine.submit([("ACCEPT", conn, b"s" * 8, b"", 1, int(time.time() * 1000), False)])
    assert isinstance(device.events()[0], HelloAccepted)
    pongs = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # over twice the 1.2 s idle deadline
        device.conn.send_ping(b"p")
        device.flush()
        assert device.events(), "closed while pinging"  # the PONG, answered natively
        pongs += 1
        time.sleep(0.5)  # the device's heartbeat pacing (half its interval), not a wait
    assert pongs >= 4
    assert driver.stats()["idle_closed"] == 0
    assert driver.stats()["mmtp_pings_answered"] == pongs


def test_handshake_deadline_without_hello(make_engine: Any) -> None:
    driver, port = make_engine(handshake_timeout_ms=300, sweep_interval_ms=20)
    device = Device.connect(port)
    assert error_of(device.until_closed()).code == ErrorCode.HANDSHAKE_TIMEOUT
    assert driver.stats()["handshake_timeouts"] == 1
    assert not driver.backlog  # Python never heard of it


def test_per_ip_limit_refuses_before_tls(make_engine: Any) -> None:
    driver, port = make_engine(max_connections_per_ip=2)
    kept = [accepted(driver, port, f"ip-{i}")[0] for i in range(2)]
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        Device.connect(port)
    stats = driver.stats()
    assert stats["refused_per_ip"] == 1
    assert stats["tls_handshakes_full"] == 2  # none for the refused socket
    assert stats["tls_failures"] == 0
    kept[0].close()
    driver.expect("CLOSED")
    accepted(driver, port, "ip-again")  # a slot per address came free


def test_max_connections_refuses_before_tls(make_engine: Any) -> None:
    driver, port = make_engine(max_connections=1)
    kept, _ = accepted(driver, port, "only-one")
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        Device.connect(port)
    stats = driver.stats()
    assert (stats["refused_max_connections"], stats["tls_handshakes_full"]) == (1, 1)
    kept.close()


def test_slow_consumer_is_cut(make_engine: Any) -> None:
    driver, port = make_engine(send_buffer_high_water_bytes=16384)
    device, conn = accepted(driver, port, "sleepy", receive_buffer_bytes=4096)
    for i in range(100):  # random bodies: zstd cannot shrink them
        driver.engine.submit([("PUSH", conn, f"m{i}".encode(), [], os.urandom(60_000), True)])
    assert driver.expect("CLOSED") == ("CLOSED", conn, int(ErrorCode.SLOW_CONSUMER))
    assert driver.stats()["slow_consumers"] == 1
    device.close()


def test_goaway_then_close(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "drained")
    driver.engine.submit([("GOAWAY", conn, int(ErrorCode.SHUTTING_DOWN), 2500, "restarting")])
    (goaway,) = device.events()
    assert isinstance(goaway, GoAwayReceived)
    assert (goaway.code, goaway.reconnect_after_ms, goaway.message) == (
        ErrorCode.SHUTTING_DOWN,
        2500,
        "restarting",
    )
    driver.engine.submit([("CLOSE", conn)])
    assert device.until_closed() == []
    assert driver.expect("CLOSED") == ("CLOSED", conn, 0)


def test_goaway_to_everyone(make_engine: Any) -> None:
    driver, port = make_engine()
    devices = [accepted(driver, port, f"all-{i}")[0] for i in range(3)]
    driver.engine.submit([("GOAWAY", None, int(ErrorCode.SHUTTING_DOWN), 100, "bye")])
    for device in devices:
        assert isinstance(device.events()[0], GoAwayReceived)


def test_device_goaway_is_reported(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "leaving")
    device.conn.send_goaway(ErrorCode.NO_ERROR, message="to background")
    device.flush()
    assert driver.expect("GOAWAY") == ("GOAWAY", conn)


def test_end_sends_the_error_and_closes(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "replaced")
    driver.engine.submit([("END", conn, int(ErrorCode.SESSION_REPLACED), "connected elsewhere")])
    error = error_of(device.until_closed())
    assert (error.code, error.message) == (ErrorCode.SESSION_REPLACED, "connected elsewhere")
    assert driver.expect("CLOSED") == ("CLOSED", conn, int(ErrorCode.SESSION_REPLACED))
    # Commands for it now are stale: ignored and counted, a push reported failed.
    driver.engine.submit([("PUSH", conn, b"late", [], b"", True)])
    assert driver.expect("PUSH_FAILED") == ("PUSH_FAILED", conn, b"late", "closed")
    assert driver.stats()["commands_stale"] == 1


def test_reject_and_abort(make_engine: Any) -> None:
    driver, port = make_engine()
    device = Device.connect(port)
    device.hello("bad-token")
    conn = driver.hello("bad-token")
    driver.engine.submit([("REJECT", conn, int(ErrorCode.AUTH_INVALID), "token expired", 0)])
    assert error_of(device.until_closed()).code == ErrorCode.AUTH_INVALID
    assert driver.expect("CLOSED") == ("CLOSED", conn, int(ErrorCode.AUTH_INVALID))
    other, conn = accepted(driver, port, "aborted")
    driver.engine.submit([("ABORT", conn)])
    assert other.until_closed() == []
    assert driver.expect("CLOSED") == ("CLOSED", conn, 0)


def test_a_device_protocol_error_closes_with_its_code(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "garbage")
    device.sock.sendall(b"\xf0\x00")  # frame type 15 does not exist
    assert error_of(device.until_closed()).code == ErrorCode.UNKNOWN_FRAME_TYPE
    assert driver.expect("CLOSED") == ("CLOSED", conn, int(ErrorCode.UNKNOWN_FRAME_TYPE))
    assert driver.stats()["protocol_errors"] == 1


def test_no_alpn_is_refused(make_engine: Any) -> None:
    driver, port = make_engine()
    # Spec 3.2: the TLS handshake fails with the alert (rustls alone would let it in).
    with pytest.raises(ssl.SSLError, match="no application protocol"):
        Device.connect(port, client_context(alpn=False))
    assert driver.stats()["alpn_refused"] == 1


# ------------------------------------------------------------------ TLS


def test_a_second_engine_sharing_ticket_keys_resumes_the_first_ones_session(
    make_engine: Any,
) -> None:
    keys = [(4, b"k" * 32), (5, b"n" * 32)]
    first, port_a = make_engine(ticket_key_id=4, ticket_keys=keys[:1])
    second, port_b = make_engine(ticket_key_id=5, ticket_keys=keys)  # rotated: 4 still opens
    _, port_c = make_engine()  # a random key of its own
    context = client_context()
    device, _ = accepted(first, port_a, "roamer", context=context)
    session = device.sock.session
    assert session is not None and session.has_ticket and not device.sock.session_reused
    resumed = Device.connect(port_b, context, session=session)
    assert resumed.sock.session_reused
    resumed.hello("roamer")
    second.hello("roamer")
    assert second.stats()["tls_handshakes_resumed"] == 1
    elsewhere = Device.connect(port_c, context, session=session)
    assert not elsewhere.sock.session_reused
    # Rotation on a live engine: once key 4 is retired, its tickets no longer resume.
    second.engine.set_ticket_keys(5, keys[1:])
    again = Device.connect(port_b, context, session=session)
    assert not again.sock.session_reused
    with pytest.raises(ValueError, match="32"):
        second.engine.set_ticket_keys(6, [(6, b"short")])


def test_certificate_reload_keeps_connected_devices(make_engine: Any) -> None:
    driver, port = make_engine()
    before, conn = accepted(driver, port, "before")
    old = before.sock.getpeercert(binary_form=True)
    driver.engine.reload_tls(pem("server2.pem"), pem("server2.key"))
    after, _ = accepted(driver, port, "after")
    assert after.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
        pem("server2.pem").decode()
    )
    assert old != after.sock.getpeercert(binary_form=True)
    driver.engine.submit([("PUSH", conn, b"still-here", [], b"x", False)])
    assert isinstance(before.events()[0], PushReceived)
    with pytest.raises(ValueError, match="tls cert"):
        driver.engine.reload_tls(b"not a pem", pem("server.key"))
    accepted(driver, port, "after-bad-reload")  # the failed reload changed nothing


def test_client_certificates_common_name(make_engine: Any) -> None:
    driver, port = make_engine(tls_client_ca_pem=pem("client-ca.pem"))
    device = Device.connect(port, client_context(client_cert=True))
    device.hello("iot-1")
    assert driver.expect("HELLO")[4] == "device-cn-1"
    phone = Device.connect(port)  # optional: no certificate is fine
    phone.hello("phone")
    assert driver.expect("HELLO")[4] is None


def test_required_client_certificates_refuse_devices_without_one(make_engine: Any) -> None:
    driver, port = make_engine(tls_client_ca_pem=pem("client-ca.pem"), tls_require_client_cert=True)
    try:  # TLS 1.3: the refusal may arrive only after the client's Finished
        refused = Device.connect(port)
        refused.hello("no-cert")
        assert refused.events() == []
    except (ssl.SSLError, ConnectionResetError):
        pass
    assert driver.stats()["tls_failures"] == 1
    assert not driver.backlog  # Python never heard of it
    device = Device.connect(port, client_context(client_cert=True))
    device.hello("iot-2")
    assert driver.expect("HELLO")[4] == "device-cn-1"


def hello_over_memory_bio(raw: socket.socket, device_id: str) -> None:
    """TLS handshake and HELLO over ``raw`` with memory BIOs: ``wrap_socket`` refuses
    a fast-open socket whose SYN has not gone yet (it probes it with a recv)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    conn = Connection(Role.CLIENT)
    conn.send_hello(Hello(device_id=device_id))
    tls.write(conn.data_to_send())
    raw.sendall(outgoing.read())


@pytest.mark.skipif(
    not (fastopen.server_enabled_by_kernel() and fastopen.client_enabled_by_kernel()),
    reason="needs sysctl net.ipv4.tcp_fastopen=3",
)
def test_tcp_fast_open_is_reported_in_hello() -> None:
    engine = Engine(engine_config())
    try:
        port = engine.listen("mmtp", "127.0.0.1", 0, tls=True, fast_open_queue=16)
        driver = Driver(engine)
        source = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}.7"
        flags = []
        # The first only fetches the cookie. The kernel keeps cookies in a host-wide cache
        # other traffic can evict (a connection without one asks again): up to four more.
        for i in range(5):
            raw = socket.socket()
            raw.bind((source, 0))
            assert fastopen.enable_on_client(raw)
            raw.settimeout(WAIT_S)
            raw.connect(("127.0.0.1", port))  # the SYN waits for the first write
            hello_over_memory_bio(raw, f"tfo-{i}")
            flags.append(driver.expect("HELLO")[5])
            raw.close()
            if flags[-1]:
                break
        assert flags[0] is False and flags[-1] is True, flags
        assert engine.stats()["fast_open_connections"] == 1
    finally:
        engine.shutdown()


# ------------------------------------------------------------------ MQTT


def mqtt_engine(**config: Any) -> tuple[Driver, int, int]:
    engine = Engine(engine_config(**config))
    plain = engine.listen("mqtt", "127.0.0.1", 0, tls=False)
    tls = engine.listen("mqtt", "127.0.0.1", 0, tls=True)
    return Driver(engine), plain, tls


def serve_connect(driver: Driver) -> int:
    """Answer the next CONNECT with CONNACK (accepted) and a keepalive deadline."""
    opened = driver.expect("MQTT_OPEN")
    conn = int(opened[1])
    packets = driver.expect("MQTT_PACKETS", lambda e: e[1] == conn)[2]
    assert packets[0][0] >> 4 == 1, packets  # CONNECT
    driver.engine.submit([("MQTT_WRITE", conn, b"\x20\x02\x00\x00"), ("SET_IDLE", conn, 90_000)])
    return conn


def connect_box(driver: Driver, port: int, client_id: bytes) -> tuple[socket.socket, int]:
    """A raw MQTT 3.1.1 box (2-byte client id, keepalive 60) connected and accepted."""
    assert len(client_id) == 2
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.sendall(b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02" + client_id)
    conn = serve_connect(driver)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock, conn


def paho_client(client_id: str) -> tuple[mqtt.Client, threading.Event, list[bytes]]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    connected = threading.Event()
    received: list[bytes] = []
    got = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()

    def on_message(c: Any, u: Any, message: Any) -> None:
        received.append(message.payload)
        got.set()

    client.on_message = on_message
    client.user_data_set(got)
    return client, connected, received


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_mqtt_with_paho(use_tls: bool) -> None:
    driver, plain_port, tls_port = mqtt_engine()
    client, connected, received = paho_client("box-1")
    if use_tls:
        client.tls_set(ca_certs=str(CERTS / "ca.pem"))
    try:
        client.connect("localhost", tls_port if use_tls else plain_port, keepalive=60)
        client.loop_start()
        conn = serve_connect(driver)
        assert connected.wait(WAIT_S)
        # A QoS 1 publish from the device reaches Python whole; Python acks it.
        client.publish("devices/box-1/up", b"reading=42", qos=1)
        (publish,) = driver.expect("MQTT_PACKETS", lambda e: e[1] == conn)[2]
        assert publish[0] >> 4 == 3 and b"reading=42" in publish
        packet_id = publish[-12:-10]
        driver.engine.submit([("MQTT_WRITE", conn, b"\x40\x02" + packet_id)])
        # Python pushes to the device (QoS 0 PUBLISH on its topic).
        topic = b"devices/box-1/down"
        body = b"\x00" + bytes([len(topic)]) + topic + b"hello box"
        got = client.user_data_get()
        driver.engine.submit([("MQTT_WRITE", conn, b"\x30" + bytes([len(body)]) + body)])
        assert got.wait(WAIT_S)
        assert received == [b"hello box"]
        opened_tls = driver.engine.stats()
        assert opened_tls["mqtt_packets_in"] >= 2
        client.disconnect()
        disconnect = driver.expect("MQTT_PACKETS", lambda e: e[1] == conn)[2]
        assert disconnect == [b"\xe0\x00"]
        driver.engine.submit([("MQTT_CLOSE", conn)])
        assert driver.expect("CLOSED")[1] == conn
    finally:
        client.loop_stop()
        driver.engine.shutdown()


def test_mqtt_pingreq_is_answered_by_the_engine_and_oversize_packets_close() -> None:
    driver, plain_port, _ = mqtt_engine(mqtt_max_packet_size=1024)
    try:
        sock, conn = connect_box(driver, plain_port, b"c9")
        sock.sendall(b"\xc0\x00")
        assert sock.recv(2) == b"\xd0\x00"
        assert driver.engine.stats()["mqtt_pings_answered"] == 1
        # 2 KiB announced: refused from the fixed header, before the body is buffered.
        sock.sendall(b"\x30\x80\x10")
        assert driver.expect("CLOSED") == ("CLOSED", conn, int(ErrorCode.FRAME_SIZE_ERROR))
        assert sock.recv(16) == b""
    finally:
        driver.engine.shutdown()


def test_mqtt_bare_pubacks_come_as_packet_ids_once_accepted() -> None:
    driver, plain_port, _ = mqtt_engine()
    try:
        sock, conn = connect_box(driver, plain_port, b"c8")
        sock.sendall(b"\x40\x02\x00\x07\x40\x02\xff\xfe")
        ids: list[int] = []
        while len(ids) < 2:  # one read, almost always: one event
            _, conns, lists = driver.expect("MQTT_PUBACKS")
            assert conns == [conn] * len(lists)
            ids += [packet_id for packet_ids in lists for packet_id in packet_ids]
        assert ids == [7, 0xFFFE]
        # Anything else in the read (here a PUBACK with a reason code): whole packets.
        sock.sendall(b"\x40\x02\x00\x08\x40\x03\x00\x09\x10")
        packets = driver.expect("MQTT_PACKETS", lambda e: e[1] == conn)[2]
        assert packets == [b"\x40\x02\x00\x08", b"\x40\x03\x00\x09\x10"]
        assert driver.engine.stats()["mqtt_packets_in"] >= 4
    finally:
        driver.engine.shutdown()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_mqtt_pushes_held_by_the_engine() -> None:
    """After MQTT_PUSHES the engine builds a push's PUBLISH under its stable packet id,
    keeps it in flight within the limit, and reports its PUBACK as MQTT_ACKS (tracked)
    or a FANOUT_ACKS count; other PUBACKs, and Python's held PUBLISHes' ids, go up."""
    driver, plain_port, _ = mqtt_engine()
    head = topic_head("d/p", MQTT_3_1_1)
    try:
        sock, conn = connect_box(driver, plain_port, b"c6")
        driver.engine.submit([("MQTT_PUSHES", conn, head, False, 2, 2, 0, 0)])
        pushes = [(b"m-a", b"one", True), (b"m-b", b"two", True), (b"m-c", b"three", False)]
        driver.engine.submit([("MQTT_PUSH", conn, m, (), body, tracked)
                              for m, body, tracked in pushes])  # fmt: skip
        ids = {m: stable_packet_id(m.decode()) for m, _, _ in pushes}
        wire = [push_bytes(head, body, 1, ids[m], False, b"") for m, body, _ in pushes]
        # Two in flight (the limit); the third waits.
        assert recv_exactly(sock, len(wire[0]) + len(wire[1])) == wire[0] + wire[1]
        sock.sendall(b"\x40\x02" + ids[b"m-a"].to_bytes(2, "big") + b"\x40\x02\x07\x77")
        assert driver.expect("MQTT_ACKS") == ("MQTT_ACKS", [conn], ["m-a"])
        assert driver.expect("MQTT_PUBACKS") == ("MQTT_PUBACKS", [conn], [[0x777]])
        assert recv_exactly(sock, len(wire[2])) == wire[2]
        # Python's QoS 1 PUBLISH under an id a push holds waits for that push's PUBACK;
        # its own PUBACK is Python's.
        held = encode_publish("d/x", b"mine", 1, ids[b"m-b"], version=MQTT_3_1_1)
        driver.engine.submit([("MQTT_HELD", conn, held)])
        sock.sendall(b"\x40\x02" + ids[b"m-c"].to_bytes(2, "big"))
        driver.wait_fanout_acks(b"m-c", 1)
        sock.sendall(b"\x40\x02" + ids[b"m-b"].to_bytes(2, "big"))
        assert driver.expect("MQTT_ACKS") == ("MQTT_ACKS", [conn], ["m-b"])
        assert recv_exactly(sock, len(held)) == held
        sock.sendall(b"\x40\x02" + ids[b"m-b"].to_bytes(2, "big"))
        assert driver.expect("MQTT_PUBACKS")[2] == [[ids[b"m-b"]]]
        # A push already in flight is not sent twice; too many waiting: refused.
        driver.engine.submit([("MQTT_PUSH", conn, f"w{n}".encode(), (), b"", True)
                              for n in range(5)])  # fmt: skip
        failed = driver.expect("PUSH_FAILED")
        assert failed[1:] == (conn, b"w4", "too many messages waiting for acknowledgements")
        assert driver.engine.stats()["acks_tracked"] == 2
        # Not a box whose pushes are held, or gone: "closed", as PUSH's.
        driver.engine.submit([("MQTT_CLOSE", conn)])
        assert driver.expect("CLOSED")[1] == conn
        driver.engine.submit([("MQTT_PUSH", conn, b"late", (), b"", True)])
        assert driver.expect("PUSH_FAILED")[1:] == (conn, b"late", "closed")
    finally:
        driver.engine.shutdown()


def test_mqtt5_pushes_held_by_the_engine_carry_their_message_id() -> None:
    driver, plain_port, _ = mqtt_engine()
    head = topic_head("devices/b5/push", MQTT_5)
    try:
        sock, conn = connect_box(driver, plain_port, b"c5")
        # The box allows 64 bytes; it saw "m-old" before (accepted before dup_before_ms).
        driver.engine.submit([("MQTT_PUSHES", conn, head, True, 10, 10, 64, 2**40)])
        driver.engine.submit([("MQTT_PUSH", conn, b"m-old", (("k", "v"),), b"hi", True),
                              ("MQTT_PUSH", conn, b"m-big", (), b"x" * 64, True)])  # fmt: skip
        props = push_properties("m-old", (("k", "v"),))
        wire = push_bytes(head, b"hi", 1, stable_packet_id("m-old"), True, props)
        assert recv_exactly(sock, len(wire)) == wire
        failed = driver.expect("PUSH_FAILED")
        assert failed[2] == b"m-big" and "over the box's maximum packet size 64" in failed[3]
    finally:
        driver.engine.shutdown()


def test_an_mqtt5_client_over_the_size_limit_gets_disconnect_0x95() -> None:
    driver, plain_port, _ = mqtt_engine(mqtt_max_packet_size=1024)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5", protocol=mqtt.MQTTv5)
    reasons: list[int] = []
    gone = threading.Event()

    def on_disconnect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        reasons.append(reason.value)
        gone.set()

    client.on_disconnect = on_disconnect
    try:
        client.connect("127.0.0.1", plain_port, keepalive=60)
        client.loop_start()
        opened = driver.expect("MQTT_OPEN")
        conn = int(opened[1])
        driver.expect("MQTT_PACKETS", lambda e: e[1] == conn)
        # CONNACK (MQTT 5: reason 0, no properties) with the keepalive deadline.
        driver.engine.submit(
            [("MQTT_WRITE", conn, b"\x20\x03\x00\x00\x00"), ("SET_IDLE", conn, 90_000)]
        )
        client.publish("devices/v5/up", b"x" * 4096, qos=0)
        assert gone.wait(WAIT_S)
        # MQTT 5 section 4.13: the server says why (0x95, Packet too large) and closes.
        assert reasons == [0x95]
        assert driver.expect("CLOSED") == ("CLOSED", conn, int(ErrorCode.FRAME_SIZE_ERROR))
    finally:
        client.loop_stop()
        driver.engine.shutdown()


def test_mqtt_tls_with_client_certificate() -> None:
    driver, _, tls_port = mqtt_engine(tls_client_ca_pem=pem("client-ca.pem"))
    try:
        client, _, _ = paho_client("box-cert")
        client.tls_set(
            ca_certs=str(CERTS / "ca.pem"),
            certfile=str(CERTS / "client.pem"),
            keyfile=str(CERTS / "client.key"),
        )
        client.connect("localhost", tls_port, keepalive=60)
        client.loop_start()
        opened = driver.expect("MQTT_OPEN")
        assert opened[3:] == ("device-cn-1", True)
        client.loop_stop()
    finally:
        driver.engine.shutdown()


# ------------------------------------------------------------------ boundary


def test_bad_commands_raise_and_apply_nothing(make_engine: Any) -> None:
    driver, port = make_engine()
    device, conn = accepted(driver, port, "strict")
    with pytest.raises(TypeError, match=r"command 1 \(PUSH\): expected"):
        driver.engine.submit([("PUSH", conn, b"ok", [], b"x", True), ("PUSH", conn, b"m")])
    with pytest.raises(ValueError, match="unknown kind"):
        driver.engine.submit([("TELEPORT", conn)])
    with pytest.raises(ValueError, match="not an MMTP error code"):
        driver.engine.submit([("END", conn, 999, "x")])
    with pytest.raises(ValueError, match="message_id"):
        driver.engine.submit([("FANOUT", b"", [], b"x", None)])
    with pytest.raises(TypeError, match="headers"):
        driver.engine.submit([("PUSH", conn, b"m", [("a",)], b"x", True)])
    # The error texts are made only on an error; they still name command and field.
    with pytest.raises(TypeError, match=r"command 0 \(PUSH\): headers: each header"):
        driver.engine.submit([("PUSH", conn, b"m", (("a", 1),), b"x", True)])
    with pytest.raises(TypeError, match=r"command 0 \(PUSH\): body: expected bytes, got str"):
        driver.engine.submit([("PUSH", conn, b"m", [], "x", True)])
    with pytest.raises(TypeError, match=r"command 0 \(PUSH\): message_id: expected bytes"):
        driver.engine.submit([("PUSH", conn, "m", [], b"x", True)])
    with pytest.raises(TypeError, match="command 0: the first item must be its kind"):
        driver.engine.submit([(), ("PUSH", conn, b"m", [], b"x", True)])
    with pytest.raises(TypeError, match="command 0: the first item must be its kind"):
        driver.engine.submit([(7, conn)])
    assert driver.stats()["commands"] == 1  # the ACCEPT; nothing of the bad batches
    driver.engine.submit([("PUSH", conn, b"after", [], b"x", True)])
    assert isinstance(device.events()[0], PushReceived)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match='unknown key "max_conections"'):
        Engine({"max_conections": 1})
    with pytest.raises(TypeError, match="handshake_timeout_ms"):
        Engine({"handshake_timeout_ms": "soon"})
    with pytest.raises(ValueError, match="idle_factor"):
        Engine({"idle_factor": 1.0})
    for share in ("some", 1.5, -0.5):
        with pytest.raises(TypeError, match="compress_min_saving"):
            Engine({"compress_min_saving": share})
    with pytest.raises(ValueError, match="tls_key_pem"):
        Engine({"tls_cert_pem": pem("server.pem")})
    with pytest.raises(ValueError, match="tls key"):
        Engine({"tls_cert_pem": pem("server.pem"), "tls_key_pem": b"junk"})
    engine = Engine({})
    try:
        with pytest.raises(ValueError, match="TLS"):
            engine.listen("mmtp", "127.0.0.1", 0, tls=True)
        with pytest.raises(ValueError, match="kind"):
            engine.listen("http", "127.0.0.1", 0, tls=False)  # type: ignore[arg-type]
    finally:
        engine.shutdown()


def test_listen_with_reuse_port_twice_and_close_listeners() -> None:
    engine = Engine(engine_config())
    try:
        port = engine.listen("mmtp", "127.0.0.1", 0, tls=True, reuse_port=True, backlog=64)
        assert engine.listen("mmtp", "127.0.0.1", port, tls=True, reuse_port=True) == port
        driver = Driver(engine)
        device, conn = accepted(driver, port, "stays")
        engine.close_listeners()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        engine.submit([("PUSH", conn, b"m", [], b"open connections stay", False)])
        assert isinstance(device.events()[0], PushReceived)
    finally:
        engine.shutdown()


def test_stats_shape() -> None:
    engine = Engine({})
    try:
        stats = engine.stats()
        assert stats["connections"] == 0
        assert set(stats["frames_in"]) >= {"HELLO", "PUSH", "ACK"}
        assert all(isinstance(v, int) for k, v in stats.items() if not k.startswith("frame"))
    finally:
        engine.shutdown()
