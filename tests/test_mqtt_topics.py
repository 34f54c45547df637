"""Topic names, topic filters, shared subscriptions and matching (MQTT 5.0 section 4.7, 4.8.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.mqtt import InvalidTopic, ReasonCode, TopicTrie, topic_matches
from channel.mqtt.topics import (
    check_topic_filter,
    check_topic_name,
    is_valid_topic_filter,
    is_valid_topic_name,
    split_shared,
)


@pytest.mark.parametrize("name", ["a", "/", "a/b", "a//b", "$SYS/x", " ", "sport/tennis", "ü/€"])
def test_valid_topic_names(name: str) -> None:
    assert is_valid_topic_name(name)
    check_topic_name(name)


@pytest.mark.parametrize("name", ["", "a/+", "#", "a/#", "+", "a+b", "a#"])
def test_invalid_topic_names(name: str) -> None:
    assert not is_valid_topic_name(name)
    with pytest.raises(InvalidTopic) as caught:
        check_topic_name(name)
    assert caught.value.reason_code == ReasonCode.TOPIC_NAME_INVALID


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#", "+", "a/#", "a/+", "+/+", "/+", "+/tennis/#", "sport/tennis/player1/#",
        "a//b", "$SYS/#", "$share", "$share/g/a/#", "$share/g/+", "$share/g/#", "$shared/x",
    ],
)  # fmt: skip
def test_valid_topic_filters(topic_filter: str) -> None:
    assert is_valid_topic_filter(topic_filter)
    check_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "", "a/#/b", "sport/tennis#", "a#", "#/a", "a/b+", "+a", "a/++",
        "$share/", "$share/g", "$share/g/", "$share//a", "$share/+/a", "$share/#/a",
        "$share/g+/a", "$share/g/a/#/b",
    ],
)  # fmt: skip
def test_invalid_topic_filters(topic_filter: str) -> None:
    assert not is_valid_topic_filter(topic_filter)
    with pytest.raises(InvalidTopic) as caught:
        check_topic_filter(topic_filter)
    assert caught.value.reason_code == ReasonCode.TOPIC_FILTER_INVALID


def test_split_shared() -> None:
    assert split_shared("$share/group/a/+/c") == ("group", "a/+/c")
    assert split_shared("a/b") == (None, "a/b")
    assert split_shared("$share") == (None, "$share")


# (filter, topic, matches): the examples of MQTT 5.0 section 4.7.1 and 4.7.2.
MATCHES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("a/b", "a/b", True),
    ("a/b", "a/B", False),
    ("a/b", "a/b/", False),
    ("+", "", True),  # an empty level; topic names cannot be empty, filters see it anyway
    ("#", "$SYS/x", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/+/Clients", "$SYS/monitor/Clients", True),
    ("a/#", "a", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
    trie: TopicTrie[str] = TopicTrie()
    trie.add(topic_filter, "s")
    assert list(trie.match(topic)) == (["s"] if expected else [])


_levels = st.sampled_from(["a", "b", "", "$x", "$SYS"])
_topics = st.lists(_levels, min_size=1, max_size=4).map("/".join).filter(bool)
_filters = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(st.one_of(_levels, st.just("+")), min_size=0, max_size=4),
    st.sampled_from([[], ["#"]]),
).filter(bool)


@settings(max_examples=300, deadline=None)
@given(filters=st.lists(_filters, max_size=12), topic=_topics)
def test_trie_agrees_with_the_reference_matcher(filters: list[str], topic: str) -> None:
    trie: TopicTrie[int] = TopicTrie()
    for index, topic_filter in enumerate(filters):
        trie.add(topic_filter, index)
    expected = sorted(i for i, f in enumerate(filters) if topic_matches(f, topic))
    assert sorted(trie.match(topic)) == expected


@settings(max_examples=200, deadline=None)
@given(filters=st.lists(_filters, min_size=1, max_size=10), data=st.data())
def test_trie_remove_prunes_back_to_empty(filters: list[str], data: st.DataObject) -> None:
    trie: TopicTrie[str] = TopicTrie()
    for topic_filter in filters:
        trie.add(topic_filter, "sub")
    assert len(trie) == len(set(filters))
    for topic_filter in data.draw(st.permutations(sorted(set(filters)))):
        assert trie.remove(topic_filter, "sub")
        assert not trie.remove(topic_filter, "sub")
    assert len(trie) == 0
    assert trie._root.children == {}  # no node is left behind


def test_trie_values_per_filter() -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.add("devices/+/push", "a")
    assert not trie.add("devices/+/push", "a")
    assert trie.add("devices/box-1/#", "a")
    assert trie.add("devices/box-1/push", "b")
    assert sorted(trie.match("devices/box-1/push")) == ["a", "a", "b"]
    assert trie.remove("devices/+/push", "a")
    assert sorted(trie.match("devices/box-1/push")) == ["a", "b"]
    assert not trie.remove("devices/none", "a")
