"""Metric names a PromQL expression reads, and the names a ``/metrics`` text exports.

Enough PromQL for our dashboards and alert rules: label matchers, ranges,
``by (...)``/``without (...)`` groupings, strings and numbers are removed, and
what is left that is not a function call or a keyword is a metric name.
"""

from __future__ import annotations

import re

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in _NAME.finditer(text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        if text[max(0, match.start() - 1) : match.start()].isdigit():
            continue  # "14e3", "5m" leftovers
        names.add(name)
    return names


def exported_names(metrics_text: str) -> set[str]:
    """Every series name ``/metrics`` can carry, from its ``# TYPE`` lines (so families
    with no sample yet count too); histograms and summaries with their suffixes."""
    names = set()
    for line in metrics_text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        names.add(name)
        if kind in ("histogram", "summary"):
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names
