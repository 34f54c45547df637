//! Property tests: round trips of the codecs, and a receive path that never
//! panics whatever it is fed.

mod common;

use std::sync::Arc;

use common::*;
use mmtp::hello::{decode_hello, encode_hello};
use mmtp::hpack::{Decoder, Encoder};
use mmtp::varint::{decode_varint, encode_varint, VarintError, MAX_VARINT};
use mmtp::{
    Accept, BodyCodec, Connection, Event, Headers, Hello, Limits, Options, Presets, Role, State,
};
use proptest::prelude::*;
use serde_json::Value;

fn header_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "trace-id",
            "ts",
            "sign",
            "server-time",
            "locale",
            "content-type",
            "priority",
            "cookie",
            "x-city",
            "user-agent",
            "etag",
            ":op",
        ])
        .prop_map(String::from),
        "[a-z-]{1,12}",
        "\\PC{1,6}",
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "",
            "zh-CN",
            "application/json",
            "high",
            "1764000000123",
            "007"
        ])
        .prop_map(String::from),
        "[0-9a-f]{2,40}",
        "[0-9]{1,17}",
        "\\PC{0,30}",
        "v{100,900}",
    ];
    prop::collection::vec((name, value), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn varints_round_trip(value in 0..=MAX_VARINT) {
        let mut out = Vec::new();
        encode_varint(&mut out, value);
        prop_assert_eq!(decode_varint(&out, 0).unwrap(), (value, out.len()));
        prop_assert_eq!(out.len(), mmtp::varint::varint_size(value));
    }

    #[test]
    fn any_varint_bytes_decode_to_their_only_encoding(bytes in prop::collection::vec(any::<u8>(), 0..12)) {
        match decode_varint(&bytes, 0) {
            Ok((value, used)) => {
                let mut again = Vec::new();
                encode_varint(&mut again, value);
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
            Err(VarintError::NeedMoreData) => prop_assert!(bytes.len() < 8),
            Err(VarintError::Invalid(e)) => prop_assert_eq!(e.code, mmtp::ErrorCode::VarintError),
        }
    }

    #[test]
    fn huffman_round_trips(raw in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut coded = Vec::new();
        mmtp::huffman::encode(&mut coded, &raw);
        prop_assert_eq!(coded.len(), mmtp::huffman::encoded_len(&raw));
        let mut back = Vec::new();
        mmtp::huffman::decode(&mut back, &coded).unwrap();
        prop_assert_eq!(back, raw);
    }

    #[test]
    fn frames_round_trip(frame_type in 0u8..13, payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let frame_type = mmtp::FrameType::from_u8(frame_type).unwrap();
        let mut out = Vec::new();
        mmtp::frames::encode_frame(&mut out, frame_type, 0, &payload);
        let parsed = frames(&out);
        prop_assert_eq!(parsed, vec![(frame_type as u8, 0, payload)]);
    }

    /// An encoder and a decoder stay in step over a sequence of blocks and
    /// table size changes, with presets; decoded lists equal the input.
    #[test]
    fn hpack_round_trips(
        preset in 0u64..2,
        blocks in prop::collection::vec((header_strategy(), prop::option::of(prop::sample::select(vec![256u64, 4096, 8192, 0]))), 1..8),
    ) {
        let table = Presets::builtin().get(preset).unwrap().clone();
        let mut encoder = Encoder::new(table.clone(), 8192);
        let mut decoder = Decoder::new(table, 8192);
        for (headers, resize) in blocks {
            if let Some(size) = resize {
                encoder.use_peer_table_size(size);
            }
            let headers: Vec<(String, String)> = headers.into_iter().filter(|(n, _)| !n.is_empty()).collect();
            if headers.is_empty() {
                continue;
            }
            let mut block = Vec::new();
            encoder.encode_all(&mut block, &headers);
            let mut decoded = Headers::new();
            decoder.decode(&block, u64::MAX, &mut decoded).unwrap();
            prop_assert_eq!(decoded.to_vec(), headers);
            prop_assert_eq!(encoder.table_entries(), decoder.table_entries());
        }
    }

    #[test]
    fn hello_tagged_fields_round_trip(
        device_id in "\\PC{1,40}", app_id in "\\PC{0,20}", token in prop::collection::vec(any::<u8>(), 0..64),
        dictionaries in prop::collection::vec(1u64..1000, 0..4), preset_id in 0u64..5,
        numbers in prop::collection::vec(0u64..=MAX_VARINT, 4),
    ) {
        let hello = Hello {
            device_id, app_id, token, dictionaries, preset_id,
            heartbeat_s: numbers[0], client_time_ms: numbers[1],
            header_table_size: 4096 + numbers[2] % 100000, max_frame_size: 1024 + numbers[3] % 1_000_000,
            ..Hello::default()
        };
        let mut payload = Vec::new();
        encode_hello(&mut payload, &hello);
        let limits = Limits { max_identity_length: 1000, ..Limits::default() };
        prop_assert_eq!(decode_hello(&payload, &limits).unwrap(), hello);
    }

    /// Requests through two connections: the server decodes what the client
    /// sent (typed fields move after the HPACK ones, in order).
    #[test]
    fn requests_round_trip(headers in header_strategy(), body in prop::collection::vec(any::<u8>(), 0..400), typed in any::<bool>()) {
        let headers: Vec<(String, String)> = headers.into_iter().filter(|(n, _)| !n.is_empty()).collect();
        let (mut client, mut server) = pair(typed);
        let stream = client.send_request("op.x", &body, &headers).unwrap();
        let mut events = Vec::new();
        server.receive(&client.data_to_send(), &mut events).unwrap();
        let Event::RequestReceived { stream_id, op, headers: got, body: got_body } = &events[0] else {
            panic!("{events:?}")
        };
        prop_assert_eq!((*stream_id, op.as_str(), got_body), (stream, "op.x", &body));
        let mut sent = headers.clone();
        let mut received = got.to_vec();
        if typed {
            sent.sort();
            received.sort();
        }
        prop_assert_eq!(received, sent);
    }

    /// The receive path faces the network: any bytes, in any chunks, in any
    /// state, end in events or a protocol error, never a panic, and the
    /// connection buffers no more than one frame.
    #[test]
    fn receive_never_panics_on_random_bytes(
        prefix in 0usize..6,
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..6),
    ) {
        let mut receiver = receiver_in(prefix);
        feed(&mut receiver, &chunks);
    }

    #[test]
    fn receive_never_panics_on_mutated_frames(
        prefix in 1usize..6,
        seed in 0usize..SEEDS,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
        split in any::<prop::sample::Index>(),
    ) {
        let mut data = seed_bytes(prefix, seed);
        for (at, byte, kind) in edits {
            if data.is_empty() { data.push(byte); continue; }
            let i = at.index(data.len());
            match kind {
                0 => data[i] ^= byte | 1,
                1 => data.insert(i, byte),
                2 => { data.remove(i); }
                _ => data.truncate(i),
            }
        }
        let cut = split.index(data.len() + 1);
        let mut receiver = receiver_in(prefix);
        feed(&mut receiver, &[data[..cut].to_vec(), data[cut..].to_vec()]);
    }
}

fn feed(receiver: &mut Connection, chunks: &[Vec<u8>]) {
    for chunk in chunks {
        let mut events = Vec::new();
        match receiver.receive(chunk, &mut events) {
            Ok(()) => {
                assert!(receiver.buffered_input() as u64 <= receiver.limits().max_frame_size + 9)
            }
            Err(error) => {
                assert!(events.is_empty());
                assert_eq!(receiver.state(), State::Closed, "{error}");
                return;
            }
        }
        receiver.data_to_send();
    }
}

fn pair(typed: bool) -> (Connection, Connection) {
    let codec = Arc::new(BodyCodec::new(vec![dictionary()]).unwrap());
    let presets = Arc::new(Presets::builtin());
    let options = Options {
        send_typed_headers: typed,
        ..Options::default()
    };
    let mut client = Connection::with_options(
        Role::Client,
        Limits::default(),
        codec.clone(),
        presets.clone(),
        options,
    );
    let mut server = Connection::new(Role::Server, Limits::default(), codec, presets);
    let hello = Hello {
        device_id: "d".into(),
        preset_id: 1,
        dictionaries: vec![7],
        client_time_ms: 1_764_000_000_000,
        ..Hello::default()
    };
    client.send_hello(&hello, 0).unwrap();
    let mut events = Vec::new();
    server.receive(&client.data_to_send(), &mut events).unwrap();
    server
        .accept(&Accept {
            server_time_ms: 1_764_000_000_500,
            ..Accept::default()
        })
        .unwrap();
    client.receive(&server.data_to_send(), &mut events).unwrap();
    (client, server)
}

/// 0: fresh server; 1: server open; 2: client hello-sent; 3: client open;
/// 4: client open with stream 1; 5: server open with a pending stream.
fn receiver_in(prefix: usize) -> Connection {
    let codec = Arc::new(BodyCodec::default());
    let presets = Arc::new(Presets::builtin());
    let mut server = Connection::new(
        Role::Server,
        Limits::default(),
        codec.clone(),
        presets.clone(),
    );
    if prefix == 0 {
        return server;
    }
    let mut client = Connection::new(Role::Client, Limits::default(), codec, presets);
    let hello = Hello {
        device_id: "d".into(),
        preset_id: 1,
        client_time_ms: 5,
        ..Hello::default()
    };
    client.send_hello(&hello, 0).unwrap();
    let hello = client.data_to_send();
    if prefix == 2 {
        return client;
    }
    let mut events = Vec::new();
    server.receive(&hello, &mut events).unwrap();
    server.accept(&Accept::default()).unwrap();
    client.receive(&server.data_to_send(), &mut events).unwrap();
    match prefix {
        1 => server,
        3 => client,
        4 => {
            client
                .send_request("x", b"", &[("trace-id", "ab")])
                .unwrap();
            client
        }
        _ => {
            client
                .send_request("x", b"{}", &[("locale", "zh-CN")])
                .unwrap();
            server.receive(&client.data_to_send(), &mut events).unwrap();
            server
        }
    }
}

const SEEDS: usize = 8;

/// Valid frames a peer could send a receiver in `prefix`.
fn seed_bytes(prefix: usize, seed: usize) -> Vec<u8> {
    let differential = seeds();
    let list = &differential[prefix.min(differential.len() - 1)];
    list[seed % list.len()].clone()
}

fn seeds() -> Vec<Vec<Vec<u8>>> {
    use std::sync::OnceLock;
    static SEEDS: OnceLock<Vec<Vec<Vec<u8>>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            // Frames taken from the spec's conversation vectors, by direction.
            let vectors = load_json(vectors_dir().join("conversations.json"));
            let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
            for spec in vectors["conversations"].as_array().unwrap() {
                for step in spec["steps"].as_array().unwrap() {
                    let Some(data) = step.get("hex").and_then(Value::as_str) else {
                        continue;
                    };
                    if step["actor"] == "client" {
                        to_server.push(unhex(data))
                    } else {
                        to_client.push(unhex(data))
                    }
                }
            }
            vec![
                to_server.clone(),
                to_server.clone(),
                to_client.clone(),
                to_client.clone(),
                to_client,
                to_server,
            ]
        })
        .clone()
}
