"""The traceparent and template typed kinds (spec 9.8); how the preset builder learns them."""

from __future__ import annotations

import pytest

from channel.presetbuild import detect_typed_fields, learn_value_template
from channel.wire.errors import ProtocolError
from channel.wire.typed import TypedTable, ValueTemplate, typed_fields_problem
from channel.wire.varint import encode_varint

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _round_trip(kind: str, value: str) -> bytes:
    table = TypedTable((("x", kind),))
    rest, section = table.split([("x", value)], 0)
    assert rest == (), f"{value!r} should be typed as {kind}"
    assert table.decode(section, 0, None, 1 << 20) == [("x", value)]
    return section


def test_traceparent_is_26_bytes() -> None:
    assert len(_round_trip("traceparent", TRACEPARENT)) == 1 + 26


@pytest.mark.parametrize(
    "value",
    [
        TRACEPARENT.upper(),
        TRACEPARENT + "-extra",
        TRACEPARENT.replace("-", "_"),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    ],
)
def test_other_traceparent_shapes_go_through_hpack(value: str) -> None:
    table = TypedTable((("x", "traceparent"),))
    assert table.split([("x", value)], 0) == ((("x", value),), b"")


@pytest.mark.parametrize(
    ("template", "value", "numbers"),
    [
        ("app;dur={1}, db;dur={1}", "app;dur=102.4, db;dur=38.9", [1024, 389]),
        ("{5};{5};{0}", "51.86645;-4.41320;35", [5186645, -441320, 35]),
        ("v{0}", "v0", [0]),
        ("{2}%", "-0.05%", [-5]),
    ],
)
def test_value_template_sends_one_zigzag_varint_per_hole(
    template: str, value: str, numbers: list[int]
) -> None:
    zigzag = [n * 2 if n >= 0 else -n * 2 - 1 for n in numbers]
    expected = b"\x01" + b"".join(encode_varint(z) for z in zigzag)
    assert _round_trip("template:" + template, value) == expected


@pytest.mark.parametrize(
    "value",
    ["a=-0.0", "a=01.5", "a=1.50", "a=1", "a=1.5 ", "a=.5", "a=1.5x", "a=12345678901234567.0"],
)
def test_values_off_the_template_go_through_hpack(value: str) -> None:
    table = TypedTable((("x", "template:a={1}"),))
    assert table.split([("x", value)], 0) == ((("x", value),), b"")


@pytest.mark.parametrize(
    "template", ["", "no holes", "{0}{0}", "{0}7", "a{x}", "{0}}", "caf\u00e9{0}", "{0}" * 9]
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError):
        ValueTemplate.parse(template)
    assert typed_fields_problem((("x", "template:" + template),))
    assert typed_fields_problem((("x", "template"),))


def test_a_number_past_the_limit_is_a_field_error() -> None:
    table = TypedTable((("x", "template:{0}ms"),))
    with pytest.raises(ProtocolError):
        table.decode(encode_varint(2 * 10**16), 0, None, 1 << 20)
    with pytest.raises(ProtocolError):
        table.decode(b"\x80", 0, None, 1 << 20)  # the hole runs past the section


def test_text_holes_take_the_shortest_text_before_the_next_literal() -> None:
    section = _round_trip("template:k={s}; Path=/{s}", "k=a b; Path=/x; Path=/y")
    assert section[:5] == b"\x01\x03a b"  # key 1, then "a b" raw (Huffman is not shorter)
    table = TypedTable((("x", "template:k={s}; Path=/"),))
    # The hole would have to swallow the literal: not this template's value.
    assert table.split([("x", "k=v; Path=/; Path=/")], 0)[1] == b""
    assert table.split([("x", "k=; Path=/")], 0)[1] == b""


def test_malformed_text_holes_are_field_errors() -> None:
    table = TypedTable((("x", "template:k={s};"),))
    for section in (b"\x01\x05ab", b"\x01\x81\x00", b"\x01\x01\xff", b"\x01"):
        with pytest.raises(ProtocolError):
            table.decode(section, 0, None, 1 << 20)


def test_preset_build_learns_templates_and_traceparent() -> None:
    messages = []
    for i in range(200):
        trace = f"00-{i:032x}-{i * 7:016x}-01"
        timing = f"total;dur={i % 97}.{i % 10}, cache;dur={i % 13}.{i % 7}"
        messages.append({"kind": "request", "op": "a", "headers": [["tp", trace]]})
        messages.append({"kind": "response", "op": "a", "headers": [["timing", timing]]})
    typed = dict(detect_typed_fields(messages))
    assert typed["tp"] == "traceparent"
    assert typed["timing"] == "template:total;dur={1}, cache;dur={1}"


def test_templates_that_do_not_pay_are_not_learned() -> None:
    # One varying word: the text hole costs what the HPACK literal does.
    assert learn_value_template([f"{i * 7919:x}q" for i in range(100)]) is None
    # No common shape.
    assert learn_value_template([f"v{i}" + "x" * (i % 5) for i in range(100)]) is None
    assert learn_value_template([f"lat={i}.5;name=n" for i in range(100)]) == "lat={1};name=n"
