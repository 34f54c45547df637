"""The side-by-side table, the ratios to Mosquitto and the bars of issues 11 and 12."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stress.report import fmt, table

Get = Callable[[dict[str, Any]], float | None]


def _dig(doc: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


#: (scenario, figure, how to read it from a target's results, format, higher is better)
FIGURES: list[tuple[str, str, Get, str, bool]] = [
    (
        "idle",
        "server bytes per idle TLS connection",
        lambda d: _dig(d, "idle", "bytes_per_connection"),
        ",.0f",
        False,
    ),
    (
        "fanout",
        "one broadcast at a time, acked: deliveries per server CPU-s",
        lambda d: _dig(d, "push", "fanout", "deliveries_per_server_cpu_s"),
        ",.0f",
        True,
    ),
    (
        "fanout",
        "... client CPU-s / server CPU-s",
        lambda d: _share(
            _dig(d, "push", "fanout", "client_cpu_s"), _dig(d, "push", "fanout", "server_cpu_s")
        ),
        ".2f",
        False,
    ),
    (
        "unicast",
        "acked unicast, closed loop: deliveries per server CPU-s",
        lambda d: _dig(d, "push", "unicast", "max", "deliveries_per_server_cpu_s"),
        ",.0f",
        True,
    ),
    (
        "unicast",
        "... acked per s (wall)",
        lambda d: _dig(d, "push", "unicast", "max", "acked_per_s"),
        ",.0f",
        True,
    ),
    (
        "unicast",
        "... p99 ms at half of that rate",
        lambda d: _dig(d, "push", "unicast", "half", "latency_ms", "p99"),
        ".1f",
        False,
    ),
    (
        "unicast",
        "... p50 ms at half of that rate",
        lambda d: _dig(d, "push", "unicast", "half", "latency_ms", "p50"),
        ".1f",
        False,
    ),
    (
        "unicast",
        "... lost / duplicates (both modes)",
        lambda d: _sum_loss(_dig(d, "push", "unicast")),
        "d",
        False,
    ),
    (
        "unicast",
        "... client CPU-s per 1,000 (devices + sender)",
        lambda d: _clients_per_1000(_dig(d, "push", "unicast", "max")),
        ".3f",
        False,
    ),
    (
        "unicast",
        "... client cores busy (closed loop; < 1: not saturated)",
        lambda d: _dig(d, "push", "unicast", "max", "client_cores_busy"),
        ".2f",
        False,
    ),
    (
        "unicast",
        "... server waited for its CPU, s per s (other work on the VM)",
        lambda d: _dig(d, "push", "unicast", "max", "server_runqueue_wait_per_s"),
        ".2f",
        False,
    ),
    (
        "unicast",
        "... server CPU-s per 1,000",
        lambda d: _dig(d, "push", "unicast", "max", "cpu_s_per_1000", "server"),
        ".3f",
        False,
    ),
    (
        "unicast",
        "Redis backend: deliveries per gateway CPU-s",
        lambda d: _dig(d, "redis", "max", "deliveries_per_server_cpu_s"),
        ",.0f",
        True,
    ),
    (
        "unicast",
        "... gateway CPU-s per 1,000 acked pushes",
        lambda d: _dig(d, "redis", "max", "cpu_s_per_1000", "server"),
        ".3f",
        False,
    ),
    (
        "unicast",
        "... Redis CPU µs per push",
        lambda d: _times(_dig(d, "redis", "max", "cpu_s_per_1000", "redis"), 1000),
        ".1f",
        False,
    ),
    (
        "unicast",
        "... p99 ms at half rate",
        lambda d: _dig(d, "redis", "half", "latency_ms", "p99"),
        ".1f",
        False,
    ),
    (
        "handshakes",
        "full handshakes per server CPU-s",
        lambda d: _dig(d, "handshakes", "full", "per_server_cpu_s"),
        ",.0f",
        True,
    ),
    (
        "handshakes",
        "resumed handshakes per server CPU-s",
        lambda d: _dig(d, "handshakes", "resumed", "per_server_cpu_s"),
        ",.0f",
        True,
    ),
    (
        "handshakes",
        "... of them TLS-resumed (%)",
        lambda d: _pct(
            _dig(d, "handshakes", "resumed", "resumed"),
            _dig(d, "handshakes", "resumed", "handshakes"),
        ),
        ".0f",
        True,
    ),
    (
        "handshakes",
        "... client CPU-s / server CPU-s (full)",
        lambda d: _share(
            _dig(d, "handshakes", "full", "client_cpu_s"),
            _dig(d, "handshakes", "full", "server_cpu_s"),
        ),
        ".2f",
        False,
    ),
    (
        "rpc",
        "RPC added latency p50 ms (gateway - direct)",
        lambda d: _dig(d, "rpc", "overhead_p50_ms"),
        "+.3f",
        False,
    ),
    ("rpc", "RPC added latency p99 ms", lambda d: _dig(d, "rpc", "overhead_p99_ms"), "+.3f", False),
    (
        "rpc",
        "RPC gateway CPU µs per call (one in flight)",
        lambda d: _dig(d, "rpc", "gateway_cpu_us_per_call"),
        ",.0f",
        False,
    ),
]


def _share(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _times(a: float | None, k: float) -> float | None:
    return a * k if a is not None else None


def _pct(a: float | None, b: float | None) -> float | None:
    return 100 * a / b if a is not None and b else None


def _sum_loss(uni: dict[str, Any] | None) -> int | None:
    if not uni:
        return None
    return sum(int(uni[m]["lost"]) + int(uni[m]["duplicates"]) for m in ("max", "half") if m in uni)


def _clients_per_1000(phase: dict[str, Any] | None) -> float | None:
    per = _dig(phase or {}, "cpu_s_per_1000")
    if not per:
        return None
    return float(per.get("clients", 0.0) + per.get("generator", 0.0))


def mean_doc(a: Any, b: Any) -> Any:
    """Two runs' results as one: numbers averaged, dicts key by key (keys of the first),
    anything else (lists of samples, text) the first run's."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        return (a + b) / 2
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: mean_doc(v, b[k]) if k in b else v for k, v in a.items()}
    return a


def drift(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, float]]:
    """Each figure of the baseline's second run over its first (1.00: the machine held
    its speed between them)."""
    out = []
    for _, figure, get, _, _ in FIGURES:
        a, b = get(before), get(after)
        if a is not None and b is not None and a:
            out.append((figure, b / a))
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Every Channel target's figures divided by Mosquitto's, where both exist."""
    base = results.get("mosquitto")
    out: dict[str, dict[str, float | None]] = {}
    if not base:
        return out
    for name, doc in results.items():
        if name == "mosquitto":
            continue
        row: dict[str, float | None] = {}
        for _, figure, get, _, _ in FIGURES:
            a, b = get(doc), get(base)
            row[figure] = a / b if a is not None and b else None
        out[name] = row
    return out


def bars(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issues' bars as this run measured them (met: True/False, None: not measured)."""
    base = results.get("mosquitto", {})
    out = []
    for name, doc in results.items():
        if name == "mosquitto":
            continue
        mqtt = name.endswith("-mqtt")

        def check(
            bar: str, value: float | None, ok: Callable[[float], bool], name: str = name
        ) -> None:
            out.append(
                {
                    "target": name,
                    "bar": bar,
                    "value": value,
                    "met": None if value is None else ok(value),
                }
            )

        idle = _dig(doc, "idle", "bytes_per_connection")
        idle_m = _dig(base, "idle", "bytes_per_connection")
        uni = _dig(doc, "push", "unicast", "max", "deliveries_per_server_cpu_s")
        uni_m = _dig(base, "push", "unicast", "max", "deliveries_per_server_cpu_s")
        if mqtt:
            check(
                "idle bytes per MQTT connection <= Mosquitto's",
                _share(idle, idle_m),
                lambda r: r <= 1.0,
            )
            check(
                "QoS 1 point-to-point per server CPU-s >= 1x Mosquitto",
                _share(uni, uni_m),
                lambda r: r >= 1.0,
            )
            continue
        fan = _dig(doc, "push", "fanout", "deliveries_per_server_cpu_s")
        fan_m = _dig(base, "push", "fanout", "deliveries_per_server_cpu_s")
        check("idle <= 8 KiB per device", idle, lambda v: v <= 8192)
        check("idle <= 0.5x Mosquitto", _share(idle, idle_m), lambda r: r <= 0.5)
        check("one broadcast at a time >= 2x Mosquitto", _share(fan, fan_m), lambda r: r >= 2)
        check("acked unicast (memory) >= 1x Mosquitto", _share(uni, uni_m), lambda r: r >= 1)
        check(
            "unicast p99 at half rate <= 50 ms",
            _dig(doc, "push", "unicast", "half", "latency_ms", "p99"),
            lambda v: v <= 50,
        )
        check(
            "Redis: gateway CPU-s per 1,000 <= 0.030",
            _dig(doc, "redis", "max", "cpu_s_per_1000", "server"),
            lambda v: v <= 0.030,
        )
        check(
            "full handshakes per CPU-s >= 2x 1,652",
            _dig(doc, "handshakes", "full", "per_server_cpu_s"),
            lambda v: v >= 3304,
        )
        check(
            "resumed handshakes per CPU-s >= 2x 2,375",
            _dig(doc, "handshakes", "resumed", "per_server_cpu_s"),
            lambda v: v >= 4750,
        )
        check("RPC added p50 <= +0.2 ms", _dig(doc, "rpc", "overhead_p50_ms"), lambda v: v <= 0.2)
    return out


def render(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    others = [n for n in names if n != "mosquitto"]
    header = ["figure", *names] + (
        [f"{n} / mosquitto" for n in others] if "mosquitto" in names else []
    )
    rows = [header]
    ratio = ratios(results)
    for _, figure, get, spec, _ in FIGURES:
        values = [get(results[n]) for n in names]
        if all(v is None for v in values):
            continue
        cells = [figure] + [fmt(v, spec) if not isinstance(v, int) else f"{v:d}" for v in values]
        if "mosquitto" in names:
            cells += [fmt(ratio[n].get(figure), ".2f") for n in others]
        rows.append(cells)
    lines = [table(rows), "", "bars (this run):"]
    for bar in bars(results):
        verdict = {True: "met", False: "NOT met", None: "not measured"}[bar["met"]]
        value = "-" if bar["value"] is None else f"{bar['value']:,.3g}"
        lines.append(f"  {bar['target']}: {bar['bar']}: {value} -> {verdict}")
    return "\n".join(lines)
