//! Replays the spec's vector format (protocol_spec/mmtp-v1.md section 18) on
//! this crate: actions to `Connection` calls, events to the JSON form the
//! reference writes. Shared by the spec's vectors and the differential data.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use mmtp::{
    Accept, BodyCodec, Connection, Dictionary, ErrorCode, Event, Headers, Hello, HelloAck, Kind,
    Limits, LocalError, Options, PresetTable, Presets, Role,
};
use serde_json::{json, Map, Value};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn load_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The spec's vectors; `MMTP_VECTORS_DIR` points elsewhere (another checkout).
pub fn vectors_dir() -> PathBuf {
    match std::env::var_os("MMTP_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("protocol_spec/vectors"),
    }
}

/// A preset from its JSON file form (spec section 9.3).
pub fn preset_from_json(value: &Value) -> PresetTable {
    let pairs = |key: &str| -> Vec<(String, String)> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap().to_owned(),
                            p[1].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let names = |key: &str| -> Vec<String> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|n| n.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let typed = value.get("typed").map(|_| {
        pairs("typed")
            .into_iter()
            .map(|(n, k)| (n, Kind::parse(&k).unwrap()))
            .collect()
    });
    PresetTable::with_declarations(
        value["id"].as_u64().unwrap() as u32,
        value.get("name").and_then(Value::as_str).unwrap_or(""),
        pairs("entries"),
        typed,
        names("connection"),
        names("never_indexed"),
    )
    .unwrap()
}

/// Presets 0 and 1, the vectors' preset files, and the differential data's presets.
pub fn presets() -> Arc<Presets> {
    static PRESETS: std::sync::OnceLock<Arc<Presets>> = std::sync::OnceLock::new();
    PRESETS
        .get_or_init(|| {
            let mut presets = Presets::builtin();
            let conversations = load_json(vectors_dir().join("conversations.json"));
            for name in conversations["preset_files"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let file = load_json(vectors_dir().join(name.as_str().unwrap()));
                presets.insert(preset_from_json(&file)).unwrap();
            }
            let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/presets.json");
            if data.exists() {
                for preset in load_json(data).as_array().into_iter().flatten() {
                    presets.insert(preset_from_json(preset)).unwrap();
                }
            }
            Arc::new(presets)
        })
        .clone()
}

pub fn dictionary() -> Dictionary {
    let raw = std::fs::read(vectors_dir().join("dict-7.mmtpdict")).unwrap();
    Dictionary::from_file_bytes(&raw).unwrap()
}

pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// `{"hex": ...}` plus `"utf8"` when the bytes are UTF-8, as the reference writes.
pub fn bytes_json(raw: &[u8]) -> Value {
    let mut out = Map::new();
    out.insert("hex".into(), Value::String(hex(raw)));
    if let Ok(text) = std::str::from_utf8(raw) {
        out.insert("utf8".into(), Value::String(text.into()));
    }
    Value::Object(out)
}

/// Inverse of `bytes_json`; a plain string means its UTF-8 bytes.
pub fn json_bytes(value: Option<&Value>) -> Vec<u8> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => text.as_bytes().to_vec(),
        Some(Value::Object(map)) => match map.get("hex") {
            Some(Value::String(h)) => unhex(h),
            _ => map["utf8"].as_str().unwrap().as_bytes().to_vec(),
        },
        Some(other) => panic!("not a byte string: {other}"),
    }
}

fn headers_json(headers: &Headers) -> Value {
    Value::Array(headers.iter().map(|(n, v)| json!([n, v])).collect())
}

pub fn json_headers(value: Option<&Value>) -> Vec<(String, String)> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap().to_owned(),
                    pair[1].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
        Some(other) => panic!("not headers: {other}"),
    }
}

fn hello_json(hello: &Hello) -> Value {
    json!({
        "device_id": hello.device_id,
        "app_id": hello.app_id,
        "token": bytes_json(&hello.token),
        "resume_ticket": bytes_json(&hello.resume_ticket),
        "dictionaries": hello.dictionaries,
        "preset_id": hello.preset_id,
        "heartbeat_s": hello.heartbeat_s,
        "header_table_size": hello.header_table_size,
        "max_frame_size": hello.max_frame_size,
        "app_version": hello.app_version,
        "platform": hello.platform,
        "client_time_ms": hello.client_time_ms,
        "max_header_list_size": hello.max_header_list_size,
        "max_body_size": hello.max_body_size,
        "max_concurrent_streams": hello.max_concurrent_streams,
        "version": hello.version,
    })
}

fn ack_json(ack: &HelloAck) -> Value {
    json!({
        "session_id": bytes_json(&ack.session_id),
        "resume_ticket": bytes_json(&ack.resume_ticket),
        "heartbeat_s": ack.heartbeat_s,
        "preset_id": ack.preset_id,
        "newest_dictionary": ack.newest_dictionary,
        "header_table_size": ack.header_table_size,
        "max_frame_size": ack.max_frame_size,
        "max_concurrent_streams": ack.max_concurrent_streams,
        "max_header_list_size": ack.max_header_list_size,
        "max_body_size": ack.max_body_size,
        "server_time_ms": ack.server_time_ms,
        "resumed": ack.resumed,
        "max_connection_header_list_size": ack.max_connection_header_list_size,
        "version": ack.version,
    })
}

pub fn event_json(event: &Event) -> Value {
    let body = match event {
        Event::HelloReceived(hello) => json!({"hello": hello_json(hello)}),
        Event::HelloAccepted(ack) => json!({"ack": ack_json(ack)}),
        Event::RequestReceived {
            stream_id,
            op,
            headers,
            body,
        } => {
            json!({"stream_id": stream_id, "op": op, "headers": headers_json(headers), "body": bytes_json(body)})
        }
        Event::ResponseReceived {
            stream_id,
            status,
            headers,
            body,
        } => {
            json!({"stream_id": stream_id, "status": status, "headers": headers_json(headers), "body": bytes_json(body)})
        }
        Event::PushReceived {
            delivery_id,
            message_id,
            headers,
            body,
        } => {
            json!({"delivery_id": delivery_id, "message_id": bytes_json(message_id), "headers": headers_json(headers), "body": bytes_json(body)})
        }
        Event::AckReceived { delivery_ids } => json!({"delivery_ids": delivery_ids}),
        Event::PingReceived { payload } | Event::PongReceived { payload } => {
            json!({"payload": bytes_json(payload)})
        }
        Event::SettingsReceived { settings } => {
            json!({"settings": settings.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()})
        }
        Event::SettingsAcknowledged => json!({}),
        Event::GoAwayReceived {
            code,
            reconnect_after_ms,
            alternate_endpoint,
            message,
        } => {
            json!({"code": code, "reconnect_after_ms": reconnect_after_ms, "alternate_endpoint": alternate_endpoint, "message": message})
        }
        Event::StreamErrorReceived {
            stream_id,
            code,
            retry_after_ms,
            message,
        } => {
            json!({"stream_id": stream_id, "code": code, "retry_after_ms": retry_after_ms, "message": message})
        }
        Event::ConnectionErrorReceived {
            code,
            retry_after_ms,
            message,
        } => json!({"code": code, "retry_after_ms": retry_after_ms, "message": message}),
        Event::StreamCancelled { stream_id } => json!({"stream_id": stream_id}),
        Event::DictionaryReceived(dictionary) => json!({"dictionary": {
            "dict_id": dictionary.dict_id, "sha256": sha256_hex(&dictionary.content)}}),
    };
    let mut object = body.as_object().unwrap().clone();
    object.insert("event".into(), Value::String(event.name().into()));
    Value::Object(object)
}

pub fn events_json(events: &[Event]) -> Value {
    Value::Array(events.iter().map(event_json).collect())
}

fn u(args: &Value, key: &str, default: u64) -> u64 {
    args.get(key).and_then(Value::as_u64).unwrap_or(default)
}

fn s<'a>(args: &'a Value, key: &str) -> &'a str {
    args.get(key).and_then(Value::as_str).unwrap_or("")
}

fn code(args: &Value, key: &str, default: &str) -> ErrorCode {
    ErrorCode::from_name(args.get(key).and_then(Value::as_str).unwrap_or(default)).unwrap()
}

/// Limits from a `client_limits`-style object (names of spec section 15).
pub fn limits_from(spec: Option<&Value>) -> Limits {
    let mut limits = Limits::default();
    if let Some(Value::Object(map)) = spec {
        for (key, value) in map {
            let value = value.as_u64().unwrap();
            match key.as_str() {
                "max_frame_size" => limits.max_frame_size = value,
                "header_table_size" => limits.header_table_size = value,
                "max_header_list_size" => limits.max_header_list_size = value,
                "max_body_size" => limits.max_body_size = value,
                "max_zstd_window_size" => limits.max_zstd_window_size = value,
                "max_concurrent_streams" => limits.max_concurrent_streams = value,
                "max_identity_length" => limits.max_identity_length = value,
                "max_credential_length" => limits.max_credential_length = value,
                "max_message_id_length" => limits.max_message_id_length = value,
                "max_dictionary_size" => limits.max_dictionary_size = value,
                "max_acks_per_frame" => limits.max_acks_per_frame = value,
                other => panic!("unknown limit {other}"),
            }
        }
    }
    limits
}

/// A connection for the vectors: `dictionaries` ids out of {7}; `options`
/// may hold `encoder_table_size_cap` and `send_typed_headers`.
pub fn connection(
    role: Role,
    limits: Limits,
    dictionaries: &Value,
    options: Option<&Value>,
) -> Connection {
    let held: Vec<Dictionary> = dictionaries
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter(|id| id.as_u64() == Some(7))
                .map(|_| dictionary())
                .collect()
        })
        .unwrap_or_default();
    let codec = Arc::new(BodyCodec::new(held).unwrap());
    let mut opts = Options::default();
    if let Some(options) = options {
        opts.encoder_table_size_cap = u(
            options,
            "encoder_table_size_cap",
            opts.encoder_table_size_cap,
        );
        if let Some(typed) = options.get("send_typed_headers").and_then(Value::as_bool) {
            opts.send_typed_headers = typed;
        }
    }
    if let Some(names) = options.and_then(|o| o.get("connection_header_names")) {
        opts.connection_header_names = names
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
    }
    Connection::with_options(role, limits, codec, presets(), opts)
}

/// Carry out one scripted action.
pub fn perform(connection: &mut Connection, action: &str, args: &Value) -> Result<(), LocalError> {
    match action {
        "send_hello" => {
            let hello = Hello {
                device_id: s(args, "device_id").into(),
                app_id: s(args, "app_id").into(),
                token: json_bytes(args.get("token")),
                resume_ticket: json_bytes(args.get("resume_ticket")),
                dictionaries: args
                    .get("dictionaries")
                    .and_then(Value::as_array)
                    .map(|ids| ids.iter().map(|i| i.as_u64().unwrap()).collect())
                    .unwrap_or_default(),
                preset_id: u(args, "preset_id", 0),
                heartbeat_s: u(args, "heartbeat_s", 0),
                app_version: s(args, "app_version").into(),
                platform: s(args, "platform").into(),
                client_time_ms: u(args, "client_time_ms", 0),
                ..Hello::default()
            };
            connection.send_hello(&hello, u(args, "pipeline_dictionary", 0) as u32)
        }
        "accept" => connection
            .accept(&Accept {
                session_id: json_bytes(args.get("session_id")),
                resume_ticket: json_bytes(args.get("resume_ticket")),
                heartbeat_s: u(args, "heartbeat_s", 0),
                server_time_ms: u(args, "server_time_ms", 0),
                resumed: args
                    .get("resumed")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                newest_dictionary: args
                    .get("newest_dictionary")
                    .and_then(Value::as_u64)
                    .map(|id| id as u32),
            })
            .map(|_| ()),
        "reject" => connection.reject(code(args, "code", "NO_ERROR"), s(args, "message"), 0),
        "send_request" => connection
            .send_request(
                s(args, "op"),
                &json_bytes(args.get("body")),
                &json_headers(args.get("headers")),
            )
            .map(|_| ()),
        "send_response" => connection
            .send_response(
                u(args, "stream_id", 0),
                &json_bytes(args.get("body")),
                &json_headers(args.get("headers")),
                u(args, "status", 0),
            )
            .map(|_| ()),
        "send_error" => connection
            .send_error(
                u(args, "stream_id", 0),
                code(args, "code", "NO_ERROR"),
                s(args, "message"),
                u(args, "retry_after_ms", 0),
            )
            .map(|_| ()),
        "send_push" => connection
            .send_push(
                &json_bytes(args.get("message_id")),
                &json_bytes(args.get("body")),
                &json_headers(args.get("headers")),
            )
            .map(|_| ()),
        "send_prepared_push" => {
            let prepared = connection.prepare_push(
                &json_bytes(args.get("message_id")),
                &json_bytes(args.get("body")),
                &json_headers(args.get("headers")),
            );
            connection.send_prepared_push(&prepared).map(|_| ())
        }
        "send_ack" => {
            let ids: Vec<u64> = args["delivery_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap())
                .collect();
            connection.send_ack(&ids)
        }
        "send_ping" => connection.send_ping(&json_bytes(args.get("payload"))),
        "send_settings" => {
            let pairs: Vec<(u64, u64)> = args["settings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap()))
                .collect();
            connection.send_settings(&pairs)
        }
        "send_goaway" => connection.send_goaway(
            code(args, "code", "NO_ERROR"),
            u(args, "reconnect_after_ms", 0),
            s(args, "alternate_endpoint"),
            s(args, "message"),
        ),
        "send_cancel" => {
            connection.send_cancel(u(args, "stream_id", 0));
            Ok(())
        }
        "send_dictionary" => {
            assert_eq!(u(args, "dict_id", 0), 7);
            connection.send_dictionary(&dictionary())
        }
        "send_dictionary_chunk" => {
            assert_eq!(u(args, "dict_id", 0), 7);
            connection
                .send_dictionary_chunk(
                    &dictionary(),
                    u(args, "offset", 0) as usize,
                    args.get("max_chunk_bytes")
                        .and_then(Value::as_u64)
                        .map(|n| n as usize),
                )
                .map(|_| ())
        }
        other => panic!("unknown scripted action {other}"),
    }
}

/// Frames of a byte string: (type, flags, payload).
pub fn frames(data: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let first = data[offset];
        let (length, start) = mmtp::varint::decode_varint(data, offset + 1).unwrap();
        let end = start + length as usize;
        out.push((first >> 4, first & 15, data[start..end].to_vec()));
        offset = end;
    }
    out
}

/// ERROR frames' (stream id, code, retry) — their message text is for logs.
pub fn error_fields(payload: &[u8]) -> (u64, u64, u64) {
    let (stream, o) = mmtp::varint::decode_varint(payload, 0).unwrap();
    let (code, o) = mmtp::varint::decode_varint(payload, o).unwrap();
    let (retry, _) = mmtp::varint::decode_varint(payload, o).unwrap();
    (stream, code, retry)
}

/// Compare two outputs frame by frame; ERROR frames by stream, code and retry.
pub fn same_output(ours: &[u8], theirs: &[u8]) -> bool {
    let (a, b) = (frames(ours), frames(theirs));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            if x.0 == 0xA && y.0 == 0xA {
                error_fields(&x.2) == error_fields(&y.2)
            } else {
                x == y
            }
        })
}

// A small SHA-256 (FIPS 180-4) for the DictionaryReceived events.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for i in 0..8 {
            h[i] = h[i].wrapping_add(v[i]);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

/// Replay one conversation (spec section 18.5): every send must produce the
/// vector's bytes exactly, every received hex the listed events, every auto
/// reply the listed bytes and events. Returns how many checks ran.
pub fn replay_conversation(spec: &Value) -> usize {
    let name = spec["name"].as_str().unwrap_or("?").to_owned();
    let mut client = connection(
        Role::Client,
        limits_from(spec.get("client_limits")),
        &spec["client_dictionaries"],
        spec.get("client_options"),
    );
    let mut server = connection(
        Role::Server,
        limits_from(spec.get("server_limits")),
        &spec["server_dictionaries"],
        spec.get("server_options"),
    );
    let mut checks = 0;
    for (index, step) in spec["steps"].as_array().unwrap().iter().enumerate() {
        let actor_name = step["actor"].as_str().unwrap();
        let (actor, peer) = if actor_name == "client" {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        let action = step["action"].as_str().unwrap();
        let at = format!("{name}: step {index} ({actor_name} {action})");
        let result = perform(actor, action, &step["args"]);
        if step.get("local_error").is_some() {
            assert!(result.is_err(), "{at}: expected a local error");
            checks += 1;
            continue;
        }
        result.unwrap_or_else(|e| panic!("{at}: {e}"));
        let produced = actor.data_to_send();
        assert_eq!(hex(&produced), step["hex"].as_str().unwrap(), "{at}: bytes");
        let mut events = Vec::new();
        peer.receive(&unhex(step["hex"].as_str().unwrap()), &mut events)
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(events_json(&events), step["events"], "{at}: events");
        let reply = peer.data_to_send();
        assert_eq!(
            hex(&reply),
            step.get("auto_reply_hex")
                .and_then(Value::as_str)
                .unwrap_or(""),
            "{at}: auto reply"
        );
        if !reply.is_empty() {
            let mut echoed = Vec::new();
            actor.receive(&reply, &mut echoed).unwrap();
            assert_eq!(
                events_json(&echoed),
                step["auto_reply_events"],
                "{at}: auto reply events"
            );
        }
        checks += 1;
    }
    checks
}
