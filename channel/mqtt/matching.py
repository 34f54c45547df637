"""Which topic filters match a topic name (MQTT 5.0 section 4.7).

``topic_matches`` is the reference: short enough to check by eye. ``TopicTrie``
answers "which of these many filters match this topic" in time proportional
to the topic's levels and the filters that actually match, not to the number
of filters; the tests hold it to ``topic_matches`` on random filters and
topics.

Rules: ``+`` matches exactly one level (which may be empty), ``#`` matches
the parent level and any number of levels below it, and a topic starting with
``$`` is not matched by a filter whose first level is a wildcard ([MQTT-4.7.2-1]).
Filters passed here must be valid and not shared (``split_shared`` first).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V", bound=Hashable)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic_filter`` matches the topic name ``topic``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


class _Node(Generic[V]):
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.values: set[V] = set()


class TopicTrie(Generic[V]):
    """Filters to values (subscribers); ``match(topic)`` yields each value whose filter matches.

    A value added under several matching filters is yielded once per filter;
    callers that need one delivery per subscriber de-duplicate.
    """

    __slots__ = ("_filters", "_root")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._filters = 0

    def __len__(self) -> int:
        """Number of (filter, value) pairs held."""
        return self._filters

    def add(self, topic_filter: str, value: V) -> bool:
        """Hold ``value`` under ``topic_filter``; False if it was already there."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if value in node.values:
            return False
        node.values.add(value)
        self._filters += 1
        return True

    def remove(self, topic_filter: str, value: V) -> bool:
        """Drop ``value`` from ``topic_filter`` and prune empty nodes; False if absent."""
        path = [self._root]
        for level in topic_filter.split("/"):
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        if value not in path[-1].values:
            return False
        path[-1].values.discard(value)
        self._filters -= 1
        levels = topic_filter.split("/")
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.values or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return True

    def match(self, topic: str) -> Iterator[V]:
        """Values of every filter matching the topic name ``topic``."""
        levels = topic.split("/")
        dollar = topic.startswith("$")
        stack: list[tuple[_Node[V], int]] = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            wildcards_allowed = not (dollar and depth == 0)
            if wildcards_allowed:
                hash_node = node.children.get("#")
                if hash_node is not None:
                    yield from hash_node.values
            if depth == len(levels):
                yield from node.values
                continue
            exact = node.children.get(levels[depth])
            if exact is not None:
                stack.append((exact, depth + 1))
            if wildcards_allowed:
                plus = node.children.get("+")
                if plus is not None:
                    stack.append((plus, depth + 1))
