"""Real MQTT clients against the codec: what paho-mqtt and mosquitto_pub / mosquitto_sub send.

Each test opens a plain TCP listener on 127.0.0.1 port 0 (``ScriptedBroker``)
that parses what one client sends with ``Parser`` and answers with packets
made by ``encode`` (CONNACK, PUBACK / PUBREC / PUBCOMP, SUBACK with one
delivered PUBLISH, UNSUBACK, PINGRESP), so the clients go all the way
through CONNECT, PUBLISH at QoS 1 and 2, SUBSCRIBE, UNSUBSCRIBE and
DISCONNECT. The test then compares every packet received with the packet it
expects, field by field, and checks the client understood our answers.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    NO_PROPERTIES,
    PINGRESP,
    Connack,
    Connect,
    Disconnect,
    MqttError,
    Packet,
    Parser,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)

WAIT_S = 20.0
R = ReasonCode

#: What the broker tells MQTT 5 clients in its CONNACK.
CONNACK_PROPERTIES = Properties(
    receive_maximum=50, topic_alias_maximum=10, retain_available=True,
    maximum_packet_size=1 << 20, shared_subscription_available=True,
)  # fmt: skip


class ScriptedBroker:
    """Serves one connection on 127.0.0.1:0 with ``Parser`` and ``encode``."""

    def __init__(
        self, deliver: Publish | None = None, deliver_after: type[Packet] = Subscribe
    ) -> None:
        #: Sent with the answer to the first ``deliver_after`` packet (SUBSCRIBE or UNSUBSCRIBE).
        self.deliver = deliver
        self.deliver_after = deliver_after
        self.received: list[Packet] = []
        self.errors: list[BaseException] = []
        self.version: int | None = None
        self.closed = threading.Event()
        self._changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(WAIT_S)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[list[Packet]], bool]) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self.received), WAIT_S), self.received

    def finish(self) -> list[Packet]:
        """Wait for the client to hang up; every packet it sent, no PINGREQ."""
        assert self.closed.wait(WAIT_S), "the client did not close the connection"
        self._thread.join(WAIT_S)
        self._listener.close()
        assert not self.errors, self.errors
        return [p for p in self.received if not isinstance(p, Pingreq)]

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with conn:
                conn.settimeout(WAIT_S)
                self._conversation(conn)
        except (MqttError, OSError, AssertionError) as exc:
            self.errors.append(exc)
        finally:
            self.closed.set()

    def _conversation(self, conn: socket.socket) -> None:
        parser = Parser(max_packet_size_bytes=1 << 20)
        while data := _recv(conn):
            for packet in parser.feed(data):
                self.version = parser.version
                with self._changed:
                    self.received.append(packet)
                    self._changed.notify_all()
                assert self.version is not None
                for reply in self._replies(packet, self.version):
                    conn.sendall(encode(reply, self.version))
                if isinstance(packet, Disconnect):
                    return

    def _replies(self, packet: Packet, version: int) -> list[Packet]:
        if isinstance(packet, Connect):
            assigned = None if packet.client_id else "auto-1"
            props = CONNACK_PROPERTIES if version == MQTT_5 else NO_PROPERTIES
            if assigned:
                props = dataclasses.replace(props, assigned_client_identifier=assigned)
            return [Connack(properties=props)]
        if isinstance(packet, Publish) and packet.qos:
            return [(Puback if packet.qos == 1 else Pubrec)(packet.packet_id)]
        if isinstance(packet, Pubrel):
            return [Pubcomp(packet.packet_id)]
        if isinstance(packet, Subscribe):
            codes = tuple(
                R.NOT_AUTHORIZED if s.topic_filter.startswith("forbidden/") else R(s.qos)
                for s in packet.subscriptions
            )
            suback = Suback(packet.packet_id, codes, Properties(reason_string="ok"))
            return [suback, *self._delivery(packet)]
        if isinstance(packet, Unsubscribe):
            codes = (R.SUCCESS,) * len(packet.topic_filters)
            return [Unsuback(packet.packet_id, codes), *self._delivery(packet)]
        if isinstance(packet, Pingreq):
            return [PINGRESP]
        return []

    def _delivery(self, packet: Packet) -> list[Packet]:
        if self.deliver is None or not isinstance(packet, self.deliver_after):
            return []
        deliver, self.deliver = self.deliver, None
        return [deliver]


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except ConnectionResetError:  # mosquitto_sub may reset rather than close
        return b""


@pytest.fixture
def delivered() -> Publish:
    return Publish(
        "devices/box-1/push", b'{"order":42}', 1, packet_id=1,
        properties=Properties(
            response_topic="devices/box-1/reply", correlation_data=b"\x00\x01",
            user_properties=(("trace", "t-1"),), subscription_identifiers=(7,),
            message_expiry_interval_s=300, content_type="application/json",
        ),
    )  # fmt: skip


# ------------------------------------------------------------ mosquitto clients

MOSQUITTO = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None, reason="mosquitto clients are not installed"
)


def _run(broker: ScriptedBroker, *args: str) -> str:
    done = subprocess.run(
        [*args[:1], "-h", "127.0.0.1", "-p", str(broker.port), *args[1:]],
        capture_output=True, timeout=WAIT_S, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr, broker.errors)
    return done.stdout


@MOSQUITTO
def test_mosquitto_pub_v5_with_every_property_it_can_send() -> None:
    broker = ScriptedBroker()
    _run(
        broker, "mosquitto_pub", "-V", "mqttv5", "-q", "2", "-t", "devices/box-1/sale",
        "-m", '{"sum":12}', "-i", "box-1", "-u", "box-1", "-P", "tok", "-k", "30", "-x", "3600",
        "-D", "connect", "receive-maximum", "20",
        "-D", "connect", "user-property", "shop", "12",
        "-D", "connect", "maximum-packet-size", "100000",
        "-D", "connect", "topic-alias-maximum", "5",
        "-D", "connect", "request-response-information", "1",
        "-D", "connect", "request-problem-information", "0",
        "-D", "publish", "message-expiry-interval", "30",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "response-topic", "devices/box-1/reply",
        "-D", "publish", "correlation-data", "abc",
        "-D", "publish", "payload-format-indicator", "1",
        "-D", "publish", "user-property", "till", "3",
        "-D", "publish", "topic-alias", "1",
        "--will-topic", "devices/box-1/status", "--will-payload", "offline",
        "--will-qos", "1", "--will-retain",
        "-D", "will", "message-expiry-interval", "60",
        "-D", "will", "content-type", "text/plain",
        "-D", "disconnect", "session-expiry-interval", "0",
        "-D", "disconnect", "user-property", "bye", "now",
    )  # fmt: skip
    assert broker.finish() == [
        Connect(
            "box-1", True, 30, "box-1", b"tok",
            Will("devices/box-1/status", b"offline", 1, True,
                 Properties(message_expiry_interval_s=60, content_type="text/plain")),
            Properties(
                session_expiry_interval_s=3600, request_problem_information=False,
                request_response_information=True, receive_maximum=20, topic_alias_maximum=5,
                user_properties=(("shop", "12"),), maximum_packet_size=100000,
            ),
        ),
        Publish(
            "devices/box-1/sale", b'{"sum":12}', 2, packet_id=1,
            properties=Properties(
                payload_format_indicator=1, message_expiry_interval_s=30,
                content_type="application/json", response_topic="devices/box-1/reply",
                correlation_data=b"abc", topic_alias=1, user_properties=(("till", "3"),),
            ),
        ),
        Pubrel(1),
        Disconnect(
            R.NORMAL_DISCONNECTION,
            Properties(session_expiry_interval_s=0, user_properties=(("bye", "now"),)),
        ),
    ]  # fmt: skip
    assert broker.version == MQTT_5


@MOSQUITTO
def test_mosquitto_pub_v311_retained_qos1_with_will() -> None:
    broker = ScriptedBroker()
    _run(
        broker, "mosquitto_pub", "-V", "mqttv311", "-q", "1", "-r", "-t", "devices/box-1/sale",
        "-m", "x", "-i", "box-1", "-u", "box-1", "-P", "tok", "-k", "30",
        "--will-topic", "w/t", "--will-payload", "bye", "--will-qos", "2",
    )  # fmt: skip
    assert broker.finish() == [
        Connect("box-1", True, 30, "box-1", b"tok", Will("w/t", b"bye", 2, False)),
        Publish("devices/box-1/sale", b"x", 1, retain=True, packet_id=1),
        Disconnect(),
    ]
    assert broker.version == MQTT_3_1_1


@MOSQUITTO
@pytest.mark.parametrize(("flag", "version"), [("mqttv5", MQTT_5), ("mqttv311", MQTT_3_1_1)])
def test_mosquitto_sub_subscribes_receives_and_acknowledges(
    flag: str, version: int, delivered: Publish
) -> None:
    # Delivered with the UNSUBACK: the last thing sent, so mosquitto_sub has read everything
    # when it hangs up (closing with unread data would reset the connection and could lose
    # its DISCONNECT).
    broker = ScriptedBroker(deliver=delivered, deliver_after=Unsubscribe)
    extra = ["-D", "subscribe", "user-property", "a", "b"] if version == MQTT_5 else []
    out = _run(
        broker, "mosquitto_sub", "-V", flag, "-q", "1", "-C", "1", "-W", "15", "-c",
        "-i", "box-1", "-t", "devices/box-1/#", "-t", "$share/shops/orders/+", "-U", "old/#",
        "-F", "%t %p", *extra,
    )  # fmt: skip
    assert out == 'devices/box-1/push {"order":42}\n'
    connect_props = Properties(session_expiry_interval_s=0xFFFFFFFF, receive_maximum=1)
    subscribe_props = Properties(user_properties=(("a", "b"),))
    v5 = version == MQTT_5
    assert broker.finish() == [
        Connect("box-1", False, 60, properties=connect_props if v5 else NO_PROPERTIES),
        Subscribe(
            1,
            (Subscription("devices/box-1/#", 1), Subscription("$share/shops/orders/+", 1)),
            subscribe_props if v5 else NO_PROPERTIES,
        ),
        Unsubscribe(2, ("old/#",)),
        Puback(1),
        Disconnect(),
    ]


# ------------------------------------------------------------ paho-mqtt


class PahoRun:
    """A paho client on its own network thread, with events for what the tests wait on."""

    def __init__(self, client_id: str, protocol: int, **kwargs: Any) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.unsubscribed = threading.Event()
        self.messages: list[paho.MQTTMessage] = []
        self.message = threading.Event()
        self.connack: tuple[Any, Any] | None = None
        self.suback_codes: list[Any] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = lambda *args: self.unsubscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connack = (code, props)
        self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self.suback_codes = list(codes)
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.append(message)
        self.message.set()

    def start(self, port: int, **kwargs: Any) -> None:
        self.client.connect("127.0.0.1", port, **kwargs)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S)

    def stop(self, **kwargs: Any) -> None:
        self.client.disconnect(**kwargs)
        self.client.loop_stop()


def _paho_props(packet_type: int, **values: Any) -> PahoProperties:
    props = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def test_paho_v5_conversation(delivered: Publish) -> None:
    broker = ScriptedBroker(deliver=delivered)
    run = PahoRun("box-1", paho.MQTTv5)
    run.client.username_pw_set("box-1", "tok")
    will_props = _paho_props(PacketTypes.WILLMESSAGE, WillDelayInterval=10)
    run.client.will_set("devices/box-1/status", b"offline", 1, True, will_props)
    connect_props = _paho_props(
        PacketTypes.CONNECT, SessionExpiryInterval=600, ReceiveMaximum=32,
        UserProperty=[("app", "pos")],
    )  # fmt: skip
    run.start(broker.port, keepalive=45, clean_start=True, properties=connect_props)
    code, props = run.connack or (None, None)
    assert code == 0 and props.TopicAliasMaximum == 10 and props.ReceiveMaximum == 50

    publish_props = _paho_props(
        PacketTypes.PUBLISH, ResponseTopic="devices/box-1/reply", CorrelationData=b"\x01\x02",
        MessageExpiryInterval=120, ContentType="application/json", PayloadFormatIndicator=1,
        UserProperty=[("k", "v"), ("k", "w")],
    )  # fmt: skip
    run.client.publish("devices/box-1/sale", b'{"sum":3}', 2, properties=publish_props)
    broker.wait_for(lambda got: any(isinstance(p, Pubrel) for p in got))
    options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True, retainHandling=2)
    run.client.subscribe(
        [("devices/box-1/push", options), ("forbidden/x", SubscribeOptions(qos=0))],
        properties=_paho_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7),
    )
    assert run.subscribed.wait(WAIT_S) and run.message.wait(WAIT_S)
    broker.wait_for(lambda got: any(isinstance(p, Puback) for p in got))
    run.client.unsubscribe(["devices/box-1/push"])
    assert run.unsubscribed.wait(WAIT_S)
    run.stop(reasoncode=PahoReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))

    assert broker.finish() == [
        Connect(
            "box-1", True, 45, "box-1", b"tok",
            Will("devices/box-1/status", b"offline", 1, True,
                 Properties(will_delay_interval_s=10)),
            Properties(session_expiry_interval_s=600, receive_maximum=32,
                       user_properties=(("app", "pos"),)),
        ),
        Publish(
            "devices/box-1/sale", b'{"sum":3}', 2, packet_id=1,
            properties=Properties(
                payload_format_indicator=1, message_expiry_interval_s=120,
                content_type="application/json", response_topic="devices/box-1/reply",
                correlation_data=b"\x01\x02", user_properties=(("k", "v"), ("k", "w")),
            ),
        ),
        Pubrel(1),
        Subscribe(
            2,
            (Subscription("devices/box-1/push", 1, True, True, RetainHandling.DO_NOT_SEND),
             Subscription("forbidden/x", 0)),
            Properties(subscription_identifiers=(7,)),
        ),
        Puback(1),
        Unsubscribe(3, ("devices/box-1/push",)),
        Disconnect(R.DISCONNECT_WITH_WILL_MESSAGE),
    ]  # fmt: skip
    # What paho made of the packets we encoded.
    assert [int(c.value) for c in run.suback_codes] == [1, 0x87]
    (message,) = run.messages
    assert (message.topic, message.payload, message.qos) == (
        "devices/box-1/push",
        b'{"order":42}',
        1,
    )
    assert message.properties.ResponseTopic == "devices/box-1/reply"
    assert message.properties.CorrelationData == b"\x00\x01"
    assert message.properties.UserProperty == [("trace", "t-1")]
    assert message.properties.SubscriptionIdentifier == [7]
    assert message.properties.MessageExpiryInterval == 300


def test_paho_v311_conversation(delivered: Publish) -> None:
    broker = ScriptedBroker(deliver=delivered)
    run = PahoRun("box-2", paho.MQTTv311, clean_session=False)
    run.client.username_pw_set("box-2", "tok")
    run.client.will_set("devices/box-2/status", b"offline", 2, False)
    run.start(broker.port, keepalive=20)
    code, _ = run.connack or (None, None)
    assert code == 0

    run.client.publish("devices/box-2/sale", b"3.50", 1, retain=True)
    broker.wait_for(lambda got: any(isinstance(p, Publish) for p in got))
    run.client.subscribe([("devices/box-2/#", 2), ("forbidden/x", 0)])
    assert run.subscribed.wait(WAIT_S) and run.message.wait(WAIT_S)
    broker.wait_for(lambda got: any(isinstance(p, Puback) for p in got))
    run.client.unsubscribe("devices/box-2/#")
    assert run.unsubscribed.wait(WAIT_S)
    run.stop()

    assert broker.finish() == [
        Connect("box-2", False, 20, "box-2", b"tok", Will("devices/box-2/status", b"offline", 2)),
        Publish("devices/box-2/sale", b"3.50", 1, True, packet_id=1),
        Subscribe(2, (Subscription("devices/box-2/#", 2), Subscription("forbidden/x", 0))),
        Puback(1),
        Unsubscribe(3, ("devices/box-2/#",)),
        Disconnect(),
    ]
    # At 3.1.1 the refusal went out as 0x80 and the delivery without its properties.
    assert [int(c.value) for c in run.suback_codes] == [2, 0x80]
    (message,) = run.messages
    assert (message.topic, message.payload, message.qos) == (
        "devices/box-1/push",
        b'{"order":42}',
        1,
    )
