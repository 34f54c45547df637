"""Channel client SDK (asyncio): one long-lived MMTP connection per device.

::

    from sdk_client import Client, NotFound

    token = Path("d1.token").read_text()  # as `channel token issue` printed it
    async with Client("gw.example.com", 8443, device_id="d1", token=token,
                      ca_file=Path("ca.pem"), app_id="wallet") as client:

        @client.on_push
        async def show(push):
            print(push.message_id.hex(), push.body)

        resp = await client.call("account.balance.get", b'{"currency":"CNY"}')

Reconnects, heartbeats, session resumption, pipelining behind the handshake
and duplicate pushes are handled by the client; see ``sdk_client.client``.
"""

from sdk_client.backoff import Backoff
from sdk_client.client import Client, ClientStats, Push, Request, Response
from sdk_client.dedupe import DedupeWindow
from sdk_client.errors import (
    ERROR_CLASSES,
    AuthError,
    BadRequest,
    Cancelled,
    ChannelError,
    Forbidden,
    InternalError,
    NotFound,
    ProtocolViolation,
    RateLimited,
    SessionEnded,
    Timeout,
    Unavailable,
    UpstreamError,
    error_for,
)

__all__ = [
    "ERROR_CLASSES",
    "AuthError",
    "Backoff",
    "BadRequest",
    "Cancelled",
    "ChannelError",
    "Client",
    "ClientStats",
    "DedupeWindow",
    "Forbidden",
    "InternalError",
    "NotFound",
    "ProtocolViolation",
    "Push",
    "RateLimited",
    "Request",
    "Response",
    "SessionEnded",
    "Timeout",
    "Unavailable",
    "UpstreamError",
    "error_for",
]
