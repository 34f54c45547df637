//! Properties of the native RPC path's HTTP/1 reader (`src/h1.rs`): it faces upstreams,
//! so any bytes give an answer (never a panic), within the limits, and a simple answer
//! cut anywhere reads as not yet whole until its last byte.

use _engine::h1::{simple_answer, Answer, Limits};
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_head_bytes: 512,
    max_headers: 8,
    max_body_bytes: 256,
};

fn field() -> impl Strategy<Value = (String, String)> {
    (
        "[A-Za-z][A-Za-z0-9-]{0,12}",
        "[ -~]{0,20}".prop_map(|v| v.trim().to_owned()),
    )
}

fn simple() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        200u16..300,
        prop::collection::vec(field(), 0..6),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_filter("no field the reader refuses", |(status, fields, _)| {
            *status != 204
                && fields.iter().all(|(n, _)| {
                    let n = n.to_ascii_lowercase();
                    !matches!(
                        n.as_str(),
                        "content-length"
                            | "transfer-encoding"
                            | "content-encoding"
                            | "retry-after"
                            | "connection"
                    )
                })
        })
        .prop_map(|(status, fields, body)| {
            let mut out = format!("HTTP/1.1 {status} OK\r\n").into_bytes();
            for (name, value) in &fields {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            (out, body)
        })
}

proptest! {
    #[test]
    fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        match simple_answer(&bytes, &LIMITS) {
            Answer::Partial => prop_assert!(bytes.len() <= LIMITS.max_head_bytes + LIMITS.max_body_bytes),
            Answer::Whole { body_start, headers } => {
                prop_assert!(body_start <= LIMITS.max_head_bytes);
                prop_assert!(bytes.len() - body_start <= LIMITS.max_body_bytes);
                prop_assert!(headers.iter().all(|(n, _)| n.bytes().all(|b| !b.is_ascii_uppercase())));
            }
            Answer::Other => {}
        }
    }

    #[test]
    fn a_simple_answer_is_whole_only_at_its_end((wire, body) in simple(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(wire.len());
        prop_assert_eq!(simple_answer(&wire[..cut], &LIMITS), Answer::Partial);
        match simple_answer(&wire, &LIMITS) {
            Answer::Whole { body_start, headers } => {
                prop_assert_eq!(&wire[body_start..], &body[..]);
                prop_assert!(headers.iter().all(|(n, _)| n != "date" && n != "server"));
            }
            other => prop_assert!(false, "not whole: {:?}", other),
        }
        let mut longer = wire.clone();
        longer.push(b'x');
        prop_assert_eq!(simple_answer(&longer, &LIMITS), Answer::Other);
    }
}
