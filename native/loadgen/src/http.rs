//! The direct path of the RPC comparison: HTTP/1.1 keep-alive POSTs to the upstream,
//! one after the other, with the same body and app headers a device's call carries.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::mmtp_dev::rpc_headers;

pub fn rpc(server: SocketAddr, path: &str, calls: u64, body: &[u8]) -> Vec<f64> {
    let mut sock = TcpStream::connect(server).expect("connect to the upstream");
    sock.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut took_us = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let started = Instant::now();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {server}\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in rpc_headers(i) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        sock.write_all(&bytes).expect("send");
        let mut have = 0usize;
        loop {
            let n = sock.read(&mut buf[have..]).expect("read");
            assert!(n > 0, "the upstream closed the connection");
            have += n;
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "upstream answered {head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if have >= end + 4 + length {
                    break;
                }
            }
        }
        took_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    took_us
}
