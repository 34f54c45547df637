"""Gateway configuration: defaults, a TOML file, environment overrides, CLI flags.

Precedence, lowest first: built-in defaults < ``--config FILE`` (TOML) <
environment variables ``CHANNEL_<SECTION>__<KEY>`` (for example
``CHANNEL_SERVER__PORT=8443``, ``CHANNEL_LIMITS__MAX_FRAME_SIZE=65536``) <
command-line flags. Values from the environment are parsed as TOML values
when they parse (numbers, booleans, ``["a", "b"]``), else taken as strings.

With no file at all the gateway runs on embedded defaults: a dev CA and
certificate and a token key pair made under ``state_dir``, in-memory presence.

Example ``channel.toml``::

    [server]
    host = "0.0.0.0"
    port = 8443                 # device port (TLS 1.3, ALPN mmtp/1)
    admin_port = 9100           # /metrics, /healthz, /readyz, /admin/*
    workers = 4                 # processes sharing the port (SO_REUSEPORT)
    max_connections = 100000
    max_connections_per_ip = 2000
    handshake_timeout_s = 10    # TCP accept -> HELLO_ACK
    tcp_fastopen_queue = 4096   # TCP Fast Open (needs sysctl net.ipv4.tcp_fastopen=3); 0 = off
    proxy_protocol = false      # devices come through L4 balancers sending PROXY v1/v2 first
    proxy_trusted = ["10.0.0.2/32"]   # ...from these addresses only; others are cut at accept
    proxy_max_header_bytes = 1024     # longest PROXY v2 header (TLVs included)
    engine = "native"           # the Rust engine; "python": uvloop + Python's ssl (reference)
    tls_engine = "memorybio"    # the python engine's TLS: or "uvloop" (its TLS transport)
    malloc_trim_after_handshakes = 0  # glibc malloc_trim(0) after a burst this big; 0 = off
    gc_gen0_threshold = 50000   # net allocations between young-generation collections
    state_dir = "/var/lib/channel"

    [tls]
    cert = "/etc/channel/tls/server.pem"
    key = "/etc/channel/tls/server.key"
    client_ca = ""              # set to enable mutual TLS for IoT-style clients
    require_client_cert = false
    early_data_max_bytes = 0    # TLS 0-RTT (native engine): e.g. 16384; needs a ticket store

    [auth]
    token_public_keys = ["/etc/channel/keys/token-1.pub"]   # key id from the file name
    ticket_secret = "..."       # shared by the fleet (tickets from any node resume anywhere)
    ticket_key_id = 2           # rotation: bump the id, keep the old one accepted a while
    ticket_accepted_key_ids = [1]
    ticket_ttl_s = 86400

    [heartbeat]
    interval_s = 240            # told to devices in HELLO_ACK
    min_s = 30
    max_s = 600
    idle_factor = 1.75          # close after interval * factor of silence

    [limits]                    # every MMTP wire limit, see protocol_spec/mmtp-v1.md
    max_frame_size = 262144
    max_concurrent_streams = 64
    send_buffer_high_water_bytes = 1048576   # above this we stop reading the device's requests
    slow_consumer_grace_s = 10  # ...and drop it (SLOW_CONSUMER) if it stays there this long
    requests_per_second = 50    # per device, token bucket
    request_burst = 100
    max_hello_size = 8192       # the first frame, before the device is authenticated
    device_input_cpu_ms_per_s = 250  # CPU a device's input may use (0 = unbudgeted)...
    device_input_burst_ms = 5   # ...and at once, before its reading waits

    [push]                      # pushes, presence, the Redis stream API
    backend = "redis"           # "memory" (one process, the default) or "redis" (a fleet)
    redis_url = "redis://10.0.0.5:6379/0"
    redis_cluster = true        # redis_url names any node of a Redis Cluster
    presence_buckets = 4194304  # online devices / 64, fixed for the fleet's life (docs/sizing.md)
    lease_ms = 6000             # a node silent this long is dead: its devices are offline
    queue_cap = 100             # undelivered pushes kept per device (oldest dropped beyond)
    user_devices_ttl_s = 2592000  # a user push reaches devices seen this recently, offline too
    user_devices_cap = 32       # ...the most recently seen this many
    default_ttl_s = 86400
    final_status_retention_s = 3600   # a status whose devices are all final goes this long after
    memory_max_statuses = 1000000     # memory backend: statuses held (soonest due dropped first)
    inbox_max_entries = 10000   # batches a node's Redis inbox keeps unread (then trimmed)
    recent_acks = 8192          # acked pushes a node remembers: a late second copy is not resent
    max_ttl_s = 2419200

    [api]                       # the HTTP push API, /openapi.json
    host = "0.0.0.0"
    port = 8080
    keys = ["ops:5e884898da28047151d0e56f8dc62927...:push+status"]   # channel apikey new

    [http]                      # the push API's and the admin port's HTTP servers
    header_timeout_s = 10       # a request's first byte -> end of its headers, else 408
    body_timeout_s = 30         # reading a request body, else 408
    idle_timeout_s = 60         # no request under way
    max_connections = 4096      # per server, else 503
    max_connections_per_ip = 256    # per server and client address, else 429

    [topics]                    # which topics a device may subscribe to
    allow = ["public.**", "user.{user_id}.**", "device.{device_id}.**"]   # the default

    [mqtt]                      # the MQTT front for IoT boxes (docs/mqtt.md)
    port = 8883                 # MQTT over TLS 1.3 (0 = any free port)
    tcp_port = -1               # plain TCP MQTT: -1 = off, 0 = any free port
    subscribe_allow = ["devices/%c/#"]     # %c = client id (device id), %u = user id
    publish_allow = ["devices/%c/up/#"]    # uplink to backends (stream or RPC route)
    push_topic = "devices/{device_id}/push"
    push_qos = 1

    [admin]                     # the admin port: /admin/* needs a key with scope "admin"
    open_metrics = true         # GET /metrics without a key
    open_health = true          # GET /healthz, /readyz without a key

    [compression]               # per-app dictionaries and presets (docs/operations.md)
    registry = "files"          # or "redis": [push] redis_url / key_prefix, shared by the fleet
    dir = ""                    # files: default <state_dir>/compression/<app>/...
    reload_interval_s = 10      # how often a node looks for newly published ones
    dict_chunk_bytes = 4096     # DICT delivery: chunk size (one chunk between other frames)
    dict_delivery_bytes_per_s = 8388608   # ...over all devices of a node
    dict_budget_bytes = 262144  # ...at most this much per connection
    sample_apps = ["com.example.chirp"]   # opt in: sample these apps' bodies to retrain
    sample_fraction = 0.02
    retrain_interval_s = 3600   # 0: never retrain on the node
    retrain_min_saving = 0.03   # publish a new dictionary only if it saves >= 3 %
    compress_min_saving = 0.01  # stop trying zstd on a size class saving < 1 % (0: always)

    [rpc]                       # routes and clusters, see channel/rpc/config.py
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CHANNEL_"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    admin_host: str = "127.0.0.1"
    admin_port: int = 9100
    workers: int = 1
    #: SO_REUSEPORT: a new process (rolling restart) or several workers share the port.
    reuse_port: bool = True
    max_connections: int = 100_000
    max_connections_per_ip: int = 5_000
    handshake_timeout_s: float = 10.0
    #: TCP Fast Open: SYNs carrying a ClientHello the listener may hold pending; 0 = off.
    #: Needs bit 0x2 of the net.ipv4.tcp_fastopen sysctl (channel/fastopen.py).
    tcp_fastopen_queue: int = 4096
    #: Devices connect through L4 load balancers that send a PROXY protocol header (v1
    #: or v2) before the TLS ClientHello: per-address limits, logs and metrics then see
    #: the device's address, not the balancer's. Only peers in ``proxy_trusted`` may
    #: connect at all (anyone else is cut at accept), and each must send a header.
    proxy_protocol: bool = False
    #: The balancers' addresses (CIDR networks, e.g. "10.0.0.0/24", "fd00::/64").
    proxy_trusted: list[str] = field(default_factory=list)
    #: The longest v2 header accepted, TLVs included (v1's line is at most 107 bytes).
    proxy_max_header_bytes: int = 1024
    #: Who moves the bytes: "native" (the Rust engine, channel._engine: sockets, TLS,
    #: frames, fan-out on its own thread) or "python" (uvloop and Python's ssl; the
    #: reference, and the fallback where the extension is not built).
    engine: str = "native"
    #: The Python engine's TLS: "memorybio": TLS over plain TCP with ssl.MemoryBIO (~6 KiB
    #: less per idle device); "uvloop": uvloop's built-in TLS transport.
    tls_engine: str = "memorybio"
    #: After this many handshakes, once the burst subsides, glibc's malloc_trim(0) hands
    #: the handshakes' freed heap pages back to the OS (channel/engine/heaptrim.py);
    #: 0 = never (the default: at 20,000 idle devices it changed RSS by < 0.1 KiB each).
    #: No effect on other C libraries, nor on the native engine (only the Python
    #: engine counts its handshakes for it).
    malloc_trim_after_handshakes: int = 0
    #: Python's cyclic collector: net allocations between young-generation collections
    #: once the node has started (CPython's default is 700). Larger = fewer collections
    #: (less CPU per push), each over more objects (longer pauses). Start-up objects are
    #: frozen out of every collection regardless (channel/gateway/run.py tune_gc).
    gc_gen0_threshold: int = 50_000
    drain_timeout_s: float = 30.0
    #: After GOAWAY, how long requests already on the wire may still arrive before close.
    goaway_grace_s: float = 1.0
    reconnect_after_ms: int = 2_000
    state_dir: str = ".channel"
    node_id: str = ""
    zone: str = ""


@dataclass
class TlsConfig:
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    require_client_cert: bool = False
    #: TLS 1.3 early data (0-RTT) accepted per connection, in bytes (native engine only;
    #: 1024..65536): a returning device's HELLO and idempotent requests are answered one
    #: round trip sooner. It needs single-use tickets kept in the push backend's store
    #: (Redis: a GETDEL per resumption, a SET per handshake). 0 = off: sealed tickets that
    #: resume on any node with no store (spec section 8.5).
    early_data_max_bytes: int = 0
    #: With early data: how long a resuming handshake waits for its ticket from the
    #: store; then it goes on without (a full handshake, no early data).
    ticket_store_timeout_ms: int = 250
    #: With early data and push.backend = "memory": tickets this process keeps (the
    #: oldest are dropped beyond; their devices do a full handshake).
    ticket_store_max_entries: int = 100_000


@dataclass
class AuthConfig:
    token_public_keys: list[str] = field(default_factory=list)
    ticket_secret: str = ""
    ticket_key_id: int = 1
    ticket_accepted_key_ids: list[int] = field(default_factory=list)
    ticket_ttl_s: int = 86_400
    token_leeway_s: int = 30
    #: Tokens whose signature verified, kept by their bytes so a device reconnecting
    #: with the same token skips the Ed25519 check (~0.6 KB each with the token; 0: off).
    token_cache_entries: int = 10_000


@dataclass
class HeartbeatConfig:
    interval_s: int = 240
    min_s: int = 30
    max_s: int = 600
    idle_factor: float = 1.75


@dataclass
class LimitsConfig:
    max_frame_size: int = 256 * 1024
    header_table_size: int = 4096
    max_header_list_size: int = 16 * 1024
    max_body_size: int = 1024 * 1024
    max_concurrent_streams: int = 64
    send_buffer_high_water_bytes: int = 1024 * 1024
    #: A device whose send buffer stays above the high-water mark this long is dropped.
    slow_consumer_grace_s: float = 10.0
    requests_per_second: float = 50.0
    request_burst: int = 100
    max_pending_requests: int = 64
    #: Largest HELLO (the first frame), refused from its length: a device that has
    #: not authenticated yet gets the server to buffer and parse at most this much.
    max_hello_size: int = 8 * 1024
    #: CPU time one device's input (decoding, dispatch, the answers it causes) may use,
    #: in ms per second: 250 = a quarter of a core. Beyond it the device's reading is
    #: paused until the budget is paid off, so no device takes more than this slice of
    #: the node, whatever it sends. 0 = no budget.
    device_input_cpu_ms_per_s: float = 250.0
    #: ...and at most this much at once (what another device's PING may wait behind it,
    #: plus one frame).
    device_input_burst_ms: float = 5.0


@dataclass
class PushConfig:
    #: "memory": this process only (embedded default); "redis": a fleet sharing Redis.
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Talk to a Redis Cluster (``redis_url`` names any one of its nodes).
    redis_cluster: bool = False
    #: Prefix of every Redis key (several deployments may share one Redis).
    key_prefix: str = "ch"
    #: Presence hashes: size to online devices / 64 (docs/sizing.md); fixed for a fleet's life.
    presence_buckets: int = 65_536
    #: A node that has not renewed its lease this long is dead; its devices are offline.
    lease_ms: int = 6_000
    #: Undelivered pushes kept per device; the oldest are dropped (reported failed) beyond.
    queue_cap: int = 100
    #: A push to a user is queued for every device the user connected from this
    #: recently (offline ones too); 0: only for the user's devices online now.
    user_devices_ttl_s: int = 30 * 86_400
    #: At most this many of a user's devices (the most recently seen) get a user push.
    user_devices_cap: int = 32
    #: The fleet sweeps the whole directory once per this period (nodes share the work),
    #: forgetting devices not seen within the ttl whose users nobody pushes to; 0: never.
    user_devices_sweep_s: int = 86_400
    default_ttl_s: int = 86_400
    max_ttl_s: int = 28 * 86_400
    #: Message statuses stay queryable this long after the message expires.
    status_retention_s: int = 86_400
    #: ...but a device or user push whose every device reached a final status (delivered,
    #: expired, revoked, failed) is kept only this long after the last one: most statuses
    #: are final within seconds, and a 2-day life made them most of Redis (docs/sizing.md).
    #: 0: as long as status_retention_s.
    final_status_retention_s: float = 3_600.0
    #: Memory backend: most message statuses held (~330-400 B each). Past it the ones
    #: due soonest are dropped before their time (their look-up answers 404; delivery and
    #: receipts are unaffected); 0: no cap. At a steady 1,000 pushes/s the hour of
    #: final_status_retention_s alone is 3.6 M statuses.
    memory_max_statuses: int = 1_000_000
    #: Receipts (and stream API results) the receipt stream keeps, about (Redis trims
    #: whole stream nodes): ~130 B of Redis each, so 1M is ~130 MB on one shard
    #: (``python -m stress.presence``).
    receipt_stream_maxlen: int = 1_000_000
    #: Entries (batches of pushes) a node's Redis inbox keeps before its oldest are
    #: trimmed (approximate: Redis trims whole stream nodes of ~100 entries). Bounds what
    #: a stalled node's inbox costs Redis; pushes stay safe in their devices' queues, and
    #: a node that finds entries trimmed before it read them replays its devices' queues.
    inbox_max_entries: int = 10_000
    #: Acknowledged (device, message id) pairs a node remembers, newest kept, so a second
    #: copy of a push arriving after the ACK (its queue replay on connect raced its
    #: routed copy, or a copy forwarded from the node a box just left) is not written
    #: again. ~200 B each; 0 turns it off.
    recent_acks: int = 8_192
    #: Broadcast and topic fan-out: sessions written per event-loop turn. Smaller lets
    #: unicasts, ACKs and API calls in sooner during a fan-out (128: a unicast posted
    #: behind a 10,000-device broadcast is acked in ~40 ms, 512: ~80-140 ms), at no
    #: measurable CPU cost.
    fanout_batch: int = 128
    #: A fan-out that finds the node's ring idle waits this long before the ring starts,
    #: so fan-outs posted one after another in that time share one write per device
    #: (one TLS record, one send, one ACK to read): broadcasts cost the node less CPU per
    #: delivery, each up to this much later. 0: start at once.
    fanout_linger_ms: float = 0.0
    #: Redis backend, the node's own memory and sockets (docs/operations.md, "Limits"):
    #: connections per Redis client pool (two clients; per primary on a cluster).
    redis_max_connections: int = 64
    #: ...of which a single-Redis client keeps this many between its raw pipelined
    #: exchanges (they skip the pool's get and release); the other
    #: ``redis_max_connections - redis_raw_connections`` bound the calls in flight.
    redis_raw_connections: int = 4
    #: Devices whose queue and presence keys are kept made (~300 B each); past it the
    #: memo starts over.
    redis_key_memo_devices: int = 32_768
    #: Devices whose presence is kept decoded (~250 B each); past it the memo starts over.
    redis_presence_memo_devices: int = 32_768
    #: Pushes kept as sent for the entries this node added to its own inbox, until read
    #: back (the oldest let go first: those are unpacked from their bytes); 0: none.
    redis_local_envelopes: int = 65_536
    #: Commands per pipelined round trip (a longer batch goes in several): bounds one
    #: reply's memory.
    redis_pipeline_commands: int = 1_000
    #: Keys one Lua script call takes at most: bounds how long one call holds Redis (a
    #: few hundred µs at 256) and the size of its reply.
    redis_keys_per_script: int = 256
    #: Inbox entries (batches of pushes) taken per read: bounds one read's memory.
    redis_inbox_read_entries: int = 256
    #: Redis stream API: backends XADD push requests here and read receipts there.
    request_stream: str = "channel:push"
    receipt_stream: str = "channel:receipts"
    request_stream_enabled: bool = True


@dataclass
class ApiConfig:
    """The HTTP push API (``/v1/...``, ``/openapi.json``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    #: API key records, "key_id:sha256-hex-of-secret:scope1+scope2" (see ``channel apikey``).
    keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 1_000
    #: Longest ``POST /v1/devices/{id}/rpc`` wait a caller may ask for.
    max_rpc_timeout_ms: int = 30_000
    #: How long an Idempotency-Key's answer is kept for retries.
    idempotency_ttl_s: int = 86_400
    #: While the first request with a key runs, its placeholder lives this long and its
    #: node renews it (every third of it): a node that dies mid-request frees the key
    #: for retries within this time, instead of answering them 409 for the whole TTL.
    idempotency_lease_s: float = 10.0


@dataclass
class TopicsConfig:
    """Which topics a device may subscribe to (``channel/push/topics.py``)."""

    #: A topic must match one of these: ``*`` one segment, ``**`` the rest, ``{device_id}``
    #: / ``{user_id}`` / ``{app_id}`` the device's own ids. ``["**"]``: every topic.
    allow: list[str] = field(
        default_factory=lambda: ["public.**", "user.{user_id}.**", "device.{device_id}.**"]
    )


@dataclass
class MqttConfig:
    """The MQTT front for IoT boxes (``docs/mqtt.md``): listeners, ACL, limits."""

    #: The MQTT over TLS 1.3 listener (on by default).
    enabled: bool = True
    #: Listener address ("" = ``[server] host``).
    host: str = ""
    #: MQTT over TLS; 0 = any free port (named ``mqtt_port`` in the listening line).
    port: int = 8883
    #: Plain TCP MQTT (no TLS): -1 = off (the default), 0 = any free port
    #: (``mqtt_tcp_port`` in the listening line). For test rigs and trusted networks.
    tcp_port: int = -1
    #: Accept CONNECTs without a credential, with any client id (no token, no
    #: certificate). Off by default; for interoperability runs (docs/mqtt.md).
    allow_anonymous: bool = False
    #: Topic filters a box may subscribe to; ``%c`` is its client id (= device id), ``%u``
    #: its user id. A SUBSCRIBE outside them is refused in the SUBACK (0x87 / 0x80).
    subscribe_allow: list[str] = field(default_factory=lambda: ["devices/%c/#"])
    #: ...and never these, whatever the allow list says: a filter inside one is refused,
    #: and messages on them do not reach a box through a broader filter either.
    subscribe_deny: list[str] = field(default_factory=list)
    #: Topics a box may publish to (its RPC topics are always its own): refused
    #: PUBLISHes get PUBACK / PUBREC 0x87 at MQTT 5 and are dropped at 3.1.1.
    publish_allow: list[str] = field(default_factory=lambda: ["devices/%c/up/#"])
    publish_deny: list[str] = field(default_factory=list)
    #: Where a push to a device reaches the box (``{device_id}``), at this QoS.
    push_topic: str = "devices/{device_id}/push"
    push_qos: int = 1
    #: Where a broadcast push reaches every box.
    broadcast_topic: str = "broadcast"
    #: A topic push to ``a.b`` reaches MQTT subscribers of ``<topic_prefix>a/b``.
    topic_prefix: str = "topics/"
    #: Box publishes on these topics are for backends: each goes to ``uplink_stream``
    #: (Redis push backend) or else through the RPC router as op ``uplink_op``; the
    #: PUBACK waits until it is taken.
    uplink_topics: list[str] = field(default_factory=lambda: ["devices/+/up/#"])
    uplink_stream: str = ""
    uplink_stream_maxlen: int = 1_000_000
    uplink_op: str = "mqtt.uplink"
    #: Largest packet either way (fixed header included); told to MQTT 5 clients.
    max_packet_size_bytes: int = 256 * 1024
    #: A CONNECT asking for no keepalive or a longer one gets this (told to MQTT 5
    #: clients as Server Keep Alive); the connection ends after 1.5 x keepalive of silence.
    max_keepalive_s: int = 1200
    #: QoS 1/2 PUBLISHes a box may have unacknowledged towards us (Receive Maximum).
    receive_maximum: int = 100
    #: QoS 1/2 PUBLISHes we have unacknowledged towards a box (less if it asks).
    max_inflight_out: int = 100
    #: Topic aliases a box may set (0 = none).
    topic_alias_maximum: int = 16
    #: Longest session expiry (MQTT 5; longer asks are cut and told); what a 3.1.1
    #: persistent session (clean session 0) gets.
    max_session_expiry_s: int = 7 * 86_400
    #: A message queued for an offline persistent session lives this long unless its
    #: own Message Expiry Interval is shorter.
    queued_message_ttl_s: int = 7 * 86_400
    #: Subscriptions per client.
    max_subscriptions_per_client: int = 100
    #: Subscriptions outside a box's own ``devices/<client id>/`` namespace, fleet-wide
    #: (every node keeps them in memory): beyond it SUBACK 0x97 (quota exceeded).
    max_global_subscriptions: int = 100_000
    #: Retained messages kept under one topic namespace (its first two levels); a new
    #: one beyond it is not retained (counted in channel_mqtt_retained_refused_total).
    max_retained_per_namespace: int = 1_000
    #: Drain: DISCONNECT 0x8B (server shutting down), or 0x9C (use another server)
    #: naming this one when it is set.
    server_reference: str = ""
    #: A 3.1.1 box with more unanswered QoS 1/2 PUBLISHes than this is disconnected
    #: (3.1.1 has no Receive Maximum).
    max_pending_in: int = 1_000
    #: Clock skew allowed between nodes when deciding a queued PUBLISH is a first
    #: attempt (DUP 0): one accepted less than this after the session's previous
    #: connection closed goes out with DUP 1, as it may have reached that connection.
    dup_clock_margin_ms: int = 2_000


@dataclass
class HttpConfig:
    """Bounds of the HTTP servers (the push API and the admin port; each counts its own
    connections). See ``channel/httpserver.py``."""

    #: From a request's first byte to the end of its headers; then 408 and close.
    header_timeout_s: float = 10.0
    #: A handler's read of the request body; then 408 and close.
    body_timeout_s: float = 30.0
    #: A connection with no request under way (since it opened or its last answer).
    idle_timeout_s: float = 60.0
    #: Open connections per server; one more gets 503 and is closed.
    max_connections: int = 4_096
    #: Open connections per client address per server; one more gets 429 and is closed.
    max_connections_per_ip: int = 256


@dataclass
class AdminConfig:
    """The admin port (``[server] admin_host``, ``admin_port``). ``/admin/*`` always
    needs an API key with the ``admin`` scope (``[api] keys``; ``*`` does not imply it)."""

    #: ``GET /metrics`` without a key (Prometheus scrapers); false: it needs the scope too.
    open_metrics: bool = True
    #: ``GET /healthz`` and ``/readyz`` without a key (load balancers, orchestrators).
    open_health: bool = True


@dataclass
class NativeConfig:
    """Tuning of the native engine (``[server] engine = "native"``; see
    ``native/engine/BOUNDARY.md``). The limits shared with the Python engine are in
    ``[server]``, ``[limits]`` and ``[heartbeat]``."""

    #: A closing connection's last bytes and the peer's FIN get this long.
    close_linger_ms: int = 2_000
    #: Fairness: bytes read from one connection per poll round...
    max_read_per_round_bytes: int = 65_536
    #: ...and MMTP frames / MQTT packets handled per connection per round.
    max_frames_per_round: int = 256
    #: Events waiting for Python beyond this (bytes, about): the engine stops reading
    #: sockets until Python catches up (writes, deadlines and accepts go on).
    max_pending_event_bytes: int = 16 * 1024 * 1024
    #: Pushes awaiting their ACK on one connection; more are refused (left queued).
    max_unacked_pushes: int = 4_096
    #: How often deadlines (handshake, idle, slow consumer) are checked: their precision.
    sweep_interval_ms: int = 200
    #: Accepts per listener per poll round.
    accepts_per_round: int = 256
    #: TLS session ticket lifetime told to devices (<= 604800).
    ticket_lifetime_s: int = 7_200
    #: RPC calls the engine answered itself (``[rpc] native``) reach Python's metrics,
    #: breakers and sampling at most this late (or per 256 calls).
    rpc_report_interval_ms: int = 10


@dataclass
class CompressionConfig:
    """Per-app dictionaries and presets, their delivery and retraining
    (``channel/compression``, docs/operations.md)."""

    #: "files" (``dir``) or "redis" (``[push] redis_url``, ``key_prefix``; a fleet).
    registry: str = "files"
    #: Files registry: ``<dir>/<app>/dict-<id>.mmtpdict``, ``preset-<id>.json``;
    #: "" = ``<state_dir>/compression``.
    dir: str = ""
    #: How often a node checks the registry for newly published dictionaries/presets.
    reload_interval_s: float = 10.0
    #: DICT delivery: bytes per chunk; a chunk only goes when nothing else waits.
    dict_chunk_bytes: int = 4096
    #: DICT delivery: bytes per second over all devices of a node.
    dict_delivery_bytes_per_s: int = 8 * 1024 * 1024
    #: DICT delivery: bytes one connection may be sent in its life.
    dict_budget_bytes: int = 256 * 1024
    #: Apps whose bodies are sampled for retraining (opt-in per app; none by default).
    sample_apps: list[str] = field(default_factory=list)
    #: Share of bodies sampled.
    sample_fraction: float = 0.02
    #: Bodies kept per app (a reservoir: older ones replaced at random).
    sample_max_bodies: int = 10_000
    #: Bodies longer than this are not sampled (bounds the reservoir's memory).
    sample_max_body_bytes: int = 4_096
    #: Bodies sampled per device per training window (one device's data cannot
    #: reach a public dictionary: a string seen in this few samples is not picked).
    sample_per_device: int = 2
    #: How often a node retrains each sampled app (0: never; ``channel dict`` does).
    retrain_interval_s: float = 3_600.0
    #: Samples an app needs before a retraining is tried.
    retrain_min_samples: int = 2_000
    #: A candidate is published only if it makes held-out samples this much smaller.
    retrain_min_saving: float = 0.03
    #: Size of trained dictionaries.
    dict_size_bytes: int = 16 * 1024
    #: A size class of bodies (per dictionary) whose recent compressed bodies
    #: saved less than this share of their bytes is sent raw without trying zstd;
    #: one body in 32 is still tried (0: always try).
    compress_min_saving: float = 0.01


@dataclass
class LogConfig:
    level: str = "info"
    json: bool = True


@dataclass
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    push: PushConfig = field(default_factory=PushConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    native: NativeConfig = field(default_factory=NativeConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    rpc: dict[str, Any] = field(default_factory=dict)
    source: str = "defaults"

    @property
    def state_dir(self) -> Path:
        return Path(self.server.state_dir)


_SECTIONS = (
    "server",
    "tls",
    "auth",
    "heartbeat",
    "limits",
    "log",
    "push",
    "api",
    "admin",
    "http",
    "topics",
    "mqtt",
    "native",
    "compression",
)


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


def _coerce(section: str, key: str, current: Any, value: Any) -> Any:
    where = f"{section}.{key}"
    if isinstance(current, bool):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(current, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(current, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(current, list):
        items: list[Any]
        if isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
        elif isinstance(value, list):
            items = list(value)
        else:
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if key.endswith("_ids"):
            try:
                return [int(item) for item in items]
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: expected a list of integers") from None
        return [str(item) for item in items]
    return str(value)


def _apply(config: GatewayConfig, section: str, values: Mapping[str, Any], origin: str) -> None:
    target = getattr(config, section)
    known = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{origin}: unknown key {section}.{key} (known: {', '.join(sorted(known))})"
            )
        setattr(target, key, _coerce(section, key, getattr(target, key), value))


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> GatewayConfig:
    """Build the configuration from defaults, ``path``, the environment and overrides."""
    config = GatewayConfig()
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        for section, values in data.items():
            if section == "rpc":
                config.rpc = dict(values)
            elif section in _SECTIONS and isinstance(values, dict):
                _apply(config, section, values, str(path))
            else:
                raise ConfigError(
                    f"{path}: unknown section [{section}] (known: {', '.join(_SECTIONS)}, rpc)"
                )
        config.source = str(path)
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section in _SECTIONS:
            _apply(config, section, {key: _env_value(raw)}, f"environment {name}")
    for section, values in (overrides or {}).items():
        _apply(config, section, {k: v for k, v in values.items() if v is not None}, "flag")
    validate(config)
    return config


def _validate_proxy(server: ServerConfig) -> None:
    import ipaddress

    from channel.engine.proxyproto import V2_MIN_LIMIT_BYTES

    for entry in server.proxy_trusted:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.proxy_trusted: {entry!r} is not an address or CIDR network"
            ) from None
    if server.proxy_protocol and not server.proxy_trusted:
        raise ConfigError(
            "server.proxy_trusted: proxy_protocol is on but no balancer address is trusted "
            '(e.g. proxy_trusted = ["10.0.0.2/32"])'
        )
    if not V2_MIN_LIMIT_BYTES <= server.proxy_max_header_bytes <= 65_551:
        raise ConfigError(f"server.proxy_max_header_bytes: must be {V2_MIN_LIMIT_BYTES}..65551")


def validate(config: GatewayConfig) -> None:
    hb = config.heartbeat
    if not 1 <= hb.min_s <= hb.interval_s <= hb.max_s:
        raise ConfigError("heartbeat: need 1 <= min_s <= interval_s <= max_s")
    if hb.idle_factor < 1.2:
        raise ConfigError(
            "heartbeat.idle_factor: must be >= 1.2 (a late PING is not a dead device)"
        )
    if config.server.workers < 1:
        raise ConfigError("server.workers: must be >= 1")
    if config.server.malloc_trim_after_handshakes < 0:
        raise ConfigError("server.malloc_trim_after_handshakes: must be >= 0 (0 = off)")
    if not 100 <= config.server.gc_gen0_threshold <= 10_000_000:
        raise ConfigError("server.gc_gen0_threshold: must be between 100 and 10000000")
    if config.limits.max_frame_size < 1024:
        raise ConfigError("limits.max_frame_size: must be >= 1024")
    if config.limits.header_table_size < 4096:
        raise ConfigError("limits.header_table_size: must be >= 4096")
    if config.limits.send_buffer_high_water_bytes < 16 * 1024:
        raise ConfigError("limits.send_buffer_high_water_bytes: must be >= 16384")
    if config.limits.max_hello_size < 1024:
        raise ConfigError("limits.max_hello_size: must be >= 1024")
    if not 0 <= config.limits.device_input_cpu_ms_per_s < 1000:
        raise ConfigError(
            "limits.device_input_cpu_ms_per_s: must be 0 (no budget) up to below 1000 "
            "(a device gets at most that share of one core)"
        )
    if config.limits.device_input_burst_ms <= 0:
        raise ConfigError("limits.device_input_burst_ms: must be > 0")
    if config.auth.ticket_secret and len(config.auth.ticket_secret.encode()) < 32:
        raise ConfigError("auth.ticket_secret: must be at least 32 bytes (e.g. 64 hex digits)")
    if config.server.tcp_fastopen_queue < 0:
        raise ConfigError("server.tcp_fastopen_queue: must be >= 0 (0 = TCP Fast Open off)")
    if config.server.engine not in ("native", "python"):
        raise ConfigError('server.engine: must be "native" or "python"')
    _validate_proxy(config.server)
    native = config.native
    for name in (
        "close_linger_ms",
        "max_read_per_round_bytes",
        "max_frames_per_round",
        "max_pending_event_bytes",
        "max_unacked_pushes",
        "sweep_interval_ms",
        "accepts_per_round",
        "rpc_report_interval_ms",
    ):
        if getattr(native, name) < 1:
            raise ConfigError(f"native.{name}: must be >= 1")
    if not 1 <= native.ticket_lifetime_s <= 604_800:
        raise ConfigError("native.ticket_lifetime_s: must be 1..604800 (TLS 1.3: 7 days)")
    if config.server.tls_engine not in ("memorybio", "uvloop"):
        raise ConfigError('server.tls_engine: must be "memorybio" or "uvloop"')
    push = config.push
    if push.backend not in ("memory", "redis"):
        raise ConfigError('push.backend: must be "memory" or "redis"')
    if push.presence_buckets < 1 or push.queue_cap < 1 or push.lease_ms < 1000:
        raise ConfigError("push: presence_buckets and queue_cap >= 1, lease_ms >= 1000")
    if not 0 <= push.default_ttl_s <= push.max_ttl_s:
        raise ConfigError("push: need 0 <= default_ttl_s <= max_ttl_s")
    if push.user_devices_ttl_s < 0:
        raise ConfigError("push.user_devices_ttl_s: must be >= 0 (0 = online devices only)")
    if push.user_devices_sweep_s < 0:
        raise ConfigError("push.user_devices_sweep_s: must be >= 0 (0 = no sweep)")
    if push.user_devices_cap < 1:
        raise ConfigError("push.user_devices_cap: must be >= 1")
    if push.final_status_retention_s < 0:
        raise ConfigError("push.final_status_retention_s: must be >= 0 (0 = status_retention_s)")
    if push.memory_max_statuses < 0:
        raise ConfigError("push.memory_max_statuses: must be >= 0 (0 = no cap)")
    if push.fanout_batch < 1:
        raise ConfigError("push.fanout_batch: must be >= 1")
    if not 0 <= push.fanout_linger_ms <= 10_000:
        raise ConfigError("push.fanout_linger_ms: must be 0..10000")
    if push.inbox_max_entries < 1:
        raise ConfigError("push.inbox_max_entries: must be >= 1")
    if not 0 <= push.recent_acks <= 10_000_000:
        raise ConfigError("push.recent_acks: must be 0..10000000")
    _validate_redis_memory(push)
    api = config.api
    if api.idempotency_ttl_s < 1:
        raise ConfigError("api.idempotency_ttl_s: must be >= 1")
    if not 0.5 <= api.idempotency_lease_s <= min(300, api.idempotency_ttl_s):
        raise ConfigError(
            "api.idempotency_lease_s: must be 0.5..300 and at most api.idempotency_ttl_s"
        )
    from channel.push.topics import TopicRuleError, TopicRules

    try:
        TopicRules(config.topics.allow)
    except TopicRuleError as exc:
        raise ConfigError(f"topics.allow: {exc}") from None
    http = config.http
    for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
        if not 0.1 <= getattr(http, name) <= 3_600:
            raise ConfigError(f"http.{name}: must be 0.1..3600 seconds")
    if not 1 <= http.max_connections_per_ip <= http.max_connections:
        raise ConfigError("http: need 1 <= max_connections_per_ip <= max_connections")
    _validate_mqtt(config.mqtt)
    _validate_compression(config.compression)
    if bool(config.tls.cert) != bool(config.tls.key):
        raise ConfigError("tls: set both cert and key, or neither (dev certificate)")
    early = config.tls.early_data_max_bytes
    if early != 0 and not 1024 <= early <= 65_536:
        raise ConfigError("tls.early_data_max_bytes: must be 0 (off) or 1024..65536")
    if not 10 <= config.tls.ticket_store_timeout_ms <= 10_000:
        raise ConfigError("tls.ticket_store_timeout_ms: must be 10..10000")
    if config.auth.token_cache_entries < 0:
        raise ConfigError("auth.token_cache_entries: must be >= 0 (0 = no cache)")
    if config.tls.ticket_store_max_entries < 1:
        raise ConfigError("tls.ticket_store_max_entries: must be >= 1")


def _validate_redis_memory(push: PushConfig) -> None:
    if not 2 <= push.redis_max_connections <= 10_000:
        raise ConfigError("push.redis_max_connections: must be 2..10000")
    if not 0 <= push.redis_raw_connections < push.redis_max_connections:
        raise ConfigError(
            "push.redis_raw_connections: must be 0..redis_max_connections - 1 "
            "(the rest carry the calls in flight)"
        )
    for name in ("redis_key_memo_devices", "redis_presence_memo_devices"):
        if not 1 <= getattr(push, name) <= 10_000_000:
            raise ConfigError(f"push.{name}: must be 1..10000000")
    if not 0 <= push.redis_local_envelopes <= 10_000_000:
        raise ConfigError("push.redis_local_envelopes: must be 0..10000000 (0 = keep none)")
    if not 1 <= push.redis_pipeline_commands <= 100_000:
        raise ConfigError("push.redis_pipeline_commands: must be 1..100000")
    for name in ("redis_keys_per_script", "redis_inbox_read_entries"):
        if not 1 <= getattr(push, name) <= 10_000:
            raise ConfigError(f"push.{name}: must be 1..10000")


def _validate_mqtt(mqtt: MqttConfig) -> None:
    if not 0 <= mqtt.port <= 65535 or not -1 <= mqtt.tcp_port <= 65535:
        raise ConfigError("mqtt: port 0..65535 (0 = any free port), tcp_port -1 (off) or 0..65535")
    if mqtt.push_qos not in (0, 1, 2):
        raise ConfigError("mqtt.push_qos: must be 0, 1 or 2")
    if "{device_id}" not in mqtt.push_topic:
        raise ConfigError("mqtt.push_topic: must contain {device_id}")
    if not 1024 <= mqtt.max_packet_size_bytes <= 268_435_460:
        raise ConfigError("mqtt.max_packet_size_bytes: must be 1024..268435460")
    if not 1 <= mqtt.receive_maximum <= 65535 or not 1 <= mqtt.max_inflight_out <= 65535:
        raise ConfigError("mqtt: receive_maximum and max_inflight_out must be 1..65535")
    if not 0 <= mqtt.topic_alias_maximum <= 65535:
        raise ConfigError("mqtt.topic_alias_maximum: must be 0..65535")
    if not 1 <= mqtt.max_keepalive_s <= 65535:
        raise ConfigError("mqtt.max_keepalive_s: must be 1..65535")
    for name in ("max_session_expiry_s", "queued_message_ttl_s"):
        if not 0 <= getattr(mqtt, name) <= 0xFFFF_FFFF:
            raise ConfigError(f"mqtt.{name}: must be 0..4294967295")
    for name in (
        "max_subscriptions_per_client",
        "max_global_subscriptions",
        "max_retained_per_namespace",
        "max_pending_in",
        "uplink_stream_maxlen",
    ):
        if getattr(mqtt, name) < 1:
            raise ConfigError(f"mqtt.{name}: must be >= 1")
    if not 0 <= mqtt.dup_clock_margin_ms <= 3_600_000:
        raise ConfigError("mqtt.dup_clock_margin_ms: must be 0..3600000")
    from channel.mqtt.acl import AclError, TopicPatterns

    for name in (
        "subscribe_allow",
        "subscribe_deny",
        "publish_allow",
        "publish_deny",
        "uplink_topics",
    ):
        try:
            TopicPatterns(getattr(mqtt, name))
        except AclError as exc:
            raise ConfigError(f"mqtt.{name}: {exc}") from None


def _validate_compression(comp: CompressionConfig) -> None:
    if comp.registry not in ("files", "redis"):
        raise ConfigError('compression.registry: must be "files" or "redis"')
    if comp.reload_interval_s < 0.1:
        raise ConfigError("compression.reload_interval_s: must be >= 0.1")
    if not 256 <= comp.dict_chunk_bytes <= 262_144:
        raise ConfigError("compression.dict_chunk_bytes: must be 256..262144")
    if comp.dict_delivery_bytes_per_s < comp.dict_chunk_bytes:
        raise ConfigError("compression.dict_delivery_bytes_per_s: must be >= dict_chunk_bytes")
    if comp.dict_budget_bytes < 0:
        raise ConfigError("compression.dict_budget_bytes: must be >= 0 (0: never deliver)")
    if not 0 <= comp.sample_fraction <= 1:
        raise ConfigError("compression.sample_fraction: must be 0..1")
    for name in ("sample_max_bodies", "sample_max_body_bytes", "sample_per_device"):
        if getattr(comp, name) < 1:
            raise ConfigError(f"compression.{name}: must be >= 1")
    if comp.retrain_interval_s < 0:
        raise ConfigError("compression.retrain_interval_s: must be >= 0 (0: never)")
    if comp.retrain_min_samples < 8:
        raise ConfigError("compression.retrain_min_samples: must be >= 8")
    if not 0 <= comp.retrain_min_saving < 1:
        raise ConfigError("compression.retrain_min_saving: must be 0..1 (a share)")
    if not 0 <= comp.compress_min_saving < 1:
        raise ConfigError("compression.compress_min_saving: must be 0..1 (a share)")
    if not 1024 <= comp.dict_size_bytes <= 262_144:
        raise ConfigError("compression.dict_size_bytes: must be 1024..262144")
