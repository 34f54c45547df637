//! µs per body encode of small push bodies (the `stress.compare` unicast body,
//! ~88 bytes of JSON), with and without the packaged dictionary, with every
//! body tried (`set_min_saving(0.0)`) and with the default yield rule (size
//! classes that save under 1 % go raw untried, one body in 32 still tried).
//!
//!     cargo run --release -p mmtp --example small_bodies [-- --bodies 200000]

use std::time::Instant;

use mmtp::{BodyCodec, Dictionary};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bodies = args
        .iter()
        .position(|a| a == "--bodies")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(200_000);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let raw = std::fs::read(root.join("channel/dictionaries/default-1.mmtpdict")).unwrap();
    let dictionary = Dictionary::from_file_bytes(&raw).unwrap();
    println!("{bodies} bodies each; us/encode, bodies compressed, wire bytes / raw bytes");
    println!(
        "{:<12} {:<10} {:>10} {:>12} {:>10}",
        "dictionary", "rule", "us/encode", "compressed", "wire/raw"
    );
    for dict_id in [0u32, dictionary.dict_id] {
        for (rule, min_saving) in [
            ("try all", 0.0),
            ("default", mmtp::body::DEFAULT_MIN_SAVING),
        ] {
            let codec = BodyCodec::new(vec![dictionary.clone()]).unwrap();
            codec.set_min_saving(min_saving);
            let texts: Vec<String> = (0..bodies)
                .map(|i| {
                    format!(
                        "{{\"seq\":{},\"t\":{:.6},\"kind\":\"order.shipped\",\"text\":\"Your parcel is on its way\"}}",
                        1_000_000 + i * 7,
                        1234.5 + i as f64 * 0.0001
                    )
                })
                .collect();
            let (mut compressed, mut wire, mut raw_bytes) = (0u64, 0u64, 0u64);
            let started = Instant::now();
            for text in &texts {
                let encoded = codec.encode(text.as_bytes(), dict_id).unwrap();
                compressed += encoded.compressed() as u64;
                wire += encoded.data().len() as u64;
                raw_bytes += text.len() as u64;
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / bodies as f64;
            println!(
                "{:<12} {:<10} {:>10.3} {:>12} {:>10.4}",
                if dict_id == 0 {
                    "none".to_string()
                } else {
                    dict_id.to_string()
                },
                rule,
                us,
                compressed,
                wire as f64 / raw_bytes as f64
            );
        }
    }
}
