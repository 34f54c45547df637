"""``channel admin``: call a node's admin port (routes, reload, device look-up,
compression: per app dictionaries and what they save, reload, retrain).

The admin port's ``/admin/*`` needs an API key with the ``admin`` scope
(``channel apikey new --scopes admin``). The key comes from ``--key-file``, else
``$CHANNEL_ADMIN_KEY``, else the node's development key under
``<state-dir>/api/dev.key``. The answer's JSON goes to stdout; an error answer
prints its code and message on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TypeAlias

from channel.api.keys import DEV_KEY_FILE

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
KEY_ENV = "CHANNEL_ADMIN_KEY"
TIMEOUT_S = 30.0

_SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _admin_key(args: argparse.Namespace) -> str | None:
    path: Path | None = args.key_file
    if path is None and os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip()
    if path is None:
        path = Path(args.state_dir) / DEV_KEY_FILE
        if not path.exists():
            return None
    return path.read_text(encoding="ascii").strip()


def _call(args: argparse.Namespace, method: str, path: str) -> int:
    status, answer = _fetch(args, method, path)
    if status < 0:
        return -status
    error = answer.get("error") if isinstance(answer, dict) else None
    if status >= 400 and isinstance(error, dict):
        print(f"channel: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(answer, indent=2))
    return EXIT_OK if status < 400 else EXIT_FAILED


def _fetch(args: argparse.Namespace, method: str, path: str) -> tuple[int, Any]:
    """(HTTP status, decoded answer); status -EXIT_* when no answer came."""
    try:
        key = _admin_key(args)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"channel: error: cannot read the admin key: {exc}", file=sys.stderr)
        return -EXIT_USAGE, None
    request = urllib.request.Request(args.url.rstrip("/") + path, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body = response.read()
        status = 200
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"channel: error: {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return -EXIT_FAILED, None
    try:
        answer = json.loads(body)
    except ValueError:
        text = body[:200].decode(errors="replace")
        answer = {"error": {"code": f"HTTP_{status}", "message": text}}
    return status, answer


def _routes(args: argparse.Namespace) -> int:
    return _call(args, "GET", "/admin/routes")


def _reload(args: argparse.Namespace) -> int:
    return _call(args, "POST", "/admin/reload")


def _device(args: argparse.Namespace) -> int:
    return _call(args, "GET", "/admin/devices/" + urllib.parse.quote(args.device_id, safe=""))


def _compression(args: argparse.Namespace) -> int:
    if args.json:
        return _call(args, "GET", "/admin/compression")
    status, answer = _fetch(args, "GET", "/admin/compression")
    if status < 0:
        return -status
    if status >= 400:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        print(f"channel: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return EXIT_FAILED
    print(compression_table(answer))
    return EXIT_OK


def compression_table(view: dict[str, Any]) -> str:
    """Per app and dictionary: share of the app's bodies, bytes before and after, saved."""
    rows = [["app", "dictionary", "bodies", "share", "raw bytes", "wire bytes", "saved"]]
    for app, info in view.get("apps", {}).items():
        name = app or "(other apps)"
        current = info.get("current_dictionary")
        for row in info.get("usage", []):
            dictionary = row["dictionary"]
            label = f"{dictionary}*" if dictionary == current else str(dictionary)
            raw, wire = row["raw_bytes"], row["wire_bytes"]
            rows.append(
                [
                    name,
                    label,
                    f"{row['bodies']:,}",
                    f"{row['share']:.1%}",
                    f"{raw:,}",
                    f"{wire:,}",
                    f"{row['saved_bytes']:,} ({1 - wire / raw:.0%})" if raw else "0",
                ]
            )
        if not info.get("usage"):
            rows.append([name, f"{current}*", "0", "-", "0", "0", "0"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    delivered = view.get("deliveries", {})
    lines.append("")
    lines.append("* the app's current dictionary; raw: bodies sent uncompressed")
    lines.append(
        "deliveries: "
        + ", ".join(f"{k} {v:,}" for k, v in delivered.items())
        + f"; registry {view.get('registry')} version {view.get('version')}"
    )
    return "\n".join(lines)


def _compression_reload(args: argparse.Namespace) -> int:
    return _call(args, "POST", "/admin/compression/reload")


def _retrain(args: argparse.Namespace) -> int:
    app = urllib.parse.quote(args.app, safe="")
    return _call(args, "POST", "/admin/compression/retrain/" + app)


def add_admin_commands(subparsers: _SubParsers) -> None:
    """Register ``channel admin`` and its subcommands (routes, reload, device)."""
    group = subparsers.add_parser(
        "admin",
        help="call a node's admin port: routes, reload, device look-up",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=(
            "examples:\n"
            "  channel admin routes                       # dev node, dev key\n"
            "  channel admin --url http://10.0.0.7:9100 --key-file ops-admin.key reload\n"
            "  CHANNEL_ADMIN_KEY=ck_ops_... channel admin device d-42"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.add_argument(
        "--url",
        default="http://127.0.0.1:9100",
        help="the node's admin address (default: %(default)s)",
    )
    group.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding an API key with the admin scope (default: ${KEY_ENV}, "
        "else STATE_DIR/api/dev.key)",
    )
    group.add_argument(
        "--state-dir", default=".channel", help="the node's state dir (default: %(default)s)"
    )
    commands = group.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    commands.add_parser("routes", help="RPC routes, clusters and breaker states").set_defaults(
        handler=_routes
    )
    commands.add_parser(
        "reload",
        help="re-read [rpc] and [tls] from the node's config file (as SIGHUP does)",
    ).set_defaults(handler=_reload)
    device = commands.add_parser("device", help="is a device connected to this node")
    device.add_argument("device_id", metavar="DEVICE_ID")
    device.set_defaults(handler=_device)
    compression = commands.add_parser(
        "compression",
        help="per app and dictionary: share of bodies, bytes saved, deliveries",
    )
    compression.add_argument("--json", action="store_true", help="the raw JSON answer")
    compression.set_defaults(handler=_compression)
    commands.add_parser(
        "compression-reload", help="read the compression registry now (new dictionaries)"
    ).set_defaults(handler=_compression_reload)
    retrain = commands.add_parser(
        "retrain", help="retrain a sampled app's dictionary now (published if it pays)"
    )
    retrain.add_argument("app", metavar="APP_ID")
    retrain.set_defaults(handler=_retrain)
