//! µs per operation on a warm connection, and bytes per idle connection.
//!
//! The same operations as `stress/wire_native.py` runs on the Python
//! reference (which also runs this and prints both side by side):
//! preset 2 (`channel/presets/wallet-demo-2.json`) and dictionary 1
//! (`channel/dictionaries/default-1.mmtpdict`), as the gateway uses them.
//!
//!     cargo run --release -p mmtp --example bench [-- --iterations 20000]

use std::sync::Arc;
use std::time::Instant;

use mmtp::{Accept, BodyCodec, Connection, Dictionary, Event, Hello, Limits, Presets, Role};
use serde_json::{json, Value};

const EPOCH_MS: u64 = 1_764_000_000_000;
const OP: &str = "bill.list.query";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The 300-byte JSON body of `stress/frame_speed.py`.
fn request_body() -> Vec<u8> {
    json!({
        "userId": "2088031882206968",
        "assetTypes": ["BALANCE", "YUEBAO", "HUABEI"],
        "currency": "CNY",
        "extParams": {"chInfo": "ch_home", "spm": "a90.b856.c22", "sourceAppId": "20000056"},
        "page": {"size": 20, "cursor": "eyJvIjoyMH0"},
        "filter": {"from": "2026-11-01", "to": "2026-11-26", "types": ["TRANSFER", "PAY"]},
        "client": {"lat": "31.2304", "lng": "121.4737", "net": "4G"},
    })
    .to_string()
    .into_bytes()
}

const RESPONSE_BODY: &str = r#"{"code":"SUCCESS","data":{"balance":"2881.25","currency":"CNY","yuebao":{"amount":"66398.07","yesterdayProfit":"0.29"}}}"#;
const PUSH_BODY: &str = r#"{"type":"payment.received","title":"收款到账","amount":"128.50","currency":"CNY","payer":"小明","tradeNo":"2026112622001400000000000001"}"#;

/// `:op` + these 7: the request of `stress/frame_speed.py`.
fn request_headers(i: u64) -> Vec<(String, String)> {
    vec![
        ("trace-id".into(), format!("{i:032x}")),
        ("ts".into(), (EPOCH_MS + 37 * i).to_string()),
        ("sign".into(), format!("{:064x}", i * 7919)),
        ("locale".into(), "zh-CN".into()),
        ("biz-scene".into(), "home".into()),
        ("content-type".into(), "application/json".into()),
        ("app-scene".into(), "bill-list".into()),
    ]
}

fn shared() -> (Arc<BodyCodec>, Arc<Presets>) {
    let raw = std::fs::read(root().join("channel/dictionaries/default-1.mmtpdict")).unwrap();
    let codec = Arc::new(BodyCodec::new(vec![Dictionary::from_file_bytes(&raw).unwrap()]).unwrap());
    let text = std::fs::read_to_string(root().join("channel/presets/wallet-demo-2.json")).unwrap();
    let preset: Value = serde_json::from_str(&text).unwrap();
    let entries = preset["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_owned(),
                e[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut presets = Presets::builtin();
    presets.add(2, "wallet-demo", entries).unwrap();
    (codec, Arc::new(presets))
}

fn pair(codec: &Arc<BodyCodec>, presets: &Arc<Presets>) -> (Connection, Connection) {
    let mut client = Connection::new(
        Role::Client,
        Limits::default(),
        codec.clone(),
        presets.clone(),
    );
    let mut server = Connection::new(
        Role::Server,
        Limits::default(),
        codec.clone(),
        presets.clone(),
    );
    let hello = Hello {
        device_id: "bench".into(),
        preset_id: 2,
        dictionaries: vec![1],
        client_time_ms: EPOCH_MS,
        ..Hello::default()
    };
    client.send_hello(&hello, 0).unwrap();
    let mut events = Vec::new();
    server.receive(&client.data_to_send(), &mut events).unwrap();
    server
        .accept(&Accept {
            server_time_ms: EPOCH_MS,
            ..Accept::default()
        })
        .unwrap();
    client.receive(&server.data_to_send(), &mut events).unwrap();
    (client, server)
}

fn median_us(samples: &mut [u64]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2] as f64 / 1000.0
}

fn main() {
    let iterations: usize = std::env::args()
        .skip_while(|a| a != "--iterations")
        .nth(1)
        .map_or(20_000, |n| n.parse().unwrap());
    let (codec, presets) = shared();
    let (mut client, mut server) = pair(&codec, &presets);
    let body = request_body();
    let response_headers = [("content-type", "application/json")];
    let push_headers = [("priority", "high"), ("collapse-key", "balance")];
    let mut wire = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let (mut decode_request, mut encode_response, mut encode_push) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut prepared_push, mut decode_ack) = (Vec::new(), Vec::new());
    let prepared = server.prepare_push(b"bc-0000000000000001", PUSH_BODY.as_bytes(), &push_headers);
    let (mut request_bytes, mut response_bytes, mut push_bytes) = (0, 0, 0);
    for i in 0..(iterations + 500) as u64 {
        let warm = i >= 500;
        // Decode a REQUEST (8 headers, 300-byte body).
        client.send_request(OP, &body, &request_headers(i)).unwrap();
        wire.clear();
        client.take_output(&mut wire);
        request_bytes = wire.len();
        events.clear();
        let t0 = Instant::now();
        server.receive(&wire, &mut events).unwrap();
        let t1 = Instant::now();
        let Event::RequestReceived { stream_id, .. } = events[0] else {
            panic!()
        };
        // Encode a RESPONSE.
        let server_time = (EPOCH_MS + i).to_string();
        let headers = [response_headers[0], ("server-time", server_time.as_str())];
        let mut out = Vec::new();
        let t2 = Instant::now();
        server
            .send_response(stream_id, RESPONSE_BODY.as_bytes(), &headers, 0)
            .unwrap();
        server.take_output(&mut out);
        let t3 = Instant::now();
        response_bytes = out.len();
        events.clear();
        client.receive(&out, &mut events).unwrap();
        // Encode a PUSH.
        let message_id = format!("m-{i:016}");
        let mut out = Vec::new();
        let t4 = Instant::now();
        server
            .send_push(message_id.as_bytes(), PUSH_BODY.as_bytes(), &push_headers)
            .unwrap();
        server.take_output(&mut out);
        let t5 = Instant::now();
        push_bytes = out.len();
        // The same push, prepared once, for one more connection.
        let mut out2 = Vec::new();
        let t6 = Instant::now();
        server.send_prepared_push(&prepared).unwrap();
        server.take_output(&mut out2);
        let t7 = Instant::now();
        out.extend_from_slice(&out2);
        events.clear();
        client.receive(&out, &mut events).unwrap();
        // Decode an ACK of 16 ids (14 more pushes first, untimed); else ACK untimed.
        if i % 8 != 0 {
            let ids: Vec<u64> = server.unacked_deliveries().to_vec();
            client.send_ack(&ids).unwrap();
            let mut ack = Vec::new();
            client.take_output(&mut ack);
            events.clear();
            server.receive(&ack, &mut events).unwrap();
        } else {
            for _ in 0..14 {
                server
                    .send_push(b"m-extra", PUSH_BODY.as_bytes(), &push_headers)
                    .unwrap();
            }
            let mut out = Vec::new();
            server.take_output(&mut out);
            events.clear();
            client.receive(&out, &mut events).unwrap();
            let ids: Vec<u64> = server.unacked_deliveries().to_vec();
            assert_eq!(ids.len(), 16);
            client.send_ack(&ids).unwrap();
            let mut ack = Vec::new();
            client.take_output(&mut ack);
            events.clear();
            let t8 = Instant::now();
            server.receive(&ack, &mut events).unwrap();
            let t9 = Instant::now();
            if warm {
                decode_ack.push((t9 - t8).as_nanos() as u64);
            }
        }
        if warm {
            decode_request.push((t1 - t0).as_nanos() as u64);
            encode_response.push((t3 - t2).as_nanos() as u64);
            encode_push.push((t5 - t4).as_nanos() as u64);
            prepared_push.push((t7 - t6).as_nanos() as u64);
        }
    }
    let sizes = memory(&codec, &presets);
    let result = json!({
        "iterations": iterations,
        "us_p50": {
            "decode_request": median_us(&mut decode_request),
            "encode_response": median_us(&mut encode_response),
            "encode_push": median_us(&mut encode_push),
            "prepared_push_one_more_connection": median_us(&mut prepared_push),
            "decode_ack_16": median_us(&mut decode_ack),
        },
        "frame_bytes": {"request": request_bytes, "response": response_bytes, "push": push_bytes},
        "memory": sizes,
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Per idle connection after a handshake, a request/response and a push/ACK.
fn memory(codec: &Arc<BodyCodec>, presets: &Arc<Presets>) -> Value {
    const N: usize = 20_000;
    let mut servers = Vec::with_capacity(N);
    let mut clients = Vec::with_capacity(N);
    let before = rss_bytes();
    let mut events = Vec::new();
    for i in 0..N {
        let (mut client, mut server) = pair(codec, presets);
        client
            .send_request(OP, &request_body(), &request_headers(i as u64))
            .unwrap();
        events.clear();
        server.receive(&client.data_to_send(), &mut events).unwrap();
        server
            .send_response(
                1,
                RESPONSE_BODY.as_bytes(),
                &[("content-type", "application/json")],
                0,
            )
            .unwrap();
        client.receive(&server.data_to_send(), &mut events).unwrap();
        let id = server
            .send_push(
                b"m-1",
                PUSH_BODY.as_bytes(),
                &[("priority", "high"), ("collapse-key", "balance")],
            )
            .unwrap();
        client.receive(&server.data_to_send(), &mut events).unwrap();
        client.send_ack(&[id]).unwrap();
        server.receive(&client.data_to_send(), &mut events).unwrap();
        servers.push(server);
        clients.push(client);
    }
    let after = rss_bytes();
    let heap: usize = servers.iter().map(Connection::heap_bytes).sum();
    let rss_per_pair = (after - before) as f64 / N as f64;
    json!({
        "size_of_connection": std::mem::size_of::<Connection>(),
        "server_heap_bytes_per_idle_connection": heap as f64 / N as f64,
        "rss_bytes_per_idle_client_server_pair": rss_per_pair,
        "connections": N,
    })
}
