//! MQTT framing: whole packets out of a byte stream, nothing more.
//!
//! A packet is a fixed header (type and flags, then a remaining length of one to
//! four 7-bit groups) and that many bytes. The engine hands whole packets to Python,
//! which parses them (`channel/mqtt`), and answers PINGREQ itself. The size limit is
//! checked as soon as the remaining length is known, before the packet is buffered.

/// PINGREQ: type 12, no flags, nothing after.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// PINGRESP: type 13, no flags, nothing after.
pub const PINGRESP: [u8; 2] = [0xD0, 0x00];

/// The packet id of a bare PUBACK: type 4, no flags, remaining length 2 (no reason
/// code, no properties) and a packet id other than 0. A box sends one per QoS 1
/// PUBLISH; anything else (a reason code, packet id 0) is Python's to parse.
pub fn bare_puback_id(packet: &[u8]) -> Option<u16> {
    match *packet {
        [0x40, 0x02, high, low] if (high, low) != (0, 0) => Some(u16::from_be_bytes([high, low])),
        _ => None,
    }
}

/// DISCONNECT (MQTT 5) with reason 0x95, Packet too large, and no properties.
pub const DISCONNECT_TOO_LARGE: [u8; 4] = [0xE0, 0x02, 0x95, 0x00];
/// CONNACK (MQTT 5) refusing with 0x95, Packet too large: a CONNECT too large is
/// answered before any CONNACK, when DISCONNECT is not allowed yet.
pub const CONNACK_TOO_LARGE: [u8; 5] = [0x20, 0x03, 0x00, 0x95, 0x00];

/// The protocol level a CONNECT at the start of `head` announces (4: MQTT 3.1.1,
/// 5: MQTT 5.0), once enough of it has arrived: fixed header (type 1), remaining
/// length, protocol name "MQTT" (length-prefixed), then the level byte.
pub fn connect_protocol_level(head: &[u8]) -> Option<u8> {
    if head.first()? >> 4 != 1 {
        return None;
    }
    let mut at = 1;
    while head.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    let name = head.get(at + 1..at + 7)?;
    if name != b"\x00\x04MQTT" {
        return None;
    }
    head.get(at + 7).copied()
}

/// Why a stream is not MQTT we take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// A packet of `size` bytes (fixed header included) is larger than `max`.
    TooLarge {
        size: u64,
        max: usize,
    },
    Malformed(&'static str),
}

/// The length of the whole packet at the start of `buf`, once its fixed header
/// has arrived (`None`: more bytes are needed to know, or the packet is incomplete).
pub fn packet_length(buf: &[u8], max_size: usize) -> Result<Option<usize>, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 == 0 {
        return Err(FramingError::Malformed("packet type 0 is reserved"));
    }
    let mut remaining: u64 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let size = 1 + (i as u64 + 1) + remaining;
            if size > max_size as u64 {
                return Err(FramingError::TooLarge {
                    size,
                    max: max_size,
                });
            }
            let size = size as usize;
            return Ok((buf.len() >= size).then_some(size));
        }
    }
    Err(FramingError::Malformed(
        "remaining length is longer than four bytes",
    ))
}

/// The bytes of a packet that has not fully arrived (empty, unallocated, between packets).
#[derive(Debug, Default)]
pub struct Framer {
    partial: Vec<u8>,
}

impl Framer {
    /// Append the whole packets of (buffered bytes +) `data` to `packets`, at most
    /// `budget` of them; returns whether whole packets may still be buffered (then
    /// `feed(&[], ..)` goes on).
    pub fn feed(
        &mut self,
        data: &[u8],
        max_size: usize,
        budget: usize,
        packets: &mut Vec<Vec<u8>>,
    ) -> Result<bool, FramingError> {
        if self.partial.is_empty() {
            let (consumed, more) = split(data, max_size, budget, packets)?;
            if consumed < data.len() {
                self.partial = data[consumed..].to_vec();
            }
            return Ok(more);
        }
        let mut buffer = std::mem::take(&mut self.partial);
        buffer.extend_from_slice(data);
        let (consumed, more) = split(&buffer, max_size, budget, packets)?;
        if consumed < buffer.len() {
            buffer.drain(..consumed);
            self.partial = buffer;
        }
        Ok(more)
    }

    /// The bytes of the packet that has not fully arrived.
    pub fn partial(&self) -> &[u8] {
        &self.partial
    }

    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.partial.capacity()
    }
}

fn split(
    buf: &[u8],
    max_size: usize,
    budget: usize,
    packets: &mut Vec<Vec<u8>>,
) -> Result<(usize, bool), FramingError> {
    let mut offset = 0;
    let mut count = 0;
    while count < budget {
        match packet_length(&buf[offset..], max_size)? {
            Some(length) => {
                packets.push(buf[offset..offset + length].to_vec());
                offset += length;
                count += 1;
            }
            None => return Ok((offset, false)),
        }
    }
    Ok((offset, offset < buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_pubacks_only() {
        assert_eq!(bare_puback_id(&[0x40, 0x02, 0x00, 0x01]), Some(1));
        assert_eq!(bare_puback_id(&[0x40, 0x02, 0xFF, 0xFF]), Some(0xFFFF));
        assert_eq!(bare_puback_id(&[0x40, 0x02, 0x00, 0x00]), None); // packet id 0
        assert_eq!(bare_puback_id(&[0x40, 0x03, 0x00, 0x01, 0x10]), None); // a reason
        assert_eq!(bare_puback_id(&[0x50, 0x02, 0x00, 0x01]), None); // PUBREC
        assert_eq!(bare_puback_id(&[0x41, 0x02, 0x00, 0x01]), None); // flags set
        assert_eq!(bare_puback_id(&PINGREQ), None);
    }

    #[test]
    fn the_connect_level_is_read_from_its_first_bytes() {
        let v5 = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02c1";
        let v311 = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
        assert_eq!(connect_protocol_level(v5), Some(5));
        assert_eq!(connect_protocol_level(v311), Some(4));
        assert_eq!(connect_protocol_level(&v5[..8]), None, "not all there yet");
        assert_eq!(connect_protocol_level(&v5[..9]), Some(5));
        // A long remaining length (a CONNECT of 2 MiB) shifts the name.
        assert_eq!(
            connect_protocol_level(b"\x10\x80\x80\x80\x01\x00\x04MQTT\x05"),
            Some(5)
        );
        assert_eq!(connect_protocol_level(b"\x30\x02\x00\x00"), None, "PUBLISH");
        assert_eq!(connect_protocol_level(b"\x10\x80\x80\x80\x80\x80"), None);
        assert_eq!(connect_protocol_level(b"\x10\x0c\x00\x06MQIsdp\x03"), None);
        assert_eq!(connect_protocol_level(b""), None);
    }

    fn publish(payload_len: usize) -> Vec<u8> {
        // PUBLISH QoS 0, topic "t", then the payload; remaining length as a varint.
        let mut body = vec![0x00, 0x01, b't'];
        body.extend(std::iter::repeat(b'x').take(payload_len));
        let mut packet = vec![0x30];
        let mut length = body.len();
        loop {
            let mut byte = (length % 128) as u8;
            length /= 128;
            if length > 0 {
                byte |= 0x80;
            }
            packet.push(byte);
            if length == 0 {
                break;
            }
        }
        packet.extend(body);
        packet
    }

    #[test]
    fn whole_packets_in_one_read() {
        let mut stream = PINGREQ.to_vec();
        stream.extend(publish(10));
        stream.extend(PINGREQ);
        let mut framer = Framer::default();
        let mut packets = Vec::new();
        assert!(!framer.feed(&stream, 1024, 100, &mut packets).unwrap());
        assert_eq!(
            packets,
            vec![PINGREQ.to_vec(), publish(10), PINGREQ.to_vec()]
        );
        assert_eq!(framer.buffered(), 0);
        assert_eq!(framer.heap_bytes(), 0, "no buffer kept between packets");
    }

    #[test]
    fn a_packet_split_at_every_byte() {
        let packet = publish(300); // two-byte remaining length
        for cut in 1..packet.len() {
            let mut framer = Framer::default();
            let mut packets = Vec::new();
            framer
                .feed(&packet[..cut], 1024, 100, &mut packets)
                .unwrap();
            assert!(packets.is_empty());
            framer
                .feed(&packet[cut..], 1024, 100, &mut packets)
                .unwrap();
            assert_eq!(packets, vec![packet.clone()], "cut at {cut}");
            assert_eq!(framer.buffered(), 0);
        }
    }

    #[test]
    fn too_large_is_refused_from_the_fixed_header_alone() {
        // 5 bytes of a packet announcing 200 MB: refused before the body arrives.
        let header = [0x30, 0x80, 0x80, 0x80, 0x60];
        let error = packet_length(&header, 1024 * 1024).unwrap_err();
        assert!(
            matches!(error, FramingError::TooLarge { size, max: 1_048_576 } if size > 200_000_000)
        );
        let mut framer = Framer::default();
        assert!(framer
            .feed(&header, 1024 * 1024, 10, &mut Vec::new())
            .is_err());
    }

    #[test]
    fn the_limit_counts_the_fixed_header() {
        let packet = publish(10); // 1 + 1 + 13 = 15 bytes
        assert_eq!(packet.len(), 15);
        assert_eq!(packet_length(&packet, 15).unwrap(), Some(15));
        assert!(packet_length(&packet, 14).is_err());
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(
            packet_length(&[0x00, 0x00], 100),
            Err(FramingError::Malformed("packet type 0 is reserved"))
        );
        assert!(matches!(
            packet_length(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX),
            Err(FramingError::Malformed(_))
        ));
        assert_eq!(packet_length(&[0x30, 0xFF, 0xFF], 1 << 30), Ok(None));
    }

    #[test]
    fn the_budget_leaves_the_rest_buffered() {
        let stream: Vec<u8> = PINGREQ.iter().copied().cycle().take(20).collect();
        let mut framer = Framer::default();
        let mut packets = Vec::new();
        assert!(framer.feed(&stream, 100, 4, &mut packets).unwrap());
        assert_eq!(packets.len(), 4);
        assert_eq!(framer.buffered(), 12);
        assert!(framer.feed(&[], 100, 4, &mut packets).unwrap());
        assert!(!framer.feed(&[], 100, 4, &mut packets).unwrap());
        assert_eq!(packets.len(), 10);
        assert_eq!(framer.buffered(), 0);
    }
}
