"""Which topics a device may subscribe to: ``[topics] allow``.

A topic name is segments of ``[A-Za-z0-9_-]`` joined by ``.`` (1..128 characters).
A rule is a pattern of segments, any of which may be:

* literal text, e.g. ``public``;
* ``*`` — any one segment;
* ``**`` — one or more segments (as the last segment only);
* text with one placeholder, e.g. ``{user_id}`` or ``u-{device_id}``: the device's own
  ``{device_id}``, ``{user_id}`` or ``{app_id}`` (from its verified token), as literal
  text.

A device may subscribe to a topic when any rule matches it. A placeholder only stands
for an id that is itself one segment (``[A-Za-z0-9_-]+``); a rule whose placeholder
meets an id with a dot or another character matches nothing for that device. Were it
otherwise, ``user.{user_id}.**`` would give user ``a`` (``user.a.**``) and user
``a.b`` (``user.a.b.**``) topics in common; this way ``user.a.b.x`` is user ``a``'s
alone. The default (``DEFAULT_RULES``) lets every device join ``public.*`` topics and
its own user's and device's namespaces, and nothing else: a new install is closed
until the operator opens more. ``["**"]`` allows every topic (the behaviour before
rules existed).

Backends push to any topic (the API key's ``push`` scope); the rules decide who may
receive it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_RULES = ("public.**", "user.{user_id}.**", "device.{device_id}.**")
PLACEHOLDERS = ("device_id", "user_id", "app_id")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_RULE_SEGMENT = re.compile(r"([A-Za-z0-9_-]*)(?:\{([a-z_]+)\}([A-Za-z0-9_-]*))?")


class TopicRuleError(ValueError):
    """A rule is malformed; the message says which and why."""


class TopicForbidden(ValueError):
    """A device asked for a topic ``[topics] allow`` does not give it."""


@dataclass(frozen=True, slots=True)
class _Segment:
    prefix: str
    #: The placeholder's name ("" for a literal segment, "*" and "**" for wildcards).
    placeholder: str = ""
    suffix: str = ""


@dataclass(frozen=True, slots=True)
class TopicRule:
    text: str
    segments: tuple[_Segment, ...]

    def matches(self, topic: str, ids: dict[str, str]) -> bool:
        parts = topic.split(".")
        segments = self.segments
        if segments[-1].placeholder == "**":
            if len(parts) < len(segments):
                return False
            segments = segments[:-1]
            parts = parts[: len(segments)]
        elif len(parts) != len(segments):
            return False
        return all(_segment_matches(s, p, ids) for s, p in zip(segments, parts, strict=True))


def _segment_matches(segment: _Segment, part: str, ids: dict[str, str]) -> bool:
    name = segment.placeholder
    if not name:
        return part == segment.prefix
    if name == "*":
        return True
    value = ids.get(name, "")
    # Only an id that is one segment itself stands for it (see the module docstring).
    return bool(_SEGMENT.fullmatch(value)) and part == segment.prefix + value + segment.suffix


def parse_rule(text: str) -> TopicRule:
    if not text:
        raise TopicRuleError("a rule must not be empty")
    segments: list[_Segment] = []
    raw = text.split(".")
    for index, piece in enumerate(raw):
        if piece in ("*", "**"):
            if piece == "**" and index != len(raw) - 1:
                raise TopicRuleError(f"{text!r}: ** may only be the last segment")
            segments.append(_Segment("", piece))
            continue
        found = _RULE_SEGMENT.fullmatch(piece)
        if not piece or found is None:
            raise TopicRuleError(
                f"{text!r}: segment {piece!r} must be A-Z a-z 0-9 _ - with at most one "
                f"{{placeholder}}, or * or ** (segments are split on '.')"
            )
        prefix, name, suffix = found.group(1), found.group(2) or "", found.group(3) or ""
        if name and name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise TopicRuleError(f"{text!r}: unknown placeholder {{{name}}} (known: {known})")
        segments.append(_Segment(prefix, name, suffix))
    return TopicRule(text, tuple(segments))


class TopicRules:
    """The rules of ``[topics] allow``, checked per device."""

    def __init__(self, rules: Sequence[str]) -> None:
        self.rules = tuple(parse_rule(rule) for rule in rules)

    def allows(self, topic: str, *, device_id: str, user_id: str, app_id: str) -> bool:
        ids = {"device_id": device_id, "user_id": user_id, "app_id": app_id}
        return any(rule.matches(topic, ids) for rule in self.rules)

    def describe(self) -> str:
        """The rules as a device may be told them ("" when there are none)."""
        return ", ".join(rule.text for rule in self.rules)
