//! One connection as the engine holds it. Buffers are empty (unallocated) while
//! the connection is idle: an incomplete TLS record, unsent bytes and plaintext
//! waiting for TLS exist only while they are non-empty.

use std::net::IpAddr;

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;

use crate::boundary::MessageId;
use crate::deadlines::Timing;
use crate::ids::ConnId;
use crate::mqtt::Framer;
use crate::mqttout::Outbound;

/// A push written and not acknowledged yet.
#[derive(Debug)]
pub struct Inflight {
    pub delivery_id: u64,
    pub message_id: MessageId,
    /// ACKS event (true) or a FANOUT_ACKS count (false).
    pub tracked: bool,
}

/// A dictionary delivery in progress on one connection (all zero: none).
#[derive(Clone, Copy, Debug, Default)]
pub struct Delivery {
    /// The dictionary being sent (0: none).
    pub dict_id: u32,
    /// Bytes of it sent so far.
    pub offset: u32,
    /// The dictionary to send once this one is done (0: none).
    pub next_id: u32,
    /// DICT bytes this connection was sent in its life (the budget).
    pub sent: u32,
}

/// The MMTP side of a device connection.
pub struct MmtpConn {
    pub wire: mmtp::Connection,
    /// Pushes awaiting their ACK (empty Vec between bursts).
    pub inflight: Vec<Inflight>,
    /// Backend -> device calls awaiting their answer: (stream id, call token).
    pub calls: Vec<(u64, u64)>,
    pub delivery: Delivery,
    /// Its native RPC path (`RPC_SESSION`; None: every call is Python's).
    pub rpc: Option<Box<super::rpc::RpcConn>>,
}

/// The MQTT side of a box connection.
#[derive(Default)]
pub struct MqttConn {
    pub framer: Framer,
    /// QoS 1 pushes held here (from MQTT_PUSHES, sent when its session opened).
    pub out: Option<Box<Outbound>>,
}

pub enum Proto {
    Mmtp(Box<MmtpConn>),
    Mqtt(MqttConn),
}

/// Bits of `Conn::flags`.
pub mod flag {
    /// Python was told of it (HELLO / MQTT_OPEN): it hears CLOSED.
    pub const TOLD: u32 = 1 << 0;
    /// ACCEPT (MMTP) or SET_IDLE (MQTT) arrived: the handshake deadline is over.
    pub const ACCEPTED: u32 = 1 << 1;
    /// Closing: its last bytes are going out, commands are ignored.
    pub const CLOSING: u32 = 1 << 2;
    /// Our side of TCP is shut: we only wait for the peer's FIN (or the linger).
    pub const WRITE_SHUT: u32 = 1 << 3;
    /// The socket may have input (edge-triggered readiness not yet drained).
    pub const READ_READY: u32 = 1 << 4;
    /// The protocol object holds whole frames it has not handled (per-round budget).
    pub const MORE_INPUT: u32 = 1 << 5;
    /// Output above the high-water mark: its input is not read.
    pub const READ_PAUSED: u32 = 1 << 6;
    /// In the engine's runnable queue.
    pub const QUEUED: u32 = 1 << 7;
    /// In the engine's dirty list (output to flush at the end of the round).
    pub const DIRTY: u32 = 1 << 8;
    /// The TLS handshake is complete (and, for MMTP, ALPN was checked).
    pub const TLS_DONE: u32 = 1 << 9;
    /// close_notify was queued.
    pub const CLOSE_NOTIFY_SENT: u32 = 1 << 10;
    /// The peer's FIN arrived (while closing).
    pub const PEER_EOF: u32 = 1 << 11;
    /// rustls has been given the ClientHello (MMTP: once it was read and offers
    /// `mmtp/1`; before, the bytes wait in `rx_partial` and nothing is sent with TLS).
    pub const TLS_STARTED: u32 = 1 << 12;
    /// MQTT: its CONNECT announced protocol level 5 (DISCONNECT with a reason exists).
    pub const MQTT5: u32 = 1 << 13;
    /// MMTP with early data on: its ClientHello (in `rx_partial`) waits for Python to
    /// take the ticket it presents (TLS_RESUME); its socket is not read meanwhile.
    pub const TICKET_WAIT: u32 = 1 << 14;
    /// TLS early data was accepted on it (counted once).
    pub const EARLY_DATA: u32 = 1 << 15;
    /// Accepted on a PROXY listener: the balancer's header has not been read yet
    /// (`peer_ip` is the balancer's and is not counted per address until it is).
    pub const PROXY_WAIT: u32 = 1 << 16;
    /// `tx_pending` holds records queued unsent after the handshake (the session
    /// ticket, `tlsio::pass`): the next flush writes them with what it sends.
    pub const HELD_OUTPUT: u32 = 1 << 17;
}

pub struct Conn {
    pub sock: TcpStream,
    pub id: ConnId,
    /// The device's address (behind a balancer: the one its PROXY header named).
    pub peer_ip: IpAddr,
    /// None: plain TCP (MQTT without TLS).
    pub tls: Option<Box<UnbufferedServerConnection>>,
    pub proto: Proto,
    /// Ciphertext of a TLS record that has not fully arrived.
    pub rx_partial: Vec<u8>,
    /// Bytes the kernel has not taken yet.
    pub tx_pending: Vec<u8>,
    /// Plaintext not encrypted yet (TLS not writable yet; MQTT writes).
    pub out_plain: Vec<u8>,
    pub timing: Timing,
    pub flags: u32,
}

impl Conn {
    pub fn has(&self, bit: u32) -> bool {
        self.flags & bit != 0
    }

    pub fn set(&mut self, bit: u32) {
        self.flags |= bit;
    }

    pub fn clear(&mut self, bit: u32) {
        self.flags &= !bit;
    }

    pub fn is_mmtp(&self) -> bool {
        matches!(self.proto, Proto::Mmtp(_))
    }

    pub fn mmtp(&mut self) -> Option<&mut MmtpConn> {
        match &mut self.proto {
            Proto::Mmtp(m) => Some(m),
            Proto::Mqtt(_) => None,
        }
    }

    /// Output waiting for the device, in bytes (what the slow-consumer rule counts).
    pub fn pending_output(&self) -> usize {
        let wire = match &self.proto {
            Proto::Mmtp(m) => m.wire.pending_output(),
            Proto::Mqtt(_) => 0,
        };
        self.tx_pending.len() + self.out_plain.len() + wire
    }

    /// Heap bytes held by our own buffers (TLS and protocol state excluded).
    pub fn buffer_bytes(&self) -> usize {
        self.rx_partial.capacity() + self.tx_pending.capacity() + self.out_plain.capacity()
    }
}
