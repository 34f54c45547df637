"""Per-app compression end to end, on both engines: a real gateway with a files registry,
the SDK as the device, an aiohttp upstream.

A device with no dictionary receives its app's and uses it; a dictionary published
while devices are connected reaches them without a reconnect; a device holding an
older id keeps working; connection-scoped headers reach the upstream on every call;
sampled bodies retrain the app's dictionary; /metrics and the admin view count
bodies per app and dictionary.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from channel.admincli import compression_table
from channel.compression.registry import FileRegistry
from channel.corpus import message_body_bytes
from channel.corpus_apps import generate_app_corpus
from channel.dicttrain import train_dictionary
from channel.presetbuild import build_preset
from channel.wire import Dictionary, DictionaryStore
from channel.wire.presets import Preset
from sdk_client import Backoff, Client
from tests.gateway_harness import RunningGateway, gateway, http_upstream

pytestmark = pytest.mark.both_engines

APP = "com.example.chirp"
WAIT_S = 10.0


def _bodies(seed: int, n: int = 200) -> list[bytes]:
    """``n`` bodies of the social app (about 16 per session)."""
    messages = generate_app_corpus("social", n // 8 + 2, seed, 0.1)
    bodies = [message_body_bytes(m) for m in messages][:n]
    assert len(bodies) == n
    return bodies


def _dictionary(dict_id: int, seed: int) -> Dictionary:
    return train_dictionary(_bodies(seed, 400), dict_id, 4096, threads=1)


@pytest.fixture
async def upstream() -> AsyncIterator[dict[str, Any]]:
    """Echoes bodies; records the headers of every call."""
    seen: dict[str, Any] = {"headers": []}

    async def echo(request: web.Request) -> web.StreamResponse:
        seen["headers"].append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(body=await request.read(), content_type="application/json")

    async with http_upstream({"/rpc/{op}": echo}) as url:
        seen["url"] = url
        yield seen


def _config(tmp_path: Path, upstream: dict[str, Any], **compression: Any) -> dict[str, Any]:
    return {
        "rpc": {
            "clusters": {"feed": {"endpoints": [upstream["url"]]}},
            "routes": [{"match": "feed.", "cluster": "feed"}],
        },
        "compression": {
            "dir": str(tmp_path / "registry"),
            "dict_budget_bytes": 262_144,
            "dict_chunk_bytes": 1024,
            "reload_interval_s": 60,
            **compression,
        },
        "limits": {"requests_per_second": 1000, "request_burst": 1000},
    }


def _client(gw: RunningGateway, device_id: str, **options: Any) -> Client:
    return Client(
        "127.0.0.1",
        gw.port,
        device_id=device_id,
        token=gw.token(device_id, app_id=APP),
        ca_file=gw.ca_cert,
        app_id=APP,
        backoff=Backoff(initial_s=0.01, max_s=0.05),
        **options,
    )


async def _until(predicate: Any, what: str) -> None:
    """Wait (bounded) for a condition the gateway reaches asynchronously."""
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


def _received_with(gw: RunningGateway, dict_id: int) -> int:
    """Bodies of the app the gateway received compressed with ``dict_id``."""
    view = gw.node.compression_view()
    rows = view["apps"].get(APP, {}).get("usage", [])  # type: ignore[attr-defined]
    return sum(r["bodies"] for r in rows if r["dictionary"] == dict_id)


async def test_a_device_without_a_dictionary_gets_its_apps_and_uses_it(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    registry = FileRegistry(tmp_path / "registry")
    app_dict = _dictionary(20, 1)
    await registry.publish_dictionary(APP, app_dict)
    async with gateway(tmp_path / "gw", **_config(tmp_path, upstream)) as gw:
        client = _client(gw, "d1", dictionaries=DictionaryStore(), dictionary_dir=tmp_path / "d1")
        async with client:
            await _until(lambda: client.stats.dictionaries_received == 1, "the DICT delivery")
            assert client._link is not None and client._link.conn.outgoing_dictionary == 20
            body = _bodies(2)[0]
            answer = await client.call("feed.home", body)
            assert answer.body == body
            await _until(lambda: _received_with(gw, 20) >= 1, "a body compressed with 20")
        assert (tmp_path / "d1" / "dict-20.mmtpdict").exists()
        # The next connection announces it: no second delivery, compressed from the start.
        again = _client(gw, "d1", dictionaries=DictionaryStore(), dictionary_dir=tmp_path / "d1")
        async with again:
            assert 20 in again.dictionaries.ids
            await again.call("feed.home", _bodies(2)[1])
            assert again.stats.dictionaries_received == 0
        deliveries = gw.node.dictionary_delivery_counts()
        assert deliveries["done"] == 1 and deliveries["bytes"] == len(app_dict.content)


async def test_a_retrained_dictionary_reaches_connected_devices_and_old_ids_keep_working(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    registry = FileRegistry(tmp_path / "registry")
    old = _dictionary(30, 3)
    await registry.publish_dictionary(APP, old)
    async with gateway(tmp_path / "gw", **_config(tmp_path, upstream)) as gw:
        # This device holds the old dictionary (it got it on an earlier connection).
        holder = _client(gw, "d-old", dictionaries=DictionaryStore([old]))
        async with holder:
            await holder.call("feed.home", _bodies(4)[0])
            assert holder.stats.dictionaries_received == 0
            new = _dictionary(31, 5)
            await registry.publish_dictionary(APP, new)
            assert await gw.node.compression.reload()
            await _until(lambda: holder.stats.dictionaries_received == 1, "the new DICT")
            assert holder._link is not None and holder._link.conn.outgoing_dictionary == 31
            await holder.call("feed.home", _bodies(4)[1])
            await _until(lambda: _received_with(gw, 31) >= 1, "a body compressed with 31")
        # A device that only holds the old id still connects, calls, and is upgraded.
        late = _client(gw, "d-late", dictionaries=DictionaryStore([old]))
        async with late:
            assert late._last_ack is not None and late._last_ack.newest_dictionary == 31
            answer = await late.call("feed.home", _bodies(4)[2])
            assert answer.body == _bodies(4)[2]
            await _until(lambda: late.stats.dictionaries_received == 1, "the current DICT")
        assert _received_with(gw, 30) >= 1


async def test_app_preset_connection_headers_reach_the_upstream_on_every_call(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    train = list(generate_app_corpus("social", 120, 1, 0.1))
    preset = build_preset(train, 41, "chirp")
    assert "authorization" in preset.connection
    registry = FileRegistry(tmp_path / "registry")
    await registry.publish_preset(APP, preset)
    async with gateway(tmp_path / "gw", **_config(tmp_path, upstream)) as gw:
        client = _client(gw, "d2", preset=preset)
        async with client:
            identity = [("authorization", "Bearer abc.def"), ("user-agent", "Chirp/7.1")]
            for n in range(3):
                headers = [*identity, ("x-request-id", f"6ba7b810-9dad-11d1-80b4-00c04fd430c{n}")]
                await client.call("feed.home", b'{"limit":10}', headers=headers)
            await client.call("feed.home", b'{"limit":10}', headers=identity[1:])
        calls = upstream["headers"]
        assert [c.get("user-agent") for c in calls] == ["Chirp/7.1"] * 4
        assert [c.get("authorization") for c in calls] == ["Bearer abc.def"] * 3 + [None]
        assert calls[2]["x-request-id"] == "6ba7b810-9dad-11d1-80b4-00c04fd430c2"


async def test_traceparent_and_template_fields_reach_the_upstream_unchanged(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    """Typed fields of the newer kinds decode to the very text the device sent (spec 9.8)."""
    preset = Preset(
        173,  # presets are per process: 42 must stay unknown for test_wire_fields_hello
        "shaped",
        (),
        typed=(
            ("traceparent", "traceparent"),
            ("x-pos", "template:{5};{5};{0}"),
            ("x-note", "template:id={s}; v={0}"),
        ),
    )
    registry = FileRegistry(tmp_path / "registry")
    await registry.publish_preset(APP, preset)
    sent = [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("x-pos", "51.86645;-4.41320;35"),
        ("x-note", "id=caf\u00e9 au lait; v=-7"),
    ]
    off_shape = [("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")]
    async with gateway(tmp_path / "gw", **_config(tmp_path, upstream)) as gw:
        client = _client(gw, "d-shaped", preset=preset)
        async with client:
            await client.call("feed.home", b"{}", headers=sent)
            await client.call("feed.home", b"{}", headers=[*off_shape, ("x-pos", "-0.00000;1;2")])
    calls = upstream["headers"]
    assert [(n, calls[0].get(n)) for n, _ in sent] == sent
    assert calls[1]["traceparent"] == off_shape[0][1] and calls[1]["x-pos"] == "-0.00000;1;2"


async def test_sampled_bodies_retrain_the_apps_dictionary(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    config = _config(
        tmp_path,
        upstream,
        sample_apps=[APP],
        sample_fraction=1.0,
        sample_per_device=1000,
        retrain_min_samples=64,
        retrain_interval_s=0,
        dict_size_bytes=4096,
    )
    async with gateway(tmp_path / "gw", **config) as gw:
        bodies = _bodies(6, 160)
        clients = [_client(gw, f"s{i}") for i in range(8)]
        for i, client in enumerate(clients):
            async with client:
                for body in bodies[i * 20 : (i + 1) * 20]:
                    await client.call("feed.home", body)
        # The native engine reports the calls it answered itself (and their bodies)
        # every few ms, after the answers.
        await _until(lambda: gw.node.compression.sampler.count(APP) >= 64, "64 samples")
        verdict = await gw.node.compression.retrain_app(APP)
        assert verdict is not None and verdict.pays(0.03), verdict
        current = gw.node.compression.current_dictionary(APP)
        assert current == verdict.candidate.dict_id and current > 1
        assert (tmp_path / "registry" / APP / f"dict-{current}.mmtpdict").exists()
        async with _client(gw, "s-new") as fresh:
            assert fresh._last_ack is not None and fresh._last_ack.newest_dictionary == current
            await _until(lambda: fresh.stats.dictionaries_received == 1, "the retrained DICT")


async def test_metrics_and_admin_view_count_bodies_per_app_and_dictionary(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    registry = FileRegistry(tmp_path / "registry")
    await registry.publish_dictionary(APP, _dictionary(50, 7))
    async with gateway(tmp_path / "gw", **_config(tmp_path, upstream)) as gw:
        async with _client(gw, "m1", dictionaries=DictionaryStore([_dictionary(50, 7)])) as client:
            for body in _bodies(8, 5):
                await client.call("feed.home", body)
        await _until(lambda: _received_with(gw, 50) >= 5, "five bodies counted")
        view = gw.node.compression_view()
        app = view["apps"][APP]  # type: ignore[index]
        assert app["current_dictionary"] == 50
        table = compression_table(json.loads(json.dumps(view)))
        assert APP in table and "50*" in table
        async with _client(gw, "m2"):
            pass
        from aiohttp import ClientSession

        async with ClientSession() as http:
            response = await http.get(f"http://127.0.0.1:{gw.admin_port}/metrics")
            text = await response.text()
        assert (
            f'channel_compression_bodies_total{{app="{APP}",dictionary="50",direction="in"}}'
            in text
        )
        assert f'channel_dictionary_current{{app="{APP}"}} 50.0' in text


def test_random_samples_per_device_are_capped() -> None:
    from channel.compression.sampler import BodySampler

    sampler = BodySampler(
        frozenset({"a"}),
        fraction=1.0,
        max_bodies=50,
        max_body_bytes=100,
        per_device=2,
        rng=random.Random(1),
    )
    for i in range(30):
        sampler.offer("a", "same-device", b"x" * 20 + bytes([i]))
        sampler.offer("b", "other-app", b"y" * 20)
    assert sampler.count("a") == 2 and sampler.count("b") == 0
    for i in range(500):
        sampler.offer("a", f"d{i}", b"z" * 50)
    assert sampler.count("a") == 50
    sampler.offer("a", "big", b"q" * 101)
    assert len(sampler.take("a")) == 50 and sampler.count("a") == 0


async def test_a_delivered_dictionary_stays_with_the_client_that_got_it(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    """Clients of one process shared one codec: a dictionary one server delivered made
    every other client announce that id (to servers where it means other content)."""
    await FileRegistry(tmp_path / "registry").publish_dictionary(APP, _dictionary(60, 9))
    async with gateway(tmp_path / "gw", **_config(tmp_path, upstream)) as gw:
        async with _client(gw, "a") as first:
            await _until(lambda: first.stats.dictionaries_received == 1, "the DICT")
        other = _client(gw, "b")
        assert 60 not in other.dictionaries.ids and 60 in first.dictionaries.ids


async def test_answers_are_not_queued_behind_a_dictionary_delivery(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    """At 1 KiB/s a 4 KiB dictionary takes seconds: calls made meanwhile are answered
    while it is still on its way (a chunk at a time, only when nothing else waits)."""
    await FileRegistry(tmp_path / "registry").publish_dictionary(APP, _dictionary(70, 11))
    config = _config(tmp_path, upstream, dict_delivery_bytes_per_s=1024)
    async with (
        gateway(tmp_path / "gw", **config) as gw,
        _client(gw, "slow", dictionaries=DictionaryStore()) as client,
    ):
        for body in _bodies(12, 3):
            assert (await client.call("feed.home", body)).body == body
        assert client.stats.dictionaries_received == 0
        await _until(lambda: client.stats.dictionaries_received == 1, "the whole DICT")
        assert client.dictionaries.ids == (70,)


async def test_a_dictionary_over_the_connection_budget_is_not_started(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    dictionary = _dictionary(80, 13)
    await FileRegistry(tmp_path / "registry").publish_dictionary(APP, dictionary)
    budget = len(dictionary.content) - 1
    async with (
        gateway(tmp_path / "gw", **_config(tmp_path, upstream, dict_budget_bytes=budget)) as gw,
        _client(gw, "tight", dictionaries=DictionaryStore()) as client,
    ):
        body = _bodies(14, 1)[0]
        assert (await client.call("feed.home", body)).body == body
        await _until(lambda: gw.node.dictionary_delivery_counts()["skipped"] == 1, "a skip")
        counts = gw.node.dictionary_delivery_counts()
        assert counts["started"] == 0 and counts["bytes"] == 0
        assert client.stats.dictionaries_received == 0


async def _metric(gw: RunningGateway, name: str) -> float:
    from aiohttp import ClientSession

    async with ClientSession() as http:
        response = await http.get(f"http://127.0.0.1:{gw.admin_port}/metrics")
        text = await response.text()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not in /metrics"
    return values[0]


async def test_bodies_that_never_shrink_go_raw_untried_and_the_count_is_on_metrics(
    tmp_path: Path, upstream: dict[str, Any]
) -> None:
    """Random 100-byte answers never shrink under zstd: once 16 KiB of them were tried
    the gateway sends that size class raw without compressing (1 in 32 still tried),
    counts it on /metrics, and answers in other size classes are still compressed."""
    rng = random.Random(11)
    calls = 400
    async with (
        gateway(tmp_path / "gw", **_config(tmp_path, upstream)) as gw,
        _client(gw, "noise", dictionaries=DictionaryStore()) as client,
    ):
        assert await _metric(gw, "channel_body_compression_skipped_total") == 0
        for _ in range(calls):
            body = rng.randbytes(100)
            assert (await client.call("feed.home", body)).body == body
        skipped = await _metric(gw, "channel_body_compression_skipped_total")
        # 164 tries fill a warm-up, then one body in 32 is tried; the app's dictionary,
        # delivered meanwhile, has its own counts and warm-up.
        assert calls - 2 * 164 - calls // 32 <= skipped <= calls - 164
        wire0 = await _metric(gw, 'channel_body_bytes_total{stage="wire"}')
        raw0 = await _metric(gw, 'channel_body_bytes_total{stage="raw"}')
        text = b'{"text":"' + b"compressible " * 40 + b'"}'
        assert (await client.call("feed.home", text)).body == text
        wire = await _metric(gw, 'channel_body_bytes_total{stage="wire"}') - wire0
        raw = await _metric(gw, 'channel_body_bytes_total{stage="raw"}') - raw0
        assert raw == len(text) and wire < raw / 4
