"""Topic permissions: ``[topics] allow`` rules, and a device kept out of others' topics.

The rules are checked on their own (patterns, placeholders, ids that are not one
segment, malformed rules), then end to end: real gateway, real SDK devices, on the
memory and Redis backends. The end-to-end case is the one found by attacking the
gateway: a device subscribing to another user's topic received its pushes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from channel.config import ConfigError, load_config
from channel.push.model import PushRequest, Target, TargetKind
from channel.push.topics import DEFAULT_RULES, TopicRuleError, TopicRules
from sdk_client import BadRequest, Forbidden
from tests.gateway_harness import gateway
from tests.test_push_e2e import backend, online, service  # noqa: F401 (fixture)

pytestmark = pytest.mark.both_engines

DEVICE = {"device_id": "d1", "user_id": "alice", "app_id": "wallet"}


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("public.news", True),
        ("public.sport.scores", True),
        ("public", False),  # ** is one or more segments
        ("user.alice.inbox", True),
        ("user.alice.inbox.urgent", True),
        ("user.alice", False),
        ("user.bob.inbox", False),
        ("user-bob-private", False),
        ("user.alice-x.inbox", False),
        ("device.d1.config", True),
        ("device.d2.config", False),
        ("news", False),
        ("publicity.x", False),
    ],
)
def test_default_rules(topic: str, allowed: bool) -> None:
    assert TopicRules(DEFAULT_RULES).allows(topic, **DEVICE) is allowed


def test_wildcards_placeholders_inside_segments_and_open_rules() -> None:
    rules = TopicRules(["app.{app_id}.*", "u-{user_id}-private", "team.*.chat"])
    assert rules.allows("app.wallet.offers", **DEVICE)
    assert not rules.allows("app.wallet.offers.more", **DEVICE)  # * is one segment
    assert not rules.allows("app.shop.offers", **DEVICE)
    assert rules.allows("u-alice-private", **DEVICE)
    assert not rules.allows("u-bob-private", **DEVICE)
    assert rules.allows("team.red.chat", **DEVICE)
    assert TopicRules(["**"]).allows("anything.at.all", **DEVICE)
    assert not TopicRules([]).allows("public.news", **DEVICE)


def test_an_id_that_is_not_one_segment_gets_no_namespace() -> None:
    """User "a" must not reach user "a.b"'s topics through user.{user_id}.**."""
    rules = TopicRules(DEFAULT_RULES)
    dotted = {**DEVICE, "user_id": "a.b"}
    assert not rules.allows("user.a.b.inbox", **dotted)
    # So user.a.b.inbox is user a's alone: no user "a.b" can have a namespace.
    assert rules.allows("user.a.b.inbox", **{**DEVICE, "user_id": "a"})
    assert not rules.allows("user.x.inbox", **{**DEVICE, "user_id": "x@y"})
    assert not rules.allows("user..inbox", **{**DEVICE, "user_id": ""})
    assert rules.allows("public.news", **dotted)


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("", "empty"),
        ("a..b", "segment ''"),
        ("**.a", "last segment"),
        ("a.b*", "segment 'b*'"),
        ("user.{uid}.*", "unknown placeholder {uid}"),
        ("x.{user_id}{device_id}", "segment"),
        ("a/b", "segment"),
    ],
)
def test_malformed_rules_are_named(rule: str, words: str) -> None:
    with pytest.raises(TopicRuleError, match=words.replace("*", r"\*").replace("{", r"\{")):
        TopicRules([rule])


def test_config_refuses_a_bad_rule_and_takes_overrides(tmp_path: Path) -> None:
    config_file = tmp_path / "channel.toml"
    config_file.write_text('[topics]\nallow = ["public.**", "a..b"]\n')
    with pytest.raises(ConfigError, match=r"topics\.allow"):
        load_config(config_file, environ={})
    config = load_config(None, environ={"CHANNEL_TOPICS__ALLOW": '["**"]'})
    assert config.topics.allow == ["**"]
    assert load_config(None, environ={}).topics.allow == list(DEFAULT_RULES)


async def test_a_device_cannot_join_another_users_topic(
    tmp_path: Path,
    backend: dict[str, Any],  # noqa: F811 (fixture)
) -> None:
    async with (
        gateway(tmp_path, push=backend) as gw,
        online(gw, "alice-phone", user_id="alice") as (alice,),
        online(gw, "bob-phone", user_id="bob") as (bob,),
    ):
        assert await bob.client.subscribe("user.bob.private") == 1
        for stolen in ("user.bob.private", "user-bob-private", "device.bob-phone.config"):
            with pytest.raises(Forbidden, match="may not subscribe"):
                await alice.client.subscribe(stolen)
        # One refused topic refuses the whole call: nothing was added.
        with pytest.raises(Forbidden, match=r"user\.bob\.x"):
            await alice.client.subscribe("public.news", "user.bob.x")
        assert await alice.client.subscribe("public.news", "user.alice.inbox") == 2
        assert await alice.client.subscribe("device.alice-phone.config") == 3
        with pytest.raises(BadRequest):  # not a topic name at all
            await alice.client.subscribe("no spaces")

        svc = service(gw)
        await svc.accept([PushRequest(Target(TargetKind.TOPIC, ("user.bob.private",)), b"secret")])
        await bob.wait_pushes(1)
        # A broadcast behind it: had alice joined, the topic push would come first.
        await svc.accept([PushRequest(Target(TargetKind.BROADCAST), b"all")])
        await alice.wait_pushes(1)
        await bob.wait_pushes(2)
        assert alice.bodies == [b"all"]
        assert bob.bodies == [b"secret", b"all"]


async def test_open_rules_restore_any_topic(
    tmp_path: Path,
    backend: dict[str, Any],  # noqa: F811 (fixture)
) -> None:
    async with (
        gateway(tmp_path, push=backend, topics={"allow": ["**"]}) as gw,
        online(gw, "d1") as (device,),
    ):
        assert await device.client.subscribe("news", "user.someone.else") == 2
