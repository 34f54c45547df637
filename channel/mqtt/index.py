"""Which sessions subscribe to a topic: the node's view, for routing a PUBLISH.

Two kinds of subscription, found two ways:

* **own-namespace** ones (``devices/<own client id>/...``, what the default ACL
  allows): only that client's session record answers for them, so routing a
  PUBLISH on ``devices/d1/...`` reads ``d1``'s record and nothing else. They cost
  the fleet nothing per node, however many boxes there are.
* **global** ones (anything else: ``TopicA``, ``devices/+/status``,
  ``$share/g/...``): every node keeps all of the fleet's in ``GlobalIndex``, a
  ``TopicTrie``, loaded from the store at start and kept current by the
  envelopes nodes send each other on every change (``[mqtt]
  max_global_subscriptions`` bounds them).

``LocalIndex`` is the node's own connected boxes by filter: what a topic push
from the API reaches (``NodeDelivery.topic_members``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from channel.mqtt.matching import TopicTrie
from channel.mqtt.sessions import GlobalEntry, SubOptions
from channel.mqtt.topics import split_shared

S = TypeVar("S", bound=Hashable)


class GlobalIndex:
    def __init__(self) -> None:
        self._trie: TopicTrie[tuple[str, str]] = TopicTrie()
        self._entries: dict[tuple[str, str], GlobalEntry] = {}
        self._by_client: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, entries: Iterable[GlobalEntry]) -> None:
        for entry in entries:
            self._put(entry)

    def apply(
        self, client_id: str, changes: Mapping[str, SubOptions | None], expires_at_ms: int
    ) -> None:
        for topic_filter, options in changes.items():
            if options is None:
                self._drop(client_id, topic_filter)
            else:
                self._put(GlobalEntry(client_id, topic_filter, options, expires_at_ms))

    def filters_of(self, client_id: str) -> dict[str, SubOptions]:
        return {
            f: self._entries[(client_id, f)].options for f in self._by_client.get(client_id, ())
        }

    def match(self, topic: str) -> list[GlobalEntry]:
        return [self._entries[key] for key in set(self._trie.match(topic))]

    def _put(self, entry: GlobalEntry) -> None:
        key = (entry.client_id, entry.topic_filter)
        if key not in self._entries:
            self._trie.add(split_shared(entry.topic_filter)[1], key)
            self._by_client.setdefault(entry.client_id, set()).add(entry.topic_filter)
        self._entries[key] = entry

    def _drop(self, client_id: str, topic_filter: str) -> None:
        key = (client_id, topic_filter)
        if self._entries.pop(key, None) is None:
            return
        self._trie.remove(split_shared(topic_filter)[1], key)
        filters = self._by_client.get(client_id)
        if filters is not None:
            filters.discard(topic_filter)
            if not filters:
                del self._by_client[client_id]


class LocalIndex(Generic[S]):
    """This node's connections by the filters they subscribe to."""

    def __init__(self) -> None:
        self._trie: TopicTrie[tuple[S, str]] = TopicTrie()

    def add(self, session: S, filters: Iterable[str]) -> None:
        for topic_filter in filters:
            self._trie.add(split_shared(topic_filter)[1], (session, topic_filter))

    def remove(self, session: S, filters: Iterable[str]) -> None:
        for topic_filter in filters:
            self._trie.remove(split_shared(topic_filter)[1], (session, topic_filter))

    def match(self, topic: str) -> set[S]:
        return {session for session, _ in self._trie.match(topic)}
