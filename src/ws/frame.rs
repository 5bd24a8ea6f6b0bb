//! WebSocket frame headers (RFC 6455 §5.2): parse, encode, and the errors a
//! bad frame maps to.
//!
//! Sans-io: `FrameHeader::parse` takes the bytes received so far and returns
//! `Parse::NeedMore` (consuming nothing) until a whole header is there. It only
//! checks syntax; the rules that depend on the connection's state (masking,
//! fragmentation, limits) live in [`crate::ws::codec`].

/// Result of a parse over a partial input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse<T> {
    /// A value and the number of bytes it used.
    Done(T, usize),
    /// Not enough bytes yet; at least this many are needed in total.
    NeedMore(usize),
}

/// Frame opcodes (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    /// 0x3-0x7 and 0xB-0xF: reserved, always a protocol error.
    Reserved(u8),
}

impl OpCode {
    pub fn from_u8(v: u8) -> OpCode {
        match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
            OpCode::Reserved(v) => v,
        }
    }

    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits. No extension is negotiated, so any set bit is an error.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// Largest header: 2 bytes + 8-byte length + 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;
/// Largest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

impl FrameHeader {
    /// Parse a header from the start of `buf`.
    ///
    /// Returns `Err` only for a 64-bit length with its most significant bit set
    /// (RFC 6455 §5.2), which no later bytes can fix.
    pub fn parse(buf: &[u8]) -> Result<Parse<FrameHeader>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(Parse::NeedMore(2));
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let masked = b1 & 0x80 != 0;
        let (len_bytes, short) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(n as u64)),
        };
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(Parse::NeedMore(header_len));
        }
        let payload_len = match short {
            Some(n) => n,
            None if len_bytes == 2 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
            None => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                n
            }
        };
        let mask = if masked {
            let at = 2 + len_bytes;
            Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
        } else {
            None
        };
        Ok(Parse::Done(
            FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv: (b0 >> 4) & 0x7,
                opcode: OpCode::from_u8(b0 & 0x0f),
                mask,
                payload_len,
            },
            header_len,
        ))
    }

    /// Encode into `out`, returning the number of bytes written (at most [`MAX_HEADER_LEN`]).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0x7) << 4) | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = 2;
        if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
        } else if self.payload_len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            n = 4;
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            n = 10;
        }
        if let Some(key) = self.mask {
            out[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        n
    }
}

/// Append a whole frame (header and payload, masked with `mask` if given) to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    write_frame_parts(out, opcode, &[payload], mask);
}

/// Append one whole frame whose payload is `parts` joined (an answer with
/// another id put in, without joining it first).
pub fn write_frame_parts(
    out: &mut Vec<u8>,
    opcode: OpCode,
    parts: &[&[u8]],
    mask: Option<[u8; 4]>,
) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask,
        payload_len: len as u64,
    };
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    out.reserve(n + len);
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    for p in parts {
        out.extend_from_slice(p);
    }
    if let Some(key) = mask {
        crate::ws::mask::apply_mask(&mut out[start..], key, 0);
    }
}

/// Append a close frame with `code` and `reason` (reason cut to fit 125 bytes on a char boundary).
pub fn write_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str, mask: Option<[u8; 4]>) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let n = match code {
        None => 0,
        Some(code) => {
            payload[..2].copy_from_slice(&code.to_be_bytes());
            let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
            2 + end
        }
    };
    write_frame(out, OpCode::Close, &payload[..n], mask);
}

/// Close status codes the gateway sends (RFC 6455 §7.4.1, IANA registry).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// True for a status code that may appear in a Close frame on the wire.
///
/// 1005, 1006 and 1015 are for local reporting only; 1004 and 1016-2999 are
/// reserved for the protocol; 3000-4999 belong to libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A violation of RFC 6455 by the peer, or of a configured limit. Each maps to
/// exactly one close code, sent before the connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1-3 set without a negotiated extension.
    ReservedBits,
    /// Opcode 0x3-0x7 or 0xB-0xF.
    ReservedOpcode,
    /// A client frame without a mask (§5.1).
    UnmaskedClientFrame,
    /// A server frame with a mask (§5.1).
    MaskedServerFrame,
    /// A control frame with a payload over 125 bytes.
    ControlFrameTooLong,
    /// A control frame with FIN clear.
    FragmentedControlFrame,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A 64-bit length with the top bit set.
    InvalidLength,
    /// A close frame with a one-byte payload or a status code not allowed on the wire.
    InvalidCloseFrame,
    /// A text message, or a close reason, that is not UTF-8.
    InvalidUtf8,
    /// A frame over the configured maximum frame size.
    FrameTooLarge,
    /// A message over the configured maximum message size.
    MessageTooLarge,
}

impl ProtocolError {
    /// The close code to send for this error.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge | ProtocolError::MessageTooLarge => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame and the log.
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode => "reserved opcode",
            ProtocolError::UnmaskedClientFrame => "client frame not masked",
            ProtocolError::MaskedServerFrame => "server frame masked",
            ProtocolError::ControlFrameTooLong => "control frame over 125 bytes",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented message",
            ProtocolError::InvalidLength => "invalid payload length",
            ProtocolError::InvalidCloseFrame => "invalid close frame",
            ProtocolError::InvalidUtf8 => "invalid UTF-8 in text",
            ProtocolError::FrameTooLarge => "frame too large",
            ProtocolError::MessageTooLarge => "message too large",
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_needs_more_until_the_header_is_whole() {
        let mut out = Vec::new();
        write_frame(&mut out, OpCode::Binary, &[7u8; 300], Some([1, 2, 3, 4]));
        assert_eq!(FrameHeader::parse(&out[..1]), Ok(Parse::NeedMore(2)));
        assert_eq!(FrameHeader::parse(&out[..3]), Ok(Parse::NeedMore(8)));
        let Ok(Parse::Done(h, n)) = FrameHeader::parse(&out) else {
            panic!()
        };
        assert_eq!(n, 8);
        assert_eq!(h.payload_len, 300);
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Binary);
    }

    #[test]
    fn encode_round_trips_every_length_form() {
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = FrameHeader {
                    fin: false,
                    rsv: 0,
                    opcode: OpCode::Text,
                    mask,
                    payload_len: len,
                };
                let mut b = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut b);
                assert_eq!(FrameHeader::parse(&b[..n]), Ok(Parse::Done(h, n)));
            }
        }
    }

    #[test]
    fn top_bit_of_64_bit_length_is_an_error() {
        let mut b = vec![0x82, 127];
        b.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(FrameHeader::parse(&b), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn close_codes_allowed_on_the_wire() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_close_code(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(bad), "{bad}");
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let mut out = Vec::new();
        let reason = "é".repeat(100);
        write_close(&mut out, Some(1000), &reason, None);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
