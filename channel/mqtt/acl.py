"""Per-client topic ACLs: topic filter patterns with ``%c`` (client id) and ``%u`` (user id).

A pattern is an MQTT topic filter whose levels may be ``%c`` or ``%u`` (the whole
level), standing for the box's own client id (its device id) and user id. A
placeholder only stands for an id that is itself one level: an id that is empty
or holds ``/``, ``+`` or ``#`` makes the pattern match nothing for that box, so
client ``a/b`` cannot reach ``devices/a/b/...`` through ``devices/%c/#``.

Two questions are asked of a list of patterns:

* ``matches(topic)``: does some pattern match this topic name (may a box publish on
  it; does a deny list hold it)?
* ``covers(filter)``: is every topic the filter can match matched by one pattern
  (may a box subscribe to it)? ``devices/%c/#`` covers ``devices/%c/push`` and
  ``devices/%c/+``, not ``devices/+/push``. A deny list refuses the filters it
  covers; the messages a broader filter would bring from a denied topic are
  dropped when delivered (``MqttService.may_read``).
"""

from __future__ import annotations

from collections.abc import Sequence

from channel.mqtt.matching import topic_matches
from channel.mqtt.topics import split_shared, topic_filter_problem

PLACEHOLDERS = ("%c", "%u")
_WILDCARDS = frozenset("/+#")


class AclError(ValueError):
    """A pattern is malformed; the message says which and why."""


def _check(pattern: str) -> tuple[str, ...]:
    levels = tuple(pattern.split("/"))
    for level in levels:
        if "%" in level and level not in PLACEHOLDERS:
            raise AclError(
                f"{pattern!r}: a placeholder is a whole level, %c (client id) or %u (user id)"
            )
    plain = "/".join("x" if level in PLACEHOLDERS else level for level in levels)
    problem = topic_filter_problem(plain)
    if problem is not None or plain.startswith("$share/"):
        raise AclError(f"{pattern!r}: not a topic filter ({problem or 'shared'})")
    return levels


def _one_level(value: str) -> bool:
    return bool(value) and not _WILDCARDS.intersection(value)


class TopicPatterns:
    """A list of patterns, expanded per box."""

    __slots__ = ("_patterns", "texts")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.texts = tuple(patterns)
        self._patterns = tuple(_check(p) for p in patterns)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def expand(self, client_id: str, user_id: str) -> list[str]:
        """The patterns as filters for this box (those whose placeholders can stand)."""
        values = {"%c": client_id, "%u": user_id}
        out = []
        for levels in self._patterns:
            parts = []
            for level in levels:
                if level in values:
                    value = values[level]
                    if not _one_level(value):
                        break
                    parts.append(value)
                else:
                    parts.append(level)
            else:
                out.append("/".join(parts))
        return out

    def matches(self, topic: str, client_id: str, user_id: str) -> bool:
        return any(topic_matches(p, topic) for p in self.expand(client_id, user_id))

    def covers(self, topic_filter: str, client_id: str, user_id: str) -> bool:
        inner = split_shared(topic_filter)[1].split("/")
        return any(_covers(p.split("/"), inner) for p in self.expand(client_id, user_id))


def _covers(pattern: list[str], levels: list[str]) -> bool:
    """Every topic ``levels`` (a filter) matches is matched by ``pattern``."""
    for index, want in enumerate(pattern):
        if want == "#":
            return True
        if index >= len(levels):
            return False
        have = levels[index]
        if have == "#":
            return False
        if want == "+":
            continue
        if have != want:  # a "+" under a literal covers more than the literal
            return False
    return len(pattern) == len(levels)
