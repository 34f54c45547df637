//! Socket writes and the rustls unbuffered state machine.
//!
//! Rules the unbuffered API imposes (each was a bug in the prototype once):
//! * `discard` of a status applies to the slice that call was given, before the
//!   next `process_tls_records`;
//! * `EncodeTlsData` answers "buffer too small" with the size it needs: grow, retry;
//! * once application data is encrypted it must be sent or queued, never dropped:
//!   the record sequence numbers moved on.

use std::io::{self, Write};

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};

use crate::stats::Stats;

/// Write `data` now, or queue it behind bytes already waiting (order is kept).
pub fn send(
    sock: &mut TcpStream,
    pending: &mut Vec<u8>,
    data: &[u8],
    stats: &Stats,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if !pending.is_empty() {
        pending.extend_from_slice(data);
        return Ok(());
    }
    let mut offset = 0;
    while offset < data.len() {
        Stats::inc(&stats.writes);
        match sock.write(&data[offset..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                offset += n;
                Stats::add(&stats.bytes_out, n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Stats::inc(&stats.writes_blocked);
                pending.extend_from_slice(&data[offset..]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write what is queued; the queue's memory is freed once it empties.
pub fn flush_pending(sock: &mut TcpStream, pending: &mut Vec<u8>, stats: &Stats) -> io::Result<()> {
    let mut offset = 0;
    while offset < pending.len() {
        Stats::inc(&stats.writes);
        match sock.write(&pending[offset..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                offset += n;
                Stats::add(&stats.bytes_out, n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if offset >= pending.len() {
        *pending = Vec::new();
    } else {
        pending.drain(..offset);
    }
    Ok(())
}

/// What one pass of the TLS state machine did.
#[derive(Debug, Default)]
pub struct Pass {
    /// Bytes of the input consumed (the rest is an incomplete record).
    pub consumed: usize,
    /// The plaintext to send was encrypted and sent (or queued).
    pub wrote: bool,
    /// The handshake is over (application data may flow).
    pub writable: bool,
    /// The peer sent close_notify.
    pub peer_closed: bool,
    /// The first bytes of `plain_in` that came as TLS early data.
    pub early_len: usize,
    /// Records encoded after the handshake (the session ticket) were queued in
    /// `tx_pending` unsent (`hold_after_handshake`): the next flush must write them.
    pub held: bool,
}

#[derive(Debug)]
#[allow(dead_code)] // the payloads are for Debug output when a test fails
pub enum TlsFailure {
    Tls(rustls::Error),
    Io(io::Error),
}

/// After rustls failed: encode and send what it queued (the fatal alert; handshake
/// bytes encoded before the failure go first). Best effort: the connection is closed
/// next whatever happens.
fn send_alert(
    tls: &mut UnbufferedServerConnection,
    sock: &mut TcpStream,
    tx_pending: &mut Vec<u8>,
    input: &mut [u8],
    tx: &mut Vec<u8>,
    mut tx_len: usize,
    stats: &Stats,
) {
    // EncodeTlsData then TransmitTlsData per queued record; a few rounds at most. The
    // input the failed call had left is passed again (rustls's handshake deframer
    // keeps positions in it; an empty slice makes it panic), and rustls stops at the
    // failure again after the alert.
    let mut start = 0;
    for _ in 0..8 {
        let status = tls.process_tls_records(&mut input[start..]);
        start += status.discard;
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut encoder)) => loop {
                match encoder.encode(&mut tx[tx_len..]) {
                    Ok(n) => {
                        tx_len += n;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(e)) => tx.resize(tx_len + e.required_size, 0),
                    Err(EncodeError::AlreadyEncoded) => break,
                }
            },
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                let _ = send(sock, tx_pending, &tx[..tx_len], stats);
                tx_len = 0;
                transmit.done();
            }
            _ => break,
        }
    }
    let _ = send(sock, tx_pending, &tx[..tx_len], stats);
}

fn tls_record_bound(plain: usize) -> usize {
    // Per record of at most 2^14 bytes: a 5-byte header, the content type, a 16-byte tag.
    plain + (plain / 16384 + 1) * 32
}

/// Run rustls over `input` (the peer's bytes, consumed from the front): plaintext
/// records are appended to `plain_in`, handshake records sent, and once the
/// connection may send application data, `plain_out` (then a close_notify, if
/// `close_notify`) is encrypted and sent in one write.
///
/// `hold_after_handshake`: TLS records rustls emits once the handshake is over (the
/// session ticket, sent right after the client's Finished) are queued, not written:
/// an MMTP device's ticket then leaves with its HELLO_ACK in one write, instead of a
/// write of its own (a send on loopback costs the sender the receiver's TCP path too).
#[allow(clippy::too_many_arguments)]
pub fn pass(
    tls: &mut UnbufferedServerConnection,
    sock: &mut TcpStream,
    tx_pending: &mut Vec<u8>,
    input: &mut [u8],
    plain_in: &mut Vec<u8>,
    plain_out: &[u8],
    close_notify: bool,
    hold_after_handshake: bool,
    tx: &mut Vec<u8>,
    stats: &Stats,
) -> Result<Pass, TlsFailure> {
    let mut result = Pass::default();
    let mut start = 0;
    let mut tx_len = 0;
    loop {
        // Read before the call: the state it returns borrows the connection.
        let handshake_over = !tls.is_handshaking();
        let status = tls.process_tls_records(&mut input[start..]);
        let discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(error) => {
                // rustls queued the fatal alert that says why: the peer hears it.
                start += discard;
                send_alert(
                    tls,
                    sock,
                    tx_pending,
                    &mut input[start..],
                    tx,
                    tx_len,
                    stats,
                );
                return Err(TlsFailure::Tls(error));
            }
        };
        let mut done = false;
        match state {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    plain_in.extend_from_slice(record.map_err(TlsFailure::Tls)?.payload);
                }
            }
            ConnectionState::ReadEarlyData(mut records) => {
                // Accepted only on a single-use ticket (singleuse.rs); it always comes
                // before any ReadTraffic (which needs the client's Finished).
                while let Some(record) = records.next_record() {
                    plain_in.extend_from_slice(record.map_err(TlsFailure::Tls)?.payload);
                }
                result.early_len = plain_in.len();
            }
            ConnectionState::EncodeTlsData(mut encoder) => loop {
                match encoder.encode(&mut tx[tx_len..]) {
                    Ok(n) => {
                        tx_len += n;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(e)) => tx.resize(tx_len + e.required_size, 0),
                    Err(EncodeError::AlreadyEncoded) => break,
                }
            },
            ConnectionState::TransmitTlsData(transmit) => {
                if hold_after_handshake && handshake_over {
                    tx_pending.extend_from_slice(&tx[..tx_len]);
                    result.held = true;
                } else {
                    send(sock, tx_pending, &tx[..tx_len], stats).map_err(TlsFailure::Io)?;
                }
                tx_len = 0;
                transmit.done();
            }
            ConnectionState::WriteTraffic(mut writer) => {
                result.writable = true;
                let mut len = 0;
                if !plain_out.is_empty() {
                    let need = tls_record_bound(plain_out.len());
                    if tx.len() < need {
                        tx.resize(need, 0);
                    }
                    len = loop {
                        match writer.encrypt(plain_out, tx) {
                            Ok(n) => break n,
                            Err(EncryptError::InsufficientSize(e)) => tx.resize(e.required_size, 0),
                            Err(EncryptError::EncryptExhausted) => {
                                return Err(TlsFailure::Tls(rustls::Error::EncryptError))
                            }
                        }
                    };
                    result.wrote = true;
                }
                if close_notify {
                    if tx.len() < len + 64 {
                        tx.resize(len + 64, 0);
                    }
                    len += writer
                        .queue_close_notify(&mut tx[len..])
                        .map_err(|_| TlsFailure::Tls(rustls::Error::EncryptError))?;
                }
                send(sock, tx_pending, &tx[..len], stats).map_err(TlsFailure::Io)?;
                done = true;
            }
            ConnectionState::BlockedHandshake => done = true,
            ConnectionState::PeerClosed => result.peer_closed = true,
            ConnectionState::Closed => {
                result.peer_closed = true;
                done = true;
            }
            _ => done = true,
        }
        start += discard;
        if done {
            result.consumed = start;
            return Ok(result);
        }
    }
}
