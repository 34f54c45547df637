//! Behaviour where this crate deliberately differs from (or goes beyond) the
//! Python reference, and its memory promises.

use std::sync::Arc;

use mmtp::{
    Accept, BodyCodec, Connection, ErrorCode, Event, Hello, Limits, LocalError, Presets, Role,
    State,
};

fn pair(client_limits: Limits, server_limits: Limits) -> (Connection, Connection) {
    let codec = Arc::new(BodyCodec::default());
    let presets = Arc::new(Presets::builtin());
    let mut client = Connection::new(Role::Client, client_limits, codec.clone(), presets.clone());
    let mut server = Connection::new(Role::Server, server_limits, codec, presets);
    let hello = Hello {
        device_id: "d".into(),
        preset_id: 1,
        ..Hello::default()
    };
    client.send_hello(&hello, 0).unwrap();
    let mut events = Vec::new();
    server.receive(&client.data_to_send(), &mut events).unwrap();
    server.accept(&Accept::default()).unwrap();
    client.receive(&server.data_to_send(), &mut events).unwrap();
    (client, server)
}

fn deliver(from: &mut Connection, to: &mut Connection) -> Vec<Event> {
    let mut events = Vec::new();
    to.receive(&from.data_to_send(), &mut events).unwrap();
    events
}

/// An id twice in one SETTINGS frame is refused (spec section 6.9): the
/// unhardened reference applied, at the ACK, a lowering that a later pair of
/// the same frame had superseded, leaving its decoder below what the peer was
/// last told (the next header block was a TABLE_SIZE_ERROR).
#[test]
fn an_id_twice_in_one_settings_frame_is_refused() {
    let (mut client, mut server) = pair(Limits::default(), Limits::default());
    let refused = server.send_settings(&[(1, 4096), (1, 100_000)]);
    assert!(matches!(refused, Err(LocalError::Forbidden(_))));
    assert!(server.data_to_send().is_empty());
    // From the peer: SETTINGS 1=4096, 1=8192.
    let frame = [0x80, 0x06, 0x01, 0x80, 0x20, 0x01, 0x80, 0x40];
    let error = client.receive(&frame, &mut Vec::new()).unwrap_err();
    assert_eq!(error.code, ErrorCode::FieldError);
}

/// An answer too large for the device leaves its stream open, so the
/// gateway can still end it with an error (issue 10, item 2).
#[test]
fn a_response_too_large_leaves_the_stream_open() {
    let client_limits = Limits {
        max_body_size: 100,
        ..Limits::default()
    };
    let (mut client, mut server) = pair(client_limits, Limits::default());
    let stream = client.send_request("x", b"", &[("a", "b")]).unwrap();
    deliver(&mut client, &mut server);
    let refused = server.send_response(stream, &[b'x'; 400], &[("a", "b")], 0);
    assert!(matches!(refused, Err(LocalError::MessageTooLarge(_))));
    assert_eq!(
        server.open_remote_streams().collect::<Vec<_>>(),
        vec![stream]
    );
    assert!(server.data_to_send().is_empty());
    assert!(server
        .send_error(stream, ErrorCode::BodyTooLarge, "answer too large", 0)
        .unwrap());
    let events = deliver(&mut server, &mut client);
    assert!(matches!(
        events[0],
        Event::StreamErrorReceived { code: 13, .. }
    ));
    assert_eq!(client.open_local_streams().count(), 0);
}

#[test]
fn more_than_two_table_size_updates_end_the_connection() {
    let (_, mut server) = pair(Limits::default(), Limits::default());
    // REQUEST stream 1, block: three updates to 4096, then ":op: x" (index 62).
    let block = [
        0x3f, 0xe1, 0x1f, 0x3f, 0xe1, 0x1f, 0x3f, 0xe1, 0x1f, 0x7e, 0x01, 0x78,
    ];
    let mut frame = vec![0x21, (2 + block.len()) as u8, 0x01, block.len() as u8];
    frame.extend_from_slice(&block);
    let error = server.receive(&frame, &mut Vec::new()).unwrap_err();
    assert_eq!(error.code, ErrorCode::HeaderError);
    assert_eq!(server.state(), State::Closed);
}

#[test]
fn settings_with_too_many_pairs_end_the_connection() {
    let pairs: Vec<(u64, u64)> = (0..17).map(|i| (100 + i, 1)).collect();
    let (mut client, mut server) = pair(Limits::default(), Limits::default());
    assert!(client.send_settings(&pairs).is_err());
    client.send_settings(&pairs[..16]).unwrap();
    assert!(server
        .receive(&client.data_to_send(), &mut Vec::new())
        .is_ok());
    // 17 pairs, then a payload longer than 16 pairs can be.
    let mut payload = Vec::new();
    for (key, value) in &pairs {
        payload.extend_from_slice(&[*key as u8, *value as u8]);
    }
    let mut frame = vec![0x80, payload.len() as u8];
    frame.extend_from_slice(&payload);
    let error = server.receive(&frame, &mut Vec::new()).unwrap_err();
    assert_eq!(error.code, ErrorCode::FieldError);
    let (_, mut server) = pair(Limits::default(), Limits::default());
    let mut frame = vec![0x80, 0x81, 0x02]; // 257 bytes
    frame.extend(std::iter::repeat_n(0x01u8, 257));
    let error = server.receive(&frame, &mut Vec::new()).unwrap_err();
    assert_eq!(error.code, ErrorCode::FieldError);
}

#[test]
fn hello_with_too_many_unknown_fields_or_bytes_is_refused() {
    let codec = Arc::new(BodyCodec::default());
    let presets = Arc::new(Presets::builtin());
    // version 1, device_id "d", then 33 unknown varint fields (number 40).
    let mut payload = vec![0x02, 0x01, 0x05, 0x01, b'd'];
    for _ in 0..33 {
        payload.extend_from_slice(&[0x50, 0x00]);
    }
    let mut frame = vec![0x00, payload.len() as u8];
    frame.extend_from_slice(&payload);
    let mut server = Connection::new(
        Role::Server,
        Limits::default(),
        codec.clone(),
        presets.clone(),
    );
    assert_eq!(
        server.receive(&frame, &mut Vec::new()).unwrap_err().code,
        ErrorCode::FieldError
    );
    // A HELLO larger than max_hello_size, refused from its length.
    let big = vec![0x00, 0x81, 0x40]; // length 8193
    let mut server = Connection::new(Role::Server, Limits::default(), codec, presets);
    assert_eq!(
        server.receive(&big, &mut Vec::new()).unwrap_err().code,
        ErrorCode::FrameSizeError
    );
}

/// After a handshake, a request/response and a push/ACK, an idle connection
/// holds no heap memory but its HPACK tables' own entries.
#[test]
fn an_idle_connection_holds_only_its_table_entries() {
    let (mut client, mut server) = pair(Limits::default(), Limits::default());
    let stream = client
        .send_request("user.get", b"{\"id\":7}", &[("locale", "zh-CN")])
        .unwrap();
    deliver(&mut client, &mut server);
    server
        .send_response(
            stream,
            b"{\"name\":\"Ann\"}",
            &[("content-type", "application/json")],
            0,
        )
        .unwrap();
    deliver(&mut server, &mut client);
    let delivery = server
        .send_push(b"m-1", b"hi", &[("collapse-key", "chat-9")])
        .unwrap();
    deliver(&mut server, &mut client);
    client.send_ack(&[delivery]).unwrap();
    deliver(&mut client, &mut server);
    let (encoder, decoder) = server.hpack_tables();
    assert_eq!(decoder.len(), 15); // the preset + ":op: user.get"
    assert_eq!(encoder.len(), 15); // the preset + "collapse-key: chat-9"
    server.shrink_to_fit();
    // Two rings of one entry each: the entry's octets and 12 bytes of bookkeeping.
    assert!(
        server.heap_bytes() <= 2 * (20 + 12),
        "{}",
        server.heap_bytes()
    );
    assert_eq!(server.unacked_deliveries(), &[] as &[u64]);
}
