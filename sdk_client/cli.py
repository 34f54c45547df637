"""``channel device``: act as a device from the command line (SDK client inside).

Useful to try a gateway by hand, to check a route or a push end to end, and
in scripts: the response body goes to stdout (nothing else does), status and
timings go to stderr, and failures exit with 1 and print the error code.

Registered in the ``channel`` CLI by ``add_device_commands``; runs on uvloop
when it is installed, without changing the process-wide event loop policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeAlias

from channel.security.tokens import TokenError, decode_token_text
from sdk_client.client import Client, Push
from sdk_client.errors import ChannelError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """Bad input the user can fix (exit 2)."""


# ------------------------------------------------------------------ parsing


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().lower(), value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {text!r}")
    return value


_DESCRIPTION = """\
Connect to a gateway as one device (TLS 1.3, MMTP) and call, listen or ping.

The device authenticates with a token (base64url text, as printed by
`channel token issue`). With --resume-state FILE the resume ticket is kept in
FILE (mode 0600), so the next run resumes the session instead of presenting
the token: compare `ping` twice to see the smaller handshake.

Output: `call` writes the response body to stdout and a status line to
stderr; `listen` writes one JSON line per push; `ping` prints the round trip.
Exit codes: 0 success, 1 the gateway or the call failed (the error code is
printed, e.g. NOT_FOUND), 2 bad options or unreadable files."""

_EPILOG = """\
examples:
  channel token issue --key .channel/keys/token-1.key --device d1 --user u1 \\
      --app demo > d1.token
  channel device --port 8443 --ca .channel/tls/ca.pem --device d1 --app demo \\
      --token-file d1.token call account.balance.get '{"currency":"CNY"}' \\
      --header locale=zh-CN
  channel device --port 8443 --ca .channel/tls/ca.pem --device d1 --app demo \\
      --token-file d1.token listen --count 10 --seconds 60
  channel device --port 8443 --ca .channel/tls/ca.pem --device d1 --app demo \\
      --token-file d1.token --resume-state d1.state ping"""


def add_device_commands(subparsers: _SubParsers) -> None:
    """Register ``channel device`` and its subcommands (call, listen, ping)."""
    group = subparsers.add_parser(
        "device",
        help="act as a device: call an operation, listen for pushes, ping",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conn = group.add_argument_group("connection")
    conn.add_argument("--host", default="127.0.0.1", help="gateway host (default: %(default)s)")
    conn.add_argument("--port", type=int, required=True, help="gateway device port")
    conn.add_argument(
        "--ca",
        type=Path,
        metavar="CA.pem",
        help="CA that signed the gateway certificate (dev: STATE_DIR/tls/ca.pem); "
        "default: the system store",
    )
    conn.add_argument(
        "--server-name",
        default="localhost",
        metavar="NAME",
        help="host name the certificate must carry (default: %(default)s)",
    )
    ident = group.add_argument_group("identity")
    ident.add_argument("--device", required=True, metavar="ID", help="device id (as in the token)")
    ident.add_argument("--app", default="demo", metavar="ID", help="app id (default: %(default)s)")
    ident.add_argument("--app-version", default="", metavar="X.Y.Z", help="app version")
    ident.add_argument("--platform", default="", help="platform, e.g. android or ios")
    token = ident.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", metavar="TEXT", help="device token, base64url")
    token.add_argument(
        "--token-file", type=Path, metavar="FILE", help="file holding the token text"
    )
    ident.add_argument(
        "--resume-state",
        type=Path,
        metavar="FILE",
        help="keep the session's resume ticket here between runs (created mode 0600)",
    )
    commands = group.add_subparsers(dest="device_command", metavar="COMMAND", required=True)

    call = commands.add_parser(
        "call",
        help="call OP and print the response body",
        description="Call OP with BODY (text; '-' reads stdin) and print the response body.",
        epilog="example:\n  channel device ... call account.balance.get '{\"x\":1}' "
        "--header locale=zh-CN --timeout 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("op", metavar="OP", help="operation type, e.g. account.balance.get")
    call.add_argument("body", metavar="BODY", nargs="?", default="", help="request body")
    call.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="request header; repeat for several",
    )
    call.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="give up after this long, connecting included (default: %(default)s)",
    )
    call.add_argument(
        "--idempotent",
        action="store_true",
        help="allow the call to be sent again if the connection drops before the answer",
    )
    call.set_defaults(handler=_run_device, device_handler=_call)

    listen = commands.add_parser(
        "listen",
        help="print pushes as JSON lines",
        description=(
            "Stay connected and print each push as one JSON line:\n"
            '  {"message_id": "<hex>", "headers": {...}, "body": "<text>"}\n'
            "Pushes are acknowledged once printed; duplicates are printed once.\n"
            "Without --count or --seconds it runs until interrupted."
        ),
        epilog="example:\n  channel device ... listen --count 1 --seconds 30",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument("--count", type=_positive_int, metavar="N", help="exit after N pushes")
    listen.add_argument("--seconds", type=_positive_float, metavar="S", help="exit after S seconds")
    listen.set_defaults(handler=_run_device, device_handler=_listen)

    ping = commands.add_parser(
        "ping",
        help="connect, PING, and print the round trip and handshake sizes",
        description=(
            "Connect, send PING, print the round-trip time, whether the session and the\n"
            "TLS session were resumed, and the HELLO / HELLO_ACK sizes in bytes."
        ),
        epilog="example:\n  channel device ... --resume-state d1.state ping --count 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ping.add_argument(
        "--count", type=_positive_int, default=1, metavar="N", help="pings to send (default: 1)"
    )
    ping.set_defaults(handler=_run_device, device_handler=_ping)


# ---------------------------------------------------------------- running


def _read_token(args: argparse.Namespace) -> bytes:
    text: str
    if args.token_file is not None:
        try:
            text = Path(args.token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {args.token_file}: {exc.strerror or exc}") from exc
    else:
        text = args.token
    try:
        return decode_token_text(text)
    except TokenError as exc:
        raise UsageError(f"bad token: {exc.message}") from None


def _make_client(args: argparse.Namespace) -> Client:
    if args.ca is not None and not Path(args.ca).is_file():
        raise UsageError(f"CA file {args.ca} does not exist")
    return Client(
        args.host,
        args.port,
        device_id=args.device,
        token=_read_token(args),
        ca_file=args.ca,
        app_id=args.app,
        app_version=args.app_version,
        platform=args.platform,
        server_hostname=args.server_name,
        state_file=args.resume_state,
    )


def _run_device(args: argparse.Namespace) -> int:
    """``channel device`` handler: runs the chosen subcommand on an event loop."""
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.device_handler
    try:
        with _runner() as runner:
            return runner.run(command(args))
    except UsageError as exc:
        print(f"channel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ChannelError as exc:
        print(f"channel: {exc.code_name}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def _call(args: argparse.Namespace) -> int:
    body_text: str = args.body
    body = sys.stdin.buffer.read() if body_text == "-" else body_text.encode()
    client = _make_client(args)
    started = time.perf_counter()
    try:
        call = asyncio.create_task(
            client.call(
                args.op,
                body,
                headers=args.header,
                timeout=args.timeout,
                idempotent=args.idempotent,
            )
        )
        try:
            async with asyncio.timeout(args.timeout):
                await client.connect()
        except BaseException:
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            raise
        response = await call
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    sys.stdout.buffer.write(response.body)
    sys.stdout.flush()
    resumed = "resumed" if client.resumed else "new"
    handshake = _ms(client.stats.handshake_s)
    print(
        f"status {response.status} (OK) in {_ms(elapsed)}; handshake {handshake}, "
        f"session {resumed}, {len(response.body)} bytes",
        file=sys.stderr,
    )
    return EXIT_OK


async def _listen(args: argparse.Namespace) -> int:
    client = _make_client(args)
    done = asyncio.Event()
    received = 0

    @client.on_push
    def show(push: Push) -> None:
        nonlocal received
        line = {
            "message_id": push.message_id.hex(),
            "headers": dict(push.headers),
            "body": push.body.decode("utf-8", "replace"),
        }
        print(json.dumps(line, ensure_ascii=False), flush=True)
        received += 1
        if args.count is not None and received >= args.count:
            done.set()

    @client.on_disconnect
    def lost(error: ChannelError) -> None:
        print(f"disconnected: {error.code_name}: {error.message}", file=sys.stderr)

    await client.connect()
    print(f"listening as {args.device} (session {client.session_id.hex()})", file=sys.stderr)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.seconds)
    finally:
        await client.close()
    print(f"{received} push(es)", file=sys.stderr)
    return EXIT_OK


async def _ping(args: argparse.Namespace) -> int:
    client = _make_client(args)
    await client.connect()
    try:
        stats = client.stats
        print(
            f"connected in {_ms(stats.handshake_s)}: session "
            f"{'resumed' if client.resumed else 'new'}, TLS "
            f"{'resumed' if stats.tls_resumed else 'full handshake'}, "
            f"HELLO {stats.hello_bytes} B, HELLO_ACK {stats.hello_ack_bytes} B, "
            f"heartbeat {client.heartbeat_s} s"
        )
        for _ in range(args.count):
            rtt = await client.ping()
            print(f"pong in {_ms(rtt)}")
    finally:
        await client.close()
    return EXIT_OK
