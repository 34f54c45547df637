"""Hypothesis strategies for valid MQTT packets of every type at both protocol levels.

``packets(version, direction)`` draws any packet a client (``"client"``) or a
server (``"server"``) may send; properties are drawn from the property table
itself (``PROPERTY_SPECS``), so a property added there is generated here too.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    NO_PROPERTIES,
    PINGREQ,
    PINGRESP,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
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
)
from channel.mqtt.primitives import MAX_VARINT
from channel.mqtt.properties import (
    PROPERTY_SPECS,
    WILL_PROPERTIES,
    PropertyId,
    PropertySpec,
    PropertyType,
)
from channel.mqtt.reasons import ALLOWED_REASON_CODES, PacketType

# Any Unicode scalar value but U+0000 (surrogates cannot be encoded in UTF-8).
text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_level = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00/+#"), max_size=6
)
topic_names = st.lists(_level, min_size=1, max_size=5).map("/".join).filter(bool)
_plain_filters = st.builds(
    lambda levels, hash_end: "/".join(levels + (["#"] if hash_end else [])),
    st.lists(st.one_of(_level, st.just("+")), min_size=0, max_size=4),
    st.booleans(),
).filter(bool)
topic_filters = st.one_of(
    _plain_filters.filter(lambda f: not f.startswith("$share/")),
    st.builds(lambda g, f: f"$share/{g}/{f}", _level.filter(bool), _plain_filters),
)
packet_ids = st.integers(1, 0xFFFF)
qos = st.integers(0, 2)


def _value(spec: PropertySpec) -> st.SearchStrategy[Any]:
    kind, valid = spec.kind, spec.valid
    if spec.property_id is PropertyId.RESPONSE_TOPIC:
        return topic_names
    if kind is PropertyType.BOOL:
        return st.booleans()
    if kind is PropertyType.STRING:
        return text
    if kind is PropertyType.BINARY:
        return st.binary(max_size=16)
    if kind is PropertyType.STRING_PAIR:
        return st.tuples(text, text)
    top = {
        PropertyType.BYTE: 0xFF,
        PropertyType.UINT16: 0xFFFF,
        PropertyType.UINT32: 0xFFFF_FFFF,
        PropertyType.VARINT: MAX_VARINT,
    }[kind]
    values = st.integers(0, top)
    return values.filter(valid) if valid is not None else values


def properties(where: int, version: int, exclude: frozenset[str] = frozenset()) -> Any:
    """Any valid property set for packet ``where`` (``NO_PROPERTIES`` at level 4)."""
    if version == MQTT_3_1_1:
        return st.just(NO_PROPERTIES)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for spec in PROPERTY_SPECS:
        if where not in spec.allowed_in or spec.field in exclude:
            continue
        if spec.repeatable:
            many = 1 if spec.kind is PropertyType.VARINT and where != PacketType.PUBLISH else 3
            optional[spec.field] = st.lists(_value(spec), min_size=1, max_size=many).map(tuple)
        else:
            optional[spec.field] = _value(spec)
    return st.fixed_dictionaries({}, optional=optional).map(lambda d: Properties(**d))


def reasons(packet_type: PacketType, version: int) -> st.SearchStrategy[ReasonCode]:
    allowed = ALLOWED_REASON_CODES[packet_type]
    if version == MQTT_3_1_1:
        if packet_type == PacketType.CONNACK:
            allowed = frozenset(
                {
                    ReasonCode.SUCCESS,
                    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                    ReasonCode.SERVER_UNAVAILABLE,
                    ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                    ReasonCode.NOT_AUTHORIZED,
                }
            )
        elif packet_type == PacketType.SUBACK:
            allowed = frozenset({ReasonCode(0), ReasonCode(1), ReasonCode(2), ReasonCode(0x80)})
        else:
            allowed = frozenset({ReasonCode.SUCCESS})
    return st.sampled_from(sorted(allowed))


# ------------------------------------------------------------ packets


def wills(version: int) -> Any:
    return st.builds(
        Will, topic_names, st.binary(max_size=20), qos, st.booleans(),
        properties(WILL_PROPERTIES, version),
    )  # fmt: skip


@st.composite
def connects(draw: st.DrawFn, version: int) -> Connect:
    username = draw(st.none() | text)
    password = draw(st.none() | st.binary(max_size=12))
    if version == MQTT_3_1_1 and username is None:
        password = None
    return Connect(
        draw(text), draw(st.booleans()), draw(st.integers(0, 0xFFFF)), username, password,
        draw(st.none() | wills(version)), draw(properties(PacketType.CONNECT, version)),
    )  # fmt: skip


@st.composite
def connacks(draw: st.DrawFn, version: int) -> Connack:
    reason = draw(reasons(PacketType.CONNACK, version))
    present = draw(st.booleans()) and not reason.is_error
    return Connack(present, reason, draw(properties(PacketType.CONNACK, version)))


@st.composite
def publishes(draw: st.DrawFn, version: int, from_client: bool) -> Publish:
    level = draw(qos)
    exclude = frozenset({"subscription_identifiers"}) if from_client else frozenset()
    props = draw(properties(PacketType.PUBLISH, version, exclude))
    topic = draw(topic_names)
    if props.topic_alias is not None and draw(st.booleans()):
        topic = ""
    return Publish(
        topic, draw(st.binary(max_size=40)), level, draw(st.booleans()),
        draw(packet_ids) if level else 0, draw(st.booleans()) if level else False, props,
    )  # fmt: skip


def pub_acks(version: int) -> Any:
    return st.one_of(
        *[
            st.builds(cls, packet_ids, reasons(ptype, version), properties(ptype, version))
            for cls, ptype in (
                (Puback, PacketType.PUBACK),
                (Pubrec, PacketType.PUBREC),
                (Pubrel, PacketType.PUBREL),
                (Pubcomp, PacketType.PUBCOMP),
            )
        ]
    )


@st.composite
def subscriptions(draw: st.DrawFn, version: int) -> Subscription:
    topic_filter = draw(topic_filters)
    if version == MQTT_3_1_1:
        return Subscription(topic_filter, draw(qos))
    no_local = draw(st.booleans()) and not topic_filter.startswith("$share/")
    return Subscription(
        topic_filter, draw(qos), no_local, draw(st.booleans()),
        draw(st.sampled_from(list(RetainHandling))),
    )  # fmt: skip


def subscribes(version: int) -> Any:
    return st.builds(
        Subscribe, packet_ids,
        st.lists(subscriptions(version), min_size=1, max_size=4).map(tuple),
        properties(PacketType.SUBSCRIBE, version),
    )  # fmt: skip


def subacks(version: int) -> Any:
    return st.builds(
        Suback, packet_ids,
        st.lists(reasons(PacketType.SUBACK, version), min_size=1, max_size=4).map(tuple),
        properties(PacketType.SUBACK, version),
    )  # fmt: skip


def unsubscribes(version: int) -> Any:
    return st.builds(
        Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1, max_size=4).map(tuple),
        properties(PacketType.UNSUBSCRIBE, version),
    )  # fmt: skip


def unsubacks(version: int) -> Any:
    if version == MQTT_3_1_1:
        return st.builds(Unsuback, packet_ids)
    return st.builds(
        Unsuback, packet_ids,
        st.lists(reasons(PacketType.UNSUBACK, version), min_size=1, max_size=4).map(tuple),
        properties(PacketType.UNSUBACK, version),
    )  # fmt: skip


def disconnects(version: int) -> Any:
    if version == MQTT_3_1_1:
        return st.just(Disconnect())
    return st.builds(
        Disconnect,
        reasons(PacketType.DISCONNECT, version),
        properties(PacketType.DISCONNECT, version),
    )


def auths() -> Any:
    return st.builds(Auth, reasons(PacketType.AUTH, MQTT_5), properties(PacketType.AUTH, MQTT_5))


def client_packets(version: int) -> st.SearchStrategy[Packet]:
    """Anything a client may send after its CONNECT."""
    choices = [
        publishes(version, from_client=True), pub_acks(version), subscribes(version),
        unsubscribes(version), st.just(PINGREQ), disconnects(version),
    ]  # fmt: skip
    if version == MQTT_5:
        choices.append(auths())
    return st.one_of(*choices)


def server_packets(version: int) -> st.SearchStrategy[Packet]:
    """Anything a server may send."""
    choices = [
        connacks(version), publishes(version, from_client=False), pub_acks(version),
        subacks(version), unsubacks(version), st.just(PINGRESP),
    ]  # fmt: skip
    if version == MQTT_5:
        choices += [disconnects(version), auths()]
    return st.one_of(*choices)


def any_packet(version: int) -> st.SearchStrategy[Packet]:
    return st.one_of(connects(version), client_packets(version), server_packets(version))
