//! This crate against the Python reference on random inputs: the data in
//! `tests/data/differential.json` was made by `generate_differential.py`
//! with `channel/wire/` (see that script for what each part holds).

mod common;

use std::sync::Arc;

use common::*;
use mmtp::hpack::{encode_context_free, Decoder, Encoder};
use mmtp::{Headers, Role};
use serde_json::Value;

fn data() -> Value {
    load_json(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/differential.json"),
    )
}

fn preset(id: u64) -> Arc<mmtp::PresetTable> {
    presets().get(id).unwrap().clone()
}

#[test]
fn random_conversations_match_the_reference() {
    let data = data();
    let mut checks = 0;
    for spec in data["conversations"].as_array().unwrap() {
        checks += replay_conversation(spec);
    }
    assert!(checks > 500, "{checks}");
}

#[test]
fn hpack_encoder_matches_the_reference() {
    let data = data();
    let mut blocks = 0;
    for (index, case) in data["hpack"].as_array().unwrap().iter().enumerate() {
        let preset = preset(case["preset"].as_u64().unwrap());
        let mut encoder = Encoder::new(preset.clone(), case["cap"].as_u64().unwrap());
        let mut decoder = Decoder::new(preset, 1 << 20);
        for (step_index, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let at = format!("hpack case {index} step {step_index}");
            if let Some(size) = step.get("peer_table_size") {
                encoder.use_peer_table_size(size.as_u64().unwrap());
                continue;
            }
            let mut block = Vec::new();
            let headers = if let Some(fields) = step.get("context_free") {
                let fields = json_headers(Some(fields));
                encoder.take_size_update(&mut block);
                encode_context_free(&mut block, &fields);
                fields
            } else {
                let fields = json_headers(step.get("headers"));
                if !fields.is_empty() {
                    encoder.encode_all(&mut block, &fields);
                }
                fields
            };
            assert_eq!(hex(&block), step["hex"].as_str().unwrap(), "{at}");
            if !block.is_empty() {
                let mut decoded = Headers::new();
                decoder.decode(&block, 1 << 20, &mut decoded).unwrap();
                assert_eq!(decoded.to_vec(), headers, "{at}: decoded");
            }
            blocks += 1;
        }
        let table: Vec<(String, String)> = encoder
            .table_entries()
            .iter()
            .map(|(n, v)| (hex(n), hex(v)))
            .collect();
        let expected: Vec<(String, String)> = case["table"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
            .collect();
        assert_eq!(table, expected, "hpack case {index}: table");
        if !encoder.owes_size_update() {
            assert_eq!(
                encoder.table_entries(),
                decoder.table_entries(),
                "hpack case {index}"
            );
        }
    }
    assert!(blocks > 1000, "{blocks}");
}

#[test]
fn hpack_decoder_matches_the_reference_on_mutated_blocks() {
    let data = data();
    let (mut ok, mut errors) = (0, 0);
    for (index, case) in data["hpack_decode"].as_array().unwrap().iter().enumerate() {
        let mut decoder = Decoder::new(
            preset(case["preset"].as_u64().unwrap()),
            case["max_allowed"].as_u64().unwrap(),
        );
        let max_list = case["max_list"].as_u64().unwrap();
        for block in case["blocks"].as_array().unwrap() {
            let raw = unhex(block["hex"].as_str().unwrap());
            let mut headers = Headers::new();
            let result = decoder.decode(&raw, max_list, &mut headers);
            match &block["result"] {
                Value::Object(error) => {
                    let error_name = error["error"].as_str().unwrap();
                    let got = result.expect_err(&format!("case {index}: expected {error_name}"));
                    assert_eq!(got.code.name(), error_name, "case {index} {}", block["hex"]);
                    errors += 1;
                }
                expected => {
                    result.unwrap_or_else(|e| panic!("case {index} {}: {e}", block["hex"]));
                    assert_eq!(
                        &serde_json::to_value(headers.to_vec()).unwrap(),
                        expected,
                        "case {index}"
                    );
                    ok += 1;
                }
            }
        }
    }
    assert!(ok > 300 && errors > 300, "{ok} {errors}");
}

#[test]
fn receive_path_matches_the_reference_on_mutated_frames() {
    let data = data();
    let prefixes = &data["prefixes"];
    let (mut chunks, mut errors) = (0, 0);
    for (index, case) in data["receive"].as_array().unwrap().iter().enumerate() {
        let role = case["role"].as_str().unwrap();
        let prefix = case["prefix"].as_str().unwrap();
        let mut receiver = prefix_receiver(role, prefix, prefixes);
        for chunk in case["chunks"].as_array().unwrap() {
            let input = unhex(chunk["hex"].as_str().unwrap());
            let at = format!("receive case {index} ({role} {prefix}) {}", chunk["hex"]);
            let mut events = Vec::new();
            let result = receiver.receive(&input, &mut events);
            match chunk.get("error") {
                Some(expected) => {
                    let error = result.expect_err(&at);
                    assert_eq!(
                        error.code.name(),
                        expected.as_str().unwrap(),
                        "{at}: {}",
                        error.message
                    );
                    assert!(events.is_empty(), "{at}");
                    errors += 1;
                }
                None => {
                    result.unwrap_or_else(|e| panic!("{at}: {e}"));
                    assert_eq!(events_json(&events), chunk["events"], "{at}");
                }
            }
            let output = receiver.data_to_send();
            let expected = unhex(chunk["output"].as_str().unwrap());
            assert!(
                same_output(&output, &expected),
                "{at}: output {} != {}",
                hex(&output),
                hex(&expected)
            );
            chunks += 1;
        }
    }
    assert!(chunks > 1500 && errors > 300, "{chunks} {errors}");
}

/// A receiver in one of `invalid.json`'s prefix states.
fn prefix_receiver(role: &str, prefix: &str, prefixes: &Value) -> mmtp::Connection {
    let none = Value::Array(vec![]);
    let mut server = connection(Role::Server, Default::default(), &none, None);
    let mut client = connection(Role::Client, Default::default(), &none, None);
    if prefix == "none" {
        return server;
    }
    let hello_args = if prefix == "after-app-hello" {
        &prefixes["app_hello_args"]
    } else {
        &prefixes["hello_args"]
    };
    perform(&mut client, "send_hello", hello_args).unwrap();
    let hello = client.data_to_send();
    let mut events = Vec::new();
    if prefix != "hello-sent" {
        server.receive(&hello, &mut events).unwrap();
        perform(&mut server, "accept", &prefixes["accept_args"]).unwrap();
        client.receive(&server.data_to_send(), &mut events).unwrap();
    }
    if prefix == "accepted-with-open-stream" {
        perform(
            &mut client,
            "send_request",
            &prefixes["open_stream_request"],
        )
        .unwrap();
        server.receive(&client.data_to_send(), &mut events).unwrap();
    }
    if role == "server" {
        server
    } else {
        client
    }
}
