//! Native load generators for `stress/compare`: they must cost far less CPU than
//! the servers they measure (one thread, mio, rustls, no certificate checks).
//!
//! ```text
//! loadgen mmtp-hold  --port P --ids FILE [--source IP] [--concurrency 128] [--dictionary F]
//! loadgen mmtp-churn --port P --ids FILE --seconds S --workers W --mode full|resumed
//! loadgen mmtp-rpc   --port P --ids FILE --calls N --op OP --body FILE
//! loadgen http-rpc   --port P --calls N --path /rpc/OP --body FILE
//! loadgen mqtt-hold  --port P --ids FILE [--topics T1,T2] [--version 4|5] [--keepalive S]
//! loadgen mqtt-churn --port P --seconds S --workers W --mode full|resumed [--version 4|5]
//! loadgen mqtt-pub   --port P --ids FILE --topic TEMPLATE [--version 4|5]
//! ```
//! MMTP ids files hold `device_id token_hex` lines; MQTT ones `client_id username
//! password_hex` (`-` for none); `{id}` in a topic is the client id. hold and pub
//! take commands on stdin (see `drive::hold`, `mqtt_pub`); every answer is a JSON line.
//! `--dictionary F` (MMTP): the devices hold that `.mmtpdict` and name it in HELLO, as
//! the SDK does with its packaged dictionary.

mod drive;
mod http;
mod link;
mod mmtp_dev;
mod mqtt;
mod mqtt_pub;
mod net;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use drive::{churn, hold, HoldOptions};
use link::Links;
use mmtp_dev::MmtpFactory;
use mqtt::MqttFactory;
use net::{client_config, read_table, say, unhex};

struct Args(HashMap<String, String>);

impl Args {
    fn parse(items: &[String]) -> Args {
        let mut map = HashMap::new();
        let mut it = items.iter();
        while let Some(key) = it.next() {
            let key = key
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("unexpected {key}"));
            let value = it.next().unwrap_or_else(|| panic!("--{key} needs a value"));
            map.insert(key.to_owned(), value.clone());
        }
        Args(map)
    }
    fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("--{key} is required"))
    }
    fn or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.0.get(key).map_or(default, String::as_str)
    }
    fn num<T: std::str::FromStr>(&self, key: &str, default: &str) -> T {
        self.or(key, default)
            .parse()
            .unwrap_or_else(|_| panic!("--{key}: not a number"))
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let Some(command) = argv.get(1) else {
        eprintln!("usage: see the module doc of native/loadgen/src/main.rs");
        std::process::exit(2);
    };
    let args = Args::parse(&argv[2..]);
    let source: IpAddr = args.or("source", "127.0.0.1").parse().expect("--source");
    let port: u16 = args.num("port", "0");
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let version: u8 = args.num("version", "4");
    let resume = args.or("mode", "full") == "resumed";
    let workers: usize = args.num("workers", "16");
    let seconds: f64 = args.num("seconds", "10");
    match command.as_str() {
        "mmtp-hold" | "mmtp-churn" | "mmtp-rpc" => {
            let ids = read_table(args.get("ids"))
                .into_iter()
                .map(|f| (f[0].clone(), unhex(&f[1])))
                .collect::<Vec<_>>();
            let mut factory = MmtpFactory::new(ids);
            if let Some(path) = args.0.get("dictionary") {
                factory = factory.with_dictionary(&std::fs::read(path).expect("--dictionary"));
            }
            if command == "mmtp-hold" {
                let count = factory_len(args.get("ids"));
                let links = Links::new(source, server, count);
                let options = HoldOptions {
                    count,
                    concurrency: args.num("concurrency", "128"),
                    ping: None,
                };
                hold(links, client_config(b"mmtp/1", false), factory, options);
            } else if command == "mmtp-churn" {
                let configs = (0..workers)
                    .map(|_| client_config(b"mmtp/1", resume))
                    .collect();
                churn(
                    Links::new(source, server, workers),
                    configs,
                    factory,
                    seconds,
                    resume,
                );
            } else {
                let body = std::fs::read(args.get("body")).expect("--body");
                let took = mmtp_dev::rpc(
                    Links::new(source, server, 1),
                    client_config(b"mmtp/1", false),
                    factory,
                    args.num("calls", "1000"),
                    args.get("op"),
                    &body,
                );
                say(&format!("{{\"us\": {took:?}}}"));
            }
        }
        "http-rpc" => {
            let body = std::fs::read(args.get("body")).expect("--body");
            let took = http::rpc(server, args.get("path"), args.num("calls", "1000"), &body);
            say(&format!("{{\"us\": {took:?}}}"));
        }
        "mqtt-hold" | "mqtt-churn" => {
            let clients: Vec<(String, Vec<u8>, Vec<u8>)> = match args.0.get("ids") {
                Some(path) => read_table(path)
                    .into_iter()
                    .map(|f| {
                        let user = if f[1] == "-" {
                            Vec::new()
                        } else {
                            f[1].clone().into_bytes()
                        };
                        (f[0].clone(), user, unhex(&f[2]))
                    })
                    .collect(),
                None => (0..workers)
                    .map(|w| {
                        (
                            format!("churn-{}-{w}", std::process::id()),
                            Vec::new(),
                            Vec::new(),
                        )
                    })
                    .collect(),
            };
            let count = clients.len();
            let keepalive_s: u16 = args.num("keepalive", "0");
            let factory = MqttFactory {
                version,
                keepalive_s,
                clients,
                topics: args
                    .or("topics", "")
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
            };
            let alpn = args.or("alpn", "").as_bytes().to_vec();
            if command == "mqtt-hold" {
                let options = HoldOptions {
                    count,
                    concurrency: args.num("concurrency", "128"),
                    ping: (keepalive_s > 0).then(|| {
                        (
                            Duration::from_secs(u64::from(keepalive_s) / 2),
                            mqtt::PINGREQ.to_vec(),
                        )
                    }),
                };
                hold(
                    Links::new(source, server, count),
                    client_config(&alpn, false),
                    factory,
                    options,
                );
            } else {
                let configs = (0..workers).map(|_| client_config(&alpn, resume)).collect();
                churn(
                    Links::new(source, server, workers),
                    configs,
                    factory,
                    seconds,
                    resume,
                );
            }
        }
        "mqtt-pub" => {
            let template = args.get("topic");
            let topics = read_table(args.get("ids"))
                .into_iter()
                .map(|f| template.replace("{id}", &f[0]))
                .collect();
            let alpn = args.or("alpn", "").as_bytes().to_vec();
            mqtt_pub::run(
                Links::new(source, server, 1),
                client_config(&alpn, false),
                version,
                topics,
            );
        }
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(2);
        }
    }
}

fn factory_len(path: &str) -> usize {
    read_table(path).len()
}
