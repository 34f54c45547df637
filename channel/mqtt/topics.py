"""Topic names and topic filters (MQTT 5.0 section 4.7, shared subscriptions 4.8.2).

* A topic name is at least one character and holds no wildcard (``+``, ``#``).
* A topic filter is at least one character; ``#`` only as the whole last
  level, ``+`` only as a whole level.
* ``$share/{ShareName}/{filter}`` is a shared subscription: a non-empty share
  name without ``/``, ``+`` or ``#``, then a valid non-empty filter. Both
  protocol levels treat it so (as Mosquitto and EMQX do for 3.1.1 clients).

U+0000 and the length limit are the string layer's business
(``channel.mqtt.primitives``). The ``*_problem`` functions return what is
wrong (or ``None``) so the decoder raises ``InvalidTopic`` and the encoder
``LocalMqttError`` with the same words.
"""

from __future__ import annotations

from channel.mqtt.errors import InvalidTopic
from channel.mqtt.reasons import ReasonCode

SHARE_PREFIX = "$share/"


def topic_name_problem(name: str) -> str | None:
    if not name:
        return "topic name is empty"
    if "+" in name or "#" in name:
        return f"topic name {name!r} contains a wildcard"
    return None


def _plain_filter_problem(topic_filter: str) -> str | None:
    if not topic_filter:
        return "topic filter is empty"
    if "+" not in topic_filter and "#" not in topic_filter:
        return None
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            return f"topic filter {topic_filter!r}: '#' must be the whole last level"
        if "+" in level and level != "+":
            return f"topic filter {topic_filter!r}: '+' must be a whole level"
    return None


def topic_filter_problem(topic_filter: str) -> str | None:
    if not topic_filter.startswith(SHARE_PREFIX):
        return _plain_filter_problem(topic_filter)
    share_name, slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not share_name or "+" in share_name or "#" in share_name:
        return f"shared subscription {topic_filter!r}: bad share name {share_name!r}"
    if not slash or not inner:
        return f"shared subscription {topic_filter!r} has no topic filter"
    return _plain_filter_problem(inner)


def is_valid_topic_name(name: str) -> bool:
    return topic_name_problem(name) is None


def is_valid_topic_filter(topic_filter: str) -> bool:
    return topic_filter_problem(topic_filter) is None


def check_topic_name(name: str) -> None:
    """Raise ``InvalidTopic`` (0x90 Topic Name invalid) for a bad topic name."""
    problem = topic_name_problem(name)
    if problem is not None:
        raise InvalidTopic(ReasonCode.TOPIC_NAME_INVALID, problem)


def check_topic_filter(topic_filter: str) -> None:
    """Raise ``InvalidTopic`` (0x8F Topic Filter invalid) for a bad topic filter."""
    problem = topic_filter_problem(topic_filter)
    if problem is not None:
        raise InvalidTopic(ReasonCode.TOPIC_FILTER_INVALID, problem)


def is_shared(topic_filter: str) -> bool:
    return topic_filter.startswith(SHARE_PREFIX)


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``(share name, filter)`` of a valid filter; ``(None, filter)`` if not shared."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    share_name, _, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    return share_name, inner
