//! The spec's vectors (protocol_spec/vectors/, spec section 18), replayed on
//! this crate exactly as section 18.5 describes.

mod common;

use common::*;
use mmtp::varint::{decode_varint, encode_varint, VarintError};
use mmtp::{ErrorCode, Role, State};
use serde_json::Value;

#[test]
fn varint_vectors_both_directions() {
    let vectors = load_json(vectors_dir().join("varint.json"));
    let valid = vectors["valid"].as_array().unwrap();
    for case in valid {
        let value = case["value"].as_u64().unwrap();
        let raw = unhex(case["hex"].as_str().unwrap());
        let mut out = Vec::new();
        encode_varint(&mut out, value);
        assert_eq!(out, raw, "encode {value}");
        assert_eq!(
            decode_varint(&raw, 0).unwrap(),
            (value, raw.len()),
            "decode {value}"
        );
    }
    let invalid = vectors["invalid"].as_array().unwrap();
    for case in invalid {
        let raw = unhex(case["hex"].as_str().unwrap());
        match decode_varint(&raw, 0) {
            Err(VarintError::Invalid(error)) => {
                assert_eq!(error.code.name(), case["error"].as_str().unwrap())
            }
            other => panic!("{}: {other:?}", case["hex"]),
        }
    }
    assert!(valid.len() >= 10 && !invalid.is_empty());
}

#[test]
fn conversation_vectors() {
    let vectors = load_json(vectors_dir().join("conversations.json"));
    assert_eq!(
        vectors["meta"]["zstd_version"],
        serde_json::json!([1, 5, 7])
    );
    assert_eq!(
        zstd_safe::version_number(),
        10507,
        "the vectors' compressed bytes need libzstd 1.5.7"
    );
    let mut checks = 0;
    for spec in vectors["conversations"].as_array().unwrap() {
        checks += replay_conversation(spec);
    }
    assert_eq!(checks, 47);
}

/// A receiver brought into the state a prefix names (spec section 18.4).
fn receiver(role: &str, prefix: &str, prefixes: &Value) -> mmtp::Connection {
    let none = Value::Array(vec![]);
    let mut server = connection(Role::Server, Default::default(), &none, None);
    let mut client = connection(Role::Client, Default::default(), &none, None);
    let hello_args = if prefix == "after-app-hello" {
        &prefixes["app_hello_args"]
    } else {
        &prefixes["hello_args"]
    };
    perform(&mut client, "send_hello", hello_args).unwrap();
    let hello = client.data_to_send();
    let mut events = Vec::new();
    if role == "server" {
        if prefix == "after-hello" || prefix == "after-app-hello" {
            server.receive(&hello, &mut events).unwrap();
            perform(&mut server, "accept", &prefixes["accept_args"]).unwrap();
            server.data_to_send();
        }
        return server;
    }
    if prefix == "accepted" || prefix == "accepted-with-open-stream" {
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
        client.data_to_send();
    }
    client
}

#[test]
fn invalid_input_vectors() {
    let vectors = load_json(vectors_dir().join("invalid.json"));
    let cases = vectors["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let expected = case["error"].as_str().unwrap();
        let mut connection = receiver(
            case["role"].as_str().unwrap(),
            case["prefix"].as_str().unwrap(),
            &vectors["prefixes"],
        );
        let mut events = Vec::new();
        let error = connection
            .receive(&unhex(case["hex"].as_str().unwrap()), &mut events)
            .expect_err(name);
        assert_eq!(error.code.name(), expected, "{name}: {}", error.message);
        assert!(events.is_empty(), "{name}");
        let sent = frames(&connection.data_to_send());
        let (frame_type, _, payload) = sent.last().expect(name);
        assert_eq!(*frame_type, 0xA, "{name}: last frame is ERROR");
        let (stream, code, _) = error_fields(payload);
        assert_eq!(stream, 0, "{name}");
        assert_eq!(
            ErrorCode::from_value(code).unwrap().name(),
            expected,
            "{name}"
        );
        assert_eq!(connection.state(), State::Closed, "{name}");
        connection.receive(&[0x60, 0x00], &mut events).unwrap();
        assert!(
            events.is_empty() && connection.data_to_send().is_empty(),
            "{name}"
        );
    }
    assert!(cases.len() >= 38);
}

#[test]
fn every_frame_type_appears_in_the_vectors() {
    let vectors = load_json(vectors_dir().join("conversations.json"));
    let mut seen = [false; 13];
    for spec in vectors["conversations"].as_array().unwrap() {
        for step in spec["steps"].as_array().unwrap() {
            for key in ["hex", "auto_reply_hex"] {
                if let Some(data) = step.get(key).and_then(Value::as_str) {
                    for (frame_type, _, _) in frames(&unhex(data)) {
                        seen[frame_type as usize] = true;
                    }
                }
            }
        }
    }
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn dictionary_file_round_trips() {
    let raw = std::fs::read(vectors_dir().join("dict-7.mmtpdict")).unwrap();
    let dictionary = dictionary();
    assert_eq!(dictionary.dict_id, 7);
    assert_eq!(dictionary.to_file_bytes(), raw);
    assert!(mmtp::Dictionary::from_file_bytes(&raw[..13]).is_err());
}
