//! One TLS client connection driven by readiness (mio, edge-triggered), with a
//! protocol on top (MMTP or MQTT) that turns plaintext into answers and events.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use rustls::{ClientConfig, ClientConnection};
use slab::Slab;

use crate::net::{connect_from, reset_on_close, tls_client, Sink};

pub trait Proto {
    /// Plaintext from the server; answers go to `out`. `Ok(true)`: the link just
    /// became ready (accepted, subscribed); `Err`: it failed or was refused.
    fn receive(&mut self, data: &[u8], out: &mut Vec<u8>, sink: &mut Sink) -> Result<bool, ()>;
}

pub struct Link<P> {
    pub sock: TcpStream,
    pub tls: ClientConnection,
    pub proto: P,
    pub ready: bool,
    /// churn: the loop this connection belongs to (its tickets, its device id).
    pub worker: usize,
    /// Registered for WRITABLE too: while connecting, and after a write would block.
    writable: bool,
}

/// The socket as rustls reads it, noting a short read: the socket is then empty
/// and the read that would only return EAGAIN can be skipped (a new edge comes
/// with new data).
struct Short<'a> {
    sock: &'a mut TcpStream,
    short: bool,
}

impl Read for Short<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// Connections of one process and what they share.
pub struct Links<P> {
    pub poll: Poll,
    pub links: Slab<Link<P>>,
    pub sink: Sink,
    source: IpAddr,
    server: SocketAddr,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Ready links listen for READABLE only: every ACK a device writes would
    /// otherwise come back as a WRITABLE edge when the server's TCP ACK frees
    /// the send buffer, an extra wake-up and read per push.
    pub lean: bool,
}

impl<P: Proto> Links<P> {
    pub fn new(source: IpAddr, server: SocketAddr, capacity: usize) -> Self {
        Links {
            poll: Poll::new().expect("poll"),
            links: Slab::with_capacity(capacity),
            sink: Sink::default(),
            source,
            server,
            buf: vec![0; 64 * 1024],
            out: Vec::new(),
            lean: false,
        }
    }

    /// Connect; `first` (HELLO, CONNECT...) is queued to follow the TLS handshake.
    pub fn open(
        &mut self,
        config: &Arc<ClientConfig>,
        proto: P,
        first: &[u8],
        worker: usize,
    ) -> io::Result<usize> {
        let sock = connect_from(self.source, self.server)?;
        let mut tls = tls_client(config);
        tls.writer().write_all(first)?;
        let entry = self.links.vacant_entry();
        let key = entry.key();
        let mut link = Link {
            sock,
            tls,
            proto,
            ready: false,
            worker,
            writable: true,
        };
        self.poll.registry().register(
            &mut link.sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(link);
        Ok(key)
    }

    /// Handle readiness of `key`: `Ok(true)` if it became ready now.
    pub fn service(&mut self, key: usize) -> Result<bool, ()> {
        let Some(link) = self.links.get_mut(key) else {
            return Err(());
        };
        let mut ready_now = false;
        loop {
            let mut reader = Short {
                sock: &mut link.sock,
                short: false,
            };
            let short = match link.tls.read_tls(&mut reader) {
                Ok(0) => return Err(()),
                Ok(_) => reader.short,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            };
            let state = link.tls.process_new_packets().map_err(|_| ())?;
            let mut pending = state.plaintext_bytes_to_read();
            while pending > 0 {
                if self.buf.len() < pending {
                    self.buf.resize(pending, 0);
                }
                let n = link.tls.reader().read(&mut self.buf).map_err(|_| ())?;
                if n == 0 {
                    break;
                }
                pending -= n;
                self.out.clear();
                if link
                    .proto
                    .receive(&self.buf[..n], &mut self.out, &mut self.sink)?
                {
                    link.ready = true;
                    ready_now = true;
                }
                if !self.out.is_empty() {
                    link.tls.writer().write_all(&self.out).map_err(|_| ())?;
                }
            }
            if short {
                break;
            }
        }
        let blocked = flush(link)?;
        self.arm(key, blocked)?;
        Ok(ready_now)
    }

    /// WRITABLE interest only while a write waits (lean mode, ready links).
    fn arm(&mut self, key: usize, blocked: bool) -> Result<(), ()> {
        let link = &mut self.links[key];
        let want = blocked || !(self.lean && link.ready);
        if want != link.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.poll
                .registry()
                .reregister(&mut link.sock, Token(key), interest)
                .map_err(|_| ())?;
            link.writable = want;
        }
        Ok(())
    }

    /// Write `data` on `key` now (the publisher's PUBLISHes, an RPC's REQUEST).
    pub fn send(&mut self, key: usize, data: &[u8]) -> Result<(), ()> {
        let link = self.links.get_mut(key).ok_or(())?;
        link.tls.writer().write_all(data).map_err(|_| ())?;
        let blocked = flush(link)?;
        self.arm(key, blocked)
    }

    pub fn close(&mut self, key: usize, reset: bool) -> Option<Link<P>> {
        let mut link = self.links.try_remove(key)?;
        let _ = self.poll.registry().deregister(&mut link.sock);
        if reset {
            reset_on_close(&link.sock);
        }
        Some(link)
    }
}

/// Write what TLS holds; `Ok(true)` if the socket would block with bytes left.
fn flush<P>(link: &mut Link<P>) -> Result<bool, ()> {
    while link.tls.wants_write() {
        match link.tls.write_tls(&mut link.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(false)
}
