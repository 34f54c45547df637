//! The HTTP/1.1 of the native RPC path: the request Python's `encode_request` would
//! write for a call, and a strict reader of the one answer the engine serves itself.
//!
//! The twin of `channel/rpc/http1.py` and `channel/rpc/upstream.py` for the common case
//! only. `simple_answer` recognises exactly the answers Python's fast path settles
//! without more ado (`ClientConnection.receive_whole` + `ClusterPool.fast_answer`): a
//! whole HTTP/1.1 2xx with one numeric `Content-Length`, no `Transfer-Encoding`,
//! no `Connection: close`, no `Content-Encoding`, no `Retry-After`, nothing after the
//! body. Everything else is `Other`: the engine hands the connection and the bytes
//! read so far to Python, whose codec then decides (chunked, close-delimited, too
//! large, malformed...). Bounded: the caller never buffers more than
//! `max_head_bytes` before the head ends, nor more than the announced body after it.

use mmtp::Headers;

/// Connection-level headers a device may not send upstream (`upstream.HOP_BY_HOP`).
const HOP_BY_HOP: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

/// Limits on one answer (`channel.rpc.http1.Limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

/// What the bytes of an answer read so far are.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not whole yet; read on (the buffer stays within the limits).
    Partial,
    /// A whole simple 2xx: the headers a device gets and where the body is.
    Whole {
        headers: Vec<(String, String)>,
        body_start: usize,
    },
    /// Anything else: Python's codec takes it from here.
    Other,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b)
}

/// `config.OP_PATTERN`: `[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}`.
pub fn op_ok(op: &str) -> bool {
    let b = op.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// `upstream._CONTROL_CHARS`: C0 controls but tab, and DEL.
fn has_control_chars(value: &str) -> bool {
    value
        .bytes()
        .any(|b| b <= 0x08 || (0x0a..=0x1f).contains(&b) || b == 0x7f)
}

/// Every device header goes upstream as it is (`upstream._all_forwarded`): lower-case
/// token names, no `x-channel-*`, no hop-by-hop or framing header, no control
/// characters in values. False: Python filters them (the call is Python's).
pub fn forwardable(headers: &Headers) -> bool {
    headers.iter().all(|(name, value)| {
        !name.is_empty()
            && name.bytes().all(|b| is_tchar(b) && !b.is_ascii_uppercase())
            && !name.starts_with("x-channel-")
            && !HOP_BY_HOP.contains(&name)
            && !has_control_chars(value)
    })
}

/// The identity block Python sends for a session as the `name: value\r\n` lines
/// `encode_request` appends; None if a field is not a lower-case token name with a
/// value free of control characters (Python made it; a bad one is refused).
pub fn identity_block(fields: &[(String, String)]) -> Option<Box<[u8]>> {
    let mut out = Vec::new();
    for (name, value) in fields {
        let name_ok =
            !name.is_empty() && name.bytes().all(|b| is_tchar(b) && !b.is_ascii_uppercase());
        if !name_ok || has_control_chars(value) {
            return None;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Some(out.into_boxed_slice())
}

/// A request target's path prefix is visible ASCII (`http1._TARGET`).
pub fn target_ok(prefix: &str) -> bool {
    prefix.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// Append `POST {prefix}/rpc/{op}` as `encode_request` writes it for the call.
#[allow(clippy::too_many_arguments)]
pub fn encode_request(
    out: &mut Vec<u8>,
    prefix: &str,
    op: &str,
    authority: &str,
    user_agent: &str,
    device_headers: &Headers,
    identity: &[u8],
    body: &[u8],
) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b"/rpc/");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    // The device's own user-agent goes as it is, and then the gateway's does not.
    let own_agent = device_headers.iter().any(|(name, _)| name == "user-agent");
    if !own_agent && !user_agent.is_empty() {
        out.extend_from_slice(b"user-agent: ");
        out.extend_from_slice(user_agent.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in device_headers.iter() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(identity);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Response headers a device never gets (`upstream._STRIPPED_RESPONSE_HEADERS`).
fn stripped(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || matches!(name, "content-encoding" | "date" | "server")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What `buf` (everything read since the request went out) holds; see the module doc.
pub fn simple_answer(buf: &[u8], limits: &Limits) -> Answer {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        // Python raises HEAD_TOO_LARGE past the limit; its codec says so.
        return if buf.len() > limits.max_head_bytes {
            Answer::Other
        } else {
            Answer::Partial
        };
    };
    if end + 4 > limits.max_head_bytes {
        return Answer::Other;
    }
    let head = &buf[..end];
    let crlf = head.windows(2).filter(|w| w == b"\r\n").count();
    let crs = head.iter().filter(|&&b| b == b'\r').count();
    let lfs = head.iter().filter(|&&b| b == b'\n').count();
    if crs != crlf || lfs != crlf || head.contains(&0) {
        return Answer::Other;
    }
    let Ok(head) = std::str::from_utf8(head) else {
        return Answer::Other;
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let sb = status_line.as_bytes();
    // "HTTP/1.1 2xx" then nothing or " reason"; HTTP/1.0 never keeps the connection.
    if sb.len() < 12
        || &sb[..9] != b"HTTP/1.1 "
        || !sb[9..12].iter().all(u8::is_ascii_digit)
        || (sb.len() > 12 && sb[12] != b' ')
    {
        return Answer::Other;
    }
    let status: u16 = status_line[9..12].parse().unwrap_or(0);
    if !(200..300).contains(&status) || status == 204 {
        return Answer::Other;
    }
    let mut headers = Vec::new();
    let mut length: Option<&str> = None;
    let mut count = 0usize;
    for line in lines {
        count += 1;
        if count > limits.max_headers {
            return Answer::Other;
        }
        let Some(colon) = line.find(':') else {
            return Answer::Other; // continuation lines and bad names: Python's parser
        };
        let (name, rest) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Answer::Other;
        }
        let value = rest
            .trim_start_matches([' ', '\t'])
            .trim_end_matches([' ', '\t']);
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                if length.is_some() {
                    return Answer::Other;
                }
                length = Some(value);
            }
            "transfer-encoding" | "content-encoding" | "retry-after" => return Answer::Other,
            "connection"
                if value
                    .split(',')
                    .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case("close")) =>
            {
                return Answer::Other
            }
            _ => {}
        }
        if !stripped(&name) {
            headers.push((name, value.to_owned()));
        }
    }
    let Some(length) = length else {
        return Answer::Other; // close-delimited
    };
    if length.is_empty() || length.len() > 18 || !length.bytes().all(|b| b.is_ascii_digit()) {
        return Answer::Other;
    }
    let length: usize = match length.parse() {
        Ok(n) if n <= limits.max_body_bytes => n,
        _ => return Answer::Other,
    };
    let body_start = end + 4;
    let have = buf.len() - body_start;
    if have < length {
        Answer::Partial
    } else if have > length {
        Answer::Other // bytes after the answer: the connection is not reusable
    } else {
        Answer::Whole {
            headers,
            body_start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head_bytes: 64 * 1024,
        max_headers: 100,
        max_body_bytes: 1024,
    };

    fn whole(buf: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        match simple_answer(buf, &LIMITS) {
            Answer::Whole {
                headers,
                body_start,
            } => (headers, buf[body_start..].to_vec()),
            other => panic!("not whole: {other:?}"),
        }
    }

    #[test]
    fn a_plain_answer_is_whole_with_the_devices_headers() {
        let (headers, body) = whole(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
Date: x\r\nServer: y\r\nX-Trace:  a b \t\r\n\r\n{}",
        );
        assert_eq!(
            headers,
            vec![
                ("content-type".into(), "application/json".into()),
                ("x-trace".into(), "a b".into())
            ]
        );
        assert_eq!(body, b"{}");
        let (headers, body) = whole(b"HTTP/1.1 201\r\ncontent-length: 0\r\n\r\n");
        assert!(headers.is_empty() && body.is_empty());
    }

    #[test]
    fn partial_until_the_body_is_there() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert_eq!(
                simple_answer(&full[..cut], &LIMITS),
                Answer::Partial,
                "{cut}"
            );
        }
        whole(full);
    }

    #[test]
    fn everything_else_is_pythons() {
        let cases: [&[u8]; 19] = [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive, close\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 500 Oops\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 404 No\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokX",
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nretry-after: 3\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nbad header\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\n folded\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nx: a\nb\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nx: \xff\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok",
        ];
        for case in cases {
            assert_eq!(
                simple_answer(case, &LIMITS),
                Answer::Other,
                "{}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn heads_are_bounded() {
        let limits = Limits {
            max_head_bytes: 64,
            ..LIMITS
        };
        let long = [b'a'; 65];
        assert_eq!(simple_answer(&long, &limits), Answer::Other);
        assert_eq!(simple_answer(&long[..64], &limits), Answer::Partial);
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..101 {
            many.extend_from_slice(b"a: b\r\n");
        }
        many.extend_from_slice(b"content-length: 0\r\n\r\n");
        assert_eq!(simple_answer(&many, &LIMITS), Answer::Other);
    }

    #[test]
    fn the_request_is_what_python_writes() {
        let mut headers = Headers::new();
        headers.push("accept", "application/json");
        let identity =
            identity_block(&[("x-channel-device-id".to_owned(), "d1".to_owned())]).unwrap();
        assert!(identity_block(&[("x".to_owned(), "a\r\nb".to_owned())]).is_none());
        let mut out = Vec::new();
        encode_request(
            &mut out,
            "/api",
            "acct.get",
            "127.0.0.1:9000",
            "channel-gateway",
            &headers,
            &identity,
            b"{}",
        );
        assert_eq!(
            out,
            b"POST /api/rpc/acct.get HTTP/1.1\r\nhost: 127.0.0.1:9000\r\n\
user-agent: channel-gateway\r\ncontent-length: 2\r\naccept: application/json\r\n\
x-channel-device-id: d1\r\n\r\n{}"
                .to_vec()
        );
        headers.push("user-agent", "app/1");
        out.clear();
        encode_request(
            &mut out,
            "",
            "a",
            "h",
            "channel-gateway",
            &headers,
            b"",
            b"",
        );
        assert_eq!(
            out,
            b"POST /rpc/a HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\
accept: application/json\r\nuser-agent: app/1\r\n\r\n"
                .to_vec()
        );
    }

    #[test]
    fn headers_python_would_filter_keep_the_call_in_python() {
        let ok = |name: &str, value: &str| {
            let mut h = Headers::new();
            h.push(name, value);
            forwardable(&h)
        };
        assert!(ok("accept", "a\tb"));
        assert!(ok("x-app", "é"));
        assert!(!ok("Accept", "x"));
        assert!(!ok("x-channel-device-id", "spoof"));
        assert!(!ok("connection", "close"));
        assert!(!ok("bad name", "x"));
        assert!(!ok("x", "a\x01"));
        assert!(!ok("x", "a\x7f"));
        assert!(op_ok("acct.get_1-x") && !op_ok(".x") && !op_ok("a/b") && !op_ok(""));
    }
}
