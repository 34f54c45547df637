"""One PNG per scenario (matplotlib, no display): bars per target, latency curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stress.compare.report import _dig


def _bars(path: Path, title: str, ylabel: str, series: dict[str, dict[str, float | None]]) -> None:
    """``series``: {group (a figure): {target: value}} as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(series)
    targets = sorted({t for g in series.values() for t in g})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(targets))
    for i, target in enumerate(targets):
        present = [j for j, g in enumerate(groups) if series[g].get(target) is not None]
        xs = [j + i * width for j in present]
        ys = [float(series[groups[j]][target] or 0.0) for j in present]
        rects = ax.bar(xs, ys, width, label=target)
        ax.bar_label(rects, fmt="{:,.0f}", fontsize=7)
    ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cdf(path: Path, title: str, curves: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in curves.items():
        if not values:
            continue
        ordered = sorted(values)
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.plot(ordered, ys, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of calls / pushes (quantiles)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(outdir: Path, results: dict[str, dict[str, Any]]) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = []

    def per_target(*path: str) -> dict[str, float | None]:
        return {
            name: _dig(doc, *path) for name, doc in results.items() if _dig(doc, *path) is not None
        }

    plans = [
        (
            "idle",
            "Idle memory per TLS connection",
            "server bytes per connection",
            {"idle": per_target("idle", "bytes_per_connection")},
        ),
        (
            "fanout",
            "One broadcast at a time to every device, acked",
            "deliveries per server CPU-s",
            {"broadcast": per_target("push", "fanout", "deliveries_per_server_cpu_s")},
        ),
        (
            "unicast",
            "Acked unicast (closed loop)",
            "deliveries per server CPU-s",
            {
                "memory / broker": per_target(
                    "push", "unicast", "max", "deliveries_per_server_cpu_s"
                ),
                "Redis backend": per_target("redis", "max", "deliveries_per_server_cpu_s"),
            },
        ),
        (
            "handshakes",
            "Handshakes",
            "per server CPU-s",
            {
                "full": per_target("handshakes", "full", "per_server_cpu_s"),
                "resumed": per_target("handshakes", "resumed", "per_server_cpu_s"),
            },
        ),
    ]
    for name, title, ylabel, series in plans:
        if any(series[g] for g in series):
            path = outdir / f"{name}.png"
            _bars(path, title, ylabel, series)
            written.append(path)
    curves = {
        name: _dig(doc, "push", "unicast", "half", "latency_cdf_ms")
        for name, doc in results.items()
    }
    curves |= {
        f"{name} (Redis)": _dig(doc, "redis", "half", "latency_cdf_ms")
        for name, doc in results.items()
    }
    present = {name: values for name, values in curves.items() if values}
    if present:
        path = outdir / "unicast_latency.png"
        _cdf(path, "Acked unicast at half of the closed-loop rate: sent -> ACK", present)
        written.append(path)
    rpc = next((doc["rpc"] for doc in results.values() if "rpc" in doc), None)
    if rpc:
        path = outdir / "rpc.png"
        _cdf(path, "RPC, one call in flight: direct HTTP vs through the gateway", rpc["samples_ms"])
        written.append(path)
    return written
