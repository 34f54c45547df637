"""Operations the gateway answers itself, without an upstream.

``channel.echo`` returns the request body (a device can measure its round trip
and check its channel end to end on a fresh install, before any backend is
configured); ``channel.time`` returns the gateway's clock in ms (clock-skew
checks); ``channel.subscribe`` / ``channel.unsubscribe`` (body
``{"topics": ["news", ...]}``) add or drop this connection's topic
subscriptions, answering ``{"topics": <how many it now has>}``. A device can
only subscribe itself: the device id comes from its session, never the body; and
only to topics ``[topics] allow`` gives it (``channel/push/topics.py``), else the
whole call is refused with ``FORBIDDEN`` naming the topic.
Everything else goes to the RPC router.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from channel import fastjson
from channel.push.requests import TOPIC_PATTERN
from channel.push.topics import TopicForbidden
from channel.rpc.model import RpcRequest, RpcResponse
from channel.wire import ErrorCode

if TYPE_CHECKING:
    from channel.push.delivery import NodeDelivery

ECHO_OP = "channel.echo"
TIME_OP = "channel.time"
SUBSCRIBE_OP = "channel.subscribe"
UNSUBSCRIBE_OP = "channel.unsubscribe"
TOPIC_NAME = re.compile(TOPIC_PATTERN)
_JSON = (("content-type", "application/json"),)


#: Built-in operations that may run twice with the same effect (TLS early data).
IDEMPOTENT_OPS = frozenset((ECHO_OP, TIME_OP))
#: Every op ``builtin_response`` may answer itself.
BUILTIN_OPS = frozenset((ECHO_OP, TIME_OP, SUBSCRIBE_OP, UNSUBSCRIBE_OP))


def builtin_response(
    request: RpcRequest, delivery: NodeDelivery | None = None
) -> RpcResponse | None:
    if request.op == ECHO_OP:
        return RpcResponse(0, (("content-type", "application/octet-stream"),), request.body)
    if request.op == TIME_OP:
        body = json.dumps({"server_time_ms": int(time.time() * 1000)}).encode()
        return RpcResponse(0, _JSON, body)
    if request.op in (SUBSCRIBE_OP, UNSUBSCRIBE_OP) and delivery is not None:
        return _topics(request, delivery)
    return None


def _topics(request: RpcRequest, delivery: NodeDelivery) -> RpcResponse:
    try:
        body = fastjson.loads(request.body)
    except fastjson.DecodeError:  # not JSON, or nested too deep to parse
        body = None
    if not isinstance(body, dict) or "topics" not in body:
        return RpcResponse.error(ErrorCode.BAD_REQUEST, 'body must be {"topics": [names]}')
    topics = body["topics"]
    if not isinstance(topics, list) or not all(
        isinstance(t, str) and TOPIC_NAME.fullmatch(t) for t in topics
    ):
        return RpcResponse.error(
            ErrorCode.BAD_REQUEST, "topics: a list of names of 1-128 of [A-Za-z0-9._-]"
        )
    device_id = request.device.device_id
    try:
        if request.op == SUBSCRIBE_OP:
            count = delivery.subscribe(device_id, topics)
        else:
            count = delivery.unsubscribe(device_id, topics)
    except TopicForbidden as exc:
        return RpcResponse.error(ErrorCode.FORBIDDEN, str(exc))
    except ValueError as exc:
        return RpcResponse.error(ErrorCode.BAD_REQUEST, str(exc))
    return RpcResponse(0, _JSON, json.dumps({"topics": count}).encode())
