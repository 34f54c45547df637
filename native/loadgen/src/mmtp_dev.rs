//! MMTP devices: HELLO with a token (or a resume ticket), ACK every PUSH at once
//! (one ACK frame per read, as the SDK does), and sequential RPC calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Events;

use crate::drive::Factory;
use crate::link::{Links, Proto};
use crate::net::{monotonic_s, Sink};

pub struct MmtpDev {
    wire: mmtp::Connection,
    events: Vec<mmtp::Event>,
    pub ticket: Vec<u8>,
    pub responses: u64,
    pub stream_errors: u64,
}

impl Proto for MmtpDev {
    fn receive(&mut self, data: &[u8], out: &mut Vec<u8>, sink: &mut Sink) -> Result<bool, ()> {
        self.events.clear();
        self.wire.receive(data, &mut self.events).map_err(|_| ())?;
        let mut ready = false;
        let mut acks = Vec::new();
        let mut acked_at = 0.0;
        for event in self.events.drain(..) {
            match event {
                mmtp::Event::HelloAccepted(ack) => {
                    self.ticket = ack.resume_ticket;
                    ready = true;
                }
                mmtp::Event::PushReceived {
                    delivery_id, body, ..
                } => {
                    if acks.is_empty() {
                        acked_at = monotonic_s();
                    }
                    acks.push(delivery_id);
                    sink.record(&body, acked_at);
                }
                mmtp::Event::ResponseReceived { .. } => self.responses += 1,
                mmtp::Event::StreamErrorReceived { .. } => {
                    self.responses += 1;
                    self.stream_errors += 1;
                }
                mmtp::Event::ConnectionErrorReceived { code, message, .. } => {
                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                        eprintln!("mmtp error {code}: {message}");
                    }
                    return Err(());
                }
                _ => {}
            }
        }
        if !acks.is_empty() {
            self.wire.send_ack(&acks).map_err(|_| ())?;
        }
        self.wire.take_output(out);
        Ok(ready)
    }
}

/// Devices from a file of `device_id token_hex` lines (tokens minted by the driver).
pub struct MmtpFactory {
    ids: Vec<(String, Vec<u8>)>,
    codec: Arc<mmtp::BodyCodec>,
    presets: Arc<mmtp::Presets>,
    /// Ids of the dictionaries the devices hold and name in HELLO (as the SDK does).
    dictionaries: Vec<u64>,
}

impl MmtpFactory {
    pub fn new(ids: Vec<(String, Vec<u8>)>) -> Self {
        MmtpFactory {
            ids,
            codec: Arc::new(mmtp::BodyCodec::default()),
            presets: Arc::new(mmtp::Presets::builtin()),
            dictionaries: Vec::new(),
        }
    }

    /// Devices that hold this `.mmtpdict` (the SDK holds the packaged one): the
    /// server may compress bodies with it, and the devices decode them.
    pub fn with_dictionary(mut self, file: &[u8]) -> Self {
        let dictionary = mmtp::Dictionary::from_file_bytes(file).expect("--dictionary");
        self.dictionaries.push(u64::from(dictionary.dict_id));
        self.codec
            .add_dictionary(dictionary)
            .expect("--dictionary: zstd cannot load it");
        self
    }
}

impl Factory<MmtpDev> for MmtpFactory {
    fn make(&mut self, index: usize, ticket: &[u8]) -> (MmtpDev, Vec<u8>) {
        let (device_id, token) = &self.ids[index % self.ids.len()];
        let mut wire = mmtp::Connection::new(
            mmtp::Role::Client,
            mmtp::Limits::default(),
            self.codec.clone(),
            self.presets.clone(),
        );
        let hello = mmtp::Hello {
            device_id: device_id.clone(),
            app_id: "bench".into(),
            // A device with a resume ticket shows it instead of its token.
            token: if ticket.is_empty() {
                token.clone()
            } else {
                Vec::new()
            },
            resume_ticket: ticket.to_vec(),
            preset_id: 1,
            dictionaries: self.dictionaries.clone(),
            app_version: "8.12.3".into(),
            platform: "android".into(),
            client_time_ms: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()) as u64,
            ..mmtp::Hello::default()
        };
        wire.send_hello(&hello, 0).expect("HELLO");
        let mut first = Vec::new();
        wire.take_output(&mut first);
        let dev = MmtpDev {
            wire,
            events: Vec::new(),
            ticket: Vec::new(),
            responses: 0,
            stream_errors: 0,
        };
        (dev, first)
    }

    fn ticket(&self, proto: &MmtpDev) -> Vec<u8> {
        proto.ticket.clone()
    }
}

/// The app headers of a typical call (`stress/gateway_proc.rpc_headers`).
pub fn rpc_headers(i: u64) -> Vec<(String, String)> {
    vec![
        ("trace-id".into(), format!("{i:032x}")),
        (
            "ts".into(),
            format!(
                "{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
            ),
        ),
        ("sign".into(), format!("{:064x}", i * 7919)),
        ("locale".into(), "zh-CN".into()),
        ("biz-scene".into(), "home".into()),
        ("content-type".into(), "application/json".into()),
        ("app-scene".into(), "bill-list".into()),
    ]
}

/// One device, `calls` RPCs one after the other; prints each call's µs as JSON.
pub fn rpc(
    mut links: Links<MmtpDev>,
    config: Arc<rustls::ClientConfig>,
    mut factory: MmtpFactory,
    calls: u64,
    op: &str,
    body: &[u8],
) -> Vec<f64> {
    let (dev, first) = factory.make(0, &[]);
    let key = links.open(&config, dev, &first, 0).expect("connect");
    let mut events = Events::with_capacity(64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !links.links[key].ready {
        links
            .poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for _ in events.iter() {
            links.service(key).expect("device refused");
        }
        assert!(Instant::now() < deadline, "no HELLO_ACK in 30 s");
    }
    let mut took_us = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let started = Instant::now();
        let link = &mut links.links[key];
        let before = link.proto.responses;
        link.proto
            .wire
            .send_request(op, body, &rpc_headers(i))
            .expect("REQUEST");
        let mut out = Vec::new();
        link.proto.wire.take_output(&mut out);
        links.send(key, &out).expect("send");
        while links.links[key].proto.responses == before {
            links
                .poll
                .poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            if events.is_empty() {
                panic!("no RESPONSE in 10 s");
            }
            links.service(key).expect("connection lost");
        }
        took_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    assert_eq!(links.links[key].proto.stream_errors, 0, "calls failed");
    took_us
}
