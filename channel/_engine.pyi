"""Typed stubs of the native engine (``native/engine``, built by maturin).

The contract is ``native/engine/BOUNDARY.md``: events up and commands down are
tuples whose first item is their kind. Connection ids are ints (slot | generation
<< 32) and never name a later connection.
"""

from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeAlias

Headers: TypeAlias = tuple[tuple[str, str], ...]
HeaderInput: TypeAlias = Sequence[tuple[str, str]]

HelloEvent: TypeAlias = tuple[Literal["HELLO"], int, str, dict[str, Any], str | None, bool]
RequestEvent: TypeAlias = tuple[
    Literal["REQUEST"], int, int, str, Headers, bytes, bool, int | None, int
]
RpcHandoffEvent: TypeAlias = tuple[
    Literal["RPC_HANDOFF"],
    int,
    int,
    str,
    Headers,
    bytes,
    bool,
    str,
    str,
    int,
    int,
    bytes,
    bytes,
    bool,
    int,
]
RpcDoneEvent: TypeAlias = tuple[
    Literal["RPC_DONE"], list[tuple[int, str, str, int, bool, bytes | None, bytes | None]]
]
AnswerEvent: TypeAlias = tuple[Literal["ANSWER"], int, int, int, Headers, bytes, int, str]
AcksEvent: TypeAlias = tuple[Literal["ACKS"], int, list[bytes]]
FanoutAcksEvent: TypeAlias = tuple[Literal["FANOUT_ACKS"], dict[bytes, int]]
CancelEvent: TypeAlias = tuple[Literal["CANCEL"], int, int]
GoAwayEvent: TypeAlias = tuple[Literal["GOAWAY"], int]
ClosedEvent: TypeAlias = tuple[Literal["CLOSED"], int, int]
MqttOpenEvent: TypeAlias = tuple[Literal["MQTT_OPEN"], int, str, str | None, bool]
MqttPacketsEvent: TypeAlias = tuple[Literal["MQTT_PACKETS"], int, list[bytes]]
MqttPubacksEvent: TypeAlias = tuple[Literal["MQTT_PUBACKS"], list[int], list[list[int]]]
MqttAcksEvent: TypeAlias = tuple[Literal["MQTT_ACKS"], list[int], list[str]]
MqttRefusedEvent: TypeAlias = tuple[Literal["MQTT_REFUSED"], int, bytes, bool, int]
PushFailedEvent: TypeAlias = tuple[Literal["PUSH_FAILED"], int, bytes, str]
FanoutDoneEvent: TypeAlias = tuple[Literal["FANOUT_DONE"], bytes, int, int]
TlsTicketEvent: TypeAlias = tuple[Literal["TLS_TICKET"], bytes, bytes]
TlsResumeEvent: TypeAlias = tuple[Literal["TLS_RESUME"], int, bytes]

EngineEvent: TypeAlias = (
    HelloEvent
    | RequestEvent
    | RpcHandoffEvent
    | RpcDoneEvent
    | AnswerEvent
    | AcksEvent
    | FanoutAcksEvent
    | CancelEvent
    | GoAwayEvent
    | ClosedEvent
    | MqttOpenEvent
    | MqttPacketsEvent
    | MqttPubacksEvent
    | MqttAcksEvent
    | MqttRefusedEvent
    | PushFailedEvent
    | FanoutDoneEvent
    | TlsTicketEvent
    | TlsResumeEvent
)

AcceptCommand: TypeAlias = (
    tuple[Literal["ACCEPT"], int, bytes, bytes, int, int, bool]
    | tuple[Literal["ACCEPT"], int, bytes, bytes, int, int, bool, int | None]
)
RejectCommand: TypeAlias = tuple[Literal["REJECT"], int, int, str, int]
RespondCommand: TypeAlias = tuple[Literal["RESPOND"], int, int, int, HeaderInput, bytes]
StreamErrorCommand: TypeAlias = tuple[Literal["STREAM_ERROR"], int, int, int, str, int]
CallCommand: TypeAlias = tuple[Literal["CALL"], int, int, str, HeaderInput, bytes]
CancelCallCommand: TypeAlias = tuple[Literal["CANCEL_CALL"], int, int]
PushCommand: TypeAlias = tuple[Literal["PUSH"], int, bytes, HeaderInput, bytes, bool]
FanoutCommand: TypeAlias = tuple[Literal["FANOUT"], bytes, HeaderInput, bytes, Sequence[int] | None]
GoAwayCommand: TypeAlias = tuple[Literal["GOAWAY"], int | None, int, int, str]
EndCommand: TypeAlias = tuple[Literal["END"], int, int, str]
CloseCommand: TypeAlias = tuple[Literal["CLOSE", "MQTT_CLOSE", "ABORT"], int]
SetIdleCommand: TypeAlias = tuple[Literal["SET_IDLE"], int, int]
MqttWriteCommand: TypeAlias = tuple[Literal["MQTT_WRITE"], int, bytes]
#: conn, push topic (length-prefixed UTF-8), MQTT 5, in-flight limit, max waiting,
#: the box's maximum packet size (0: none), DUP before this unix ms (0: none)
MqttPushesCommand: TypeAlias = tuple[Literal["MQTT_PUSHES"], int, bytes, bool, int, int, int, int]
MqttPushCommand: TypeAlias = tuple[Literal["MQTT_PUSH"], int, bytes, HeaderInput, bytes, bool]
MqttHeldCommand: TypeAlias = tuple[Literal["MQTT_HELD"], int, bytes]
AddDictionaryCommand: TypeAlias = tuple[Literal["ADD_DICTIONARY"], bytes]
#: (id, name, [(header, value)], [(header, kind)], [connection names], [never-indexed names])
AddPresetCommand: TypeAlias = tuple[
    Literal["ADD_PRESET"],
    int,
    str,
    Sequence[tuple[str, str]],
    Sequence[tuple[str, str]],
    Sequence[str],
    Sequence[str],
]
SetUsageAppsCommand: TypeAlias = tuple[Literal["SET_USAGE_APPS"], Sequence[str]]
DictCommand: TypeAlias = tuple[Literal["DICT"], Sequence[int], int]
TlsResumeCommand: TypeAlias = tuple[Literal["TLS_RESUME"], int, bytes, bytes | None]

EngineCommand: TypeAlias = (
    AcceptCommand
    | RejectCommand
    | RespondCommand
    | StreamErrorCommand
    | CallCommand
    | CancelCallCommand
    | PushCommand
    | FanoutCommand
    | GoAwayCommand
    | EndCommand
    | CloseCommand
    | SetIdleCommand
    | MqttWriteCommand
    | MqttPushesCommand
    | MqttPushCommand
    | MqttHeldCommand
    | AddDictionaryCommand
    | AddPresetCommand
    | SetUsageAppsCommand
    | DictCommand
    | TlsResumeCommand
)

#: Per app, rows (dictionary id (-1: raw), sent, sent raw bytes, sent wire bytes,
#: received, received raw bytes, received wire bytes); app "" = apps not in usage_apps.
UsageRows: TypeAlias = dict[str, list[tuple[int, int, int, int, int, int, int]]]

def version() -> str: ...
def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool: ...
def resume_ticket_seal(
    key: bytes,
    key_id: int,
    nonce: bytes,
    session_id: bytes,
    expires_at: int,
    auth_expires_at: int,
    user_id: str,
    scopes: str,
    device_id: str,
    app_id: str,
) -> bytes: ...
def resume_ticket_open(
    key: bytes, data: bytes, device_id: str, app_id: str
) -> tuple[bytes, int, int, str, str] | None: ...

class Engine:
    def __init__(self, config: dict[str, Any] | None = None) -> None: ...
    def listen(
        self,
        kind: Literal["mmtp", "mqtt"],
        host: str,
        port: int,
        *,
        tls: bool,
        reuse_port: bool = True,
        backlog: int = 4096,
        fast_open_queue: int = 0,
        proxy: bool = False,
    ) -> int: ...
    def event_fd(self) -> int: ...
    def take_events(self) -> list[EngineEvent]: ...
    def submit(self, commands: Iterable[EngineCommand]) -> None: ...
    def reload_tls(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        client_ca_pem: bytes | None = None,
        require_client_cert: bool = False,
    ) -> None: ...
    def set_ticket_keys(self, current_id: int, keys: Iterable[tuple[int, bytes]]) -> None: ...
    def close_listeners(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def mqtt_held(self, conn: int) -> tuple[int, int]: ...
    def usage(self) -> UsageRows: ...
    def shutdown(self) -> None: ...
