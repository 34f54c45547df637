"""Operations the gateway answers itself, without an upstream.

``channel.echo`` returns the request body (a device can measure its round trip
and check its channel end to end on a fresh install, before any backend is
configured); ``channel.time`` returns the gateway's clock in ms (clock-skew
checks). Everything else goes to the RPC router.
"""

from __future__ import annotations

import json
import time

from channel.rpc.model import RpcRequest, RpcResponse

ECHO_OP = "channel.echo"
TIME_OP = "channel.time"


def builtin_response(request: RpcRequest) -> RpcResponse | None:
    if request.op == ECHO_OP:
        return RpcResponse(0, (("content-type", "application/octet-stream"),), request.body)
    if request.op == TIME_OP:
        body = json.dumps({"server_time_ms": int(time.time() * 1000)}).encode()
        return RpcResponse(0, (("content-type", "application/json"),), body)
    return None
