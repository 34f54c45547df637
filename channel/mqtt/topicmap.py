"""Where Channel's pushes and RPC meet MQTT topics (``docs/mqtt.md``, "Topics").

Every box has a namespace, ``devices/<device id>/`` (the prefix of ``[mqtt]
push_topic``), holding:

========================== ====== =============================================
topic                      who    what
========================== ====== =============================================
``push``                   server pushes to the device (``[mqtt] push_topic``)
``req/<op>[/<corr>]``      box    an RPC request, routed to the backends
``res/<corr>[/error]``     server its answer (3.1.1, and 5.0 without a Response Topic)
``call/<op>[/<token>]``    server a backend's call to the box
``call-res/<token>``       box    the box's answer to that call
``up/...``                 box    messages for backends (``[mqtt] uplink_topics``)
========================== ====== =============================================

At MQTT 5 a request may name its own Response Topic (the answer goes there,
to this box only) and carry Correlation Data (echoed); a call carries a
Response Topic and Correlation Data the box echoes. At 3.1.1 the correlation
is a topic level. The ``req`` and ``call-res`` topics of a box are its own: a
box may not publish on another's.

A topic push to ``a.b`` (the push API's dotted names) reaches MQTT subscribers
of ``<[mqtt] topic_prefix>a/b``; a broadcast reaches ``[mqtt] broadcast_topic``.
"""

from __future__ import annotations

from dataclasses import dataclass

from channel.config import MqttConfig
from channel.mqtt.sessions import namespace_owner

REQUEST = "req"
ANSWER = "res"
CALL = "call"
CALL_ANSWER = "call-res"


@dataclass(frozen=True, slots=True)
class RpcTopic:
    """A box PUBLISH on one of its RPC topics."""

    kind: str  # REQUEST or CALL_ANSWER
    #: The request's op, or the call's token.
    name: str
    #: A 3.1.1 request's correlation level ("" if none).
    correlation: str = ""


class TopicMap:
    def __init__(self, config: MqttConfig) -> None:
        self._push = config.push_topic
        #: ``devices/``: what comes before a box's device id in its topics.
        self.prefix = config.push_topic.split("{device_id}")[0]
        self._broadcast = config.broadcast_topic
        self._topic_prefix = config.topic_prefix

    def push_topic(self, device_id: str) -> str:
        return self._push.replace("{device_id}", device_id)

    def fanout_topic(self, push_topic: str) -> str:
        if not push_topic:
            return self._broadcast
        return self._topic_prefix + push_topic.replace(".", "/")

    def answer_topic(self, device_id: str, correlation: str, error: bool) -> str:
        topic = f"{self.prefix}{device_id}/{ANSWER}/{correlation}"
        return topic + "/error" if error else topic

    def call_topic(self, device_id: str, op: str, token: str, with_token: bool) -> str:
        topic = f"{self.prefix}{device_id}/{CALL}/{op}"
        return f"{topic}/{token}" if with_token else topic

    def call_reply_topic(self, device_id: str, token: str) -> str:
        return f"{self.prefix}{device_id}/{CALL_ANSWER}/{token}"

    def rpc_topic(self, topic: str) -> tuple[str, RpcTopic] | None:
        """(owner device id, what) for a topic in some box's RPC topics, else None."""
        owner = namespace_owner(topic, self.prefix)
        if owner is None:
            return None
        kind, _, tail = topic[len(self.prefix) + len(owner) + 1 :].partition("/")
        if not tail:
            return None
        if kind == REQUEST:
            op, _, correlation = tail.partition("/")
            return owner, RpcTopic(REQUEST, op, correlation)
        if kind == CALL_ANSWER:
            return owner, RpcTopic(CALL_ANSWER, tail)
        return None
