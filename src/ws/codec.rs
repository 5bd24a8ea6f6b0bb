//! The streaming frame decoder used by the relay: bytes in, decisions out.
//!
//! The relay never re-encodes data frames. It feeds each received buffer to a
//! [`Decoder`], which walks it and says, step by step, what the next bytes are:
//!
//! - [`Step::Forward`]`(n)`: `n` bytes of data-frame header or payload, checked
//!   and to be passed on as they are (a masked client frame stays masked);
//! - [`Step::Control`]: a whole control frame (ping, pong, close), unmasked
//!   into a small copy; the gateway answers it itself and does not forward it;
//! - [`Step::NeedMore`]: the buffer ends inside a frame header or a control
//!   frame; the caller keeps those bytes (at most 14 + 125) and retries with more.
//!
//! Payloads stream through: a 16 MiB frame never needs 16 MiB of memory. What
//! is checked on the way (RFC 6455 §5): masking by role, RSV bits, reserved
//! opcodes, control frame size and FIN, fragmentation order, declared lengths
//! against the limits before anything is buffered, UTF-8 of text messages
//! across frames (unmasked into a stack scratch, so the forwarded bytes stay
//! untouched), and close frame payloads.

use super::frame::{
    is_valid_close_code, FrameHeader, OpCode, Parse, ProtocolError, MAX_CONTROL_PAYLOAD,
};
use super::mask::{apply_mask, unmask_into};
use super::utf8::Utf8Validator;

/// Which peer the frames come from; decides the masking rule (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Frames from a client: must be masked.
    Client,
    /// Frames from a server: must not be masked.
    Server,
}

/// Size limits, checked against declared lengths before any payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: u64,
    pub max_message: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Same as tungstenite's defaults: large enough for any JSON-RPC response
        // a node sends (Substrate caps responses at 15 MiB by default).
        Limits {
            max_frame: 16 << 20,
            max_message: 64 << 20,
        }
    }
}

/// A whole control frame with its payload unmasked.
#[derive(Clone, Copy)]
pub struct ControlFrame {
    pub opcode: OpCode,
    len: u8,
    payload: [u8; MAX_CONTROL_PAYLOAD],
}

impl ControlFrame {
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.len as usize]
    }

    /// For a close frame: its status code, if it has one (checked valid).
    pub fn close_code(&self) -> Option<u16> {
        let p = self.payload();
        (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
    }

    /// For a close frame: its reason (checked UTF-8).
    pub fn close_reason(&self) -> &str {
        let p = self.payload();
        if p.len() > 2 {
            std::str::from_utf8(&p[2..]).unwrap_or("")
        } else {
            ""
        }
    }
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlFrame")
            .field("opcode", &self.opcode)
            .field("payload", &self.payload())
            .finish()
    }
}

/// What the next bytes of the buffer are.
#[derive(Debug)]
pub enum Step {
    /// The next `n` bytes are data-frame bytes to forward unchanged.
    Forward(usize),
    /// A control frame of `n` bytes (header included) to consume.
    Control(ControlFrame, usize),
    /// The buffer ends inside a header or control frame: wait for more bytes.
    NeedMore,
}

#[derive(Debug, Clone)]
struct Payload {
    remaining: u64,
    offset: usize,
    mask: Option<[u8; 4]>,
    text: bool,
    fin: bool,
}

#[derive(Debug, Clone)]
struct Message {
    text: bool,
    len: u64,
}

/// Decoder state for one direction of one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    role: Role,
    limits: Limits,
    payload: Option<Payload>,
    message: Option<Message>,
    utf8: Utf8Validator,
    /// Data frames completed (FIN) since creation: for statistics and routing.
    messages: u64,
    /// The message in progress (or the last one) is text.
    text: bool,
}

/// Stack scratch for unmasking text before UTF-8 validation: small, because it
/// is zeroed on every call and most JSON-RPC requests are a few hundred bytes.
const SCRATCH: usize = 512;

impl Decoder {
    pub fn new(role: Role, limits: Limits) -> Decoder {
        Decoder {
            role,
            limits,
            payload: None,
            message: None,
            utf8: Utf8Validator::default(),
            messages: 0,
            text: false,
        }
    }

    /// True between frames, where a control frame may be written into the same stream.
    pub fn at_frame_boundary(&self) -> bool {
        self.payload.is_none()
    }

    /// True between messages: no frame and no fragmented message in progress.
    pub fn at_message_boundary(&self) -> bool {
        self.payload.is_none() && self.message.is_none()
    }

    /// When the next bytes are payload: its mask key and its offset in the
    /// frame's payload (to unmask a copy of them).
    pub fn payload_position(&self) -> Option<(Option<[u8; 4]>, usize)> {
        self.payload.as_ref().map(|p| (p.mask, p.offset))
    }

    /// Whether the message in progress, or the last one, is text (else binary).
    pub fn message_is_text(&self) -> bool {
        self.text
    }

    /// Number of complete data messages seen.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Decide what the bytes at the start of `buf` are. Never reads past `buf`.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, ProtocolError> {
        if buf.is_empty() {
            return Ok(Step::NeedMore);
        }
        if let Some(p) = &mut self.payload {
            let n = (p.remaining.min(buf.len() as u64)) as usize;
            if p.text {
                validate_text(&mut self.utf8, &buf[..n], p.mask, p.offset)?;
                // Check the end of the message before any state changes, so that
                // after an error the decoder still says it is inside this frame.
                if p.fin && p.remaining == n as u64 && !self.utf8.is_complete() {
                    return Err(ProtocolError::InvalidUtf8);
                }
            }
            p.remaining -= n as u64;
            p.offset += n;
            if p.remaining == 0 {
                let fin = p.fin;
                self.payload = None;
                if fin {
                    self.finish_message()?;
                }
            }
            return Ok(Step::Forward(n));
        }

        let (h, header_len) = match FrameHeader::parse(buf)? {
            Parse::Done(h, n) => (h, n),
            Parse::NeedMore(_) => return Ok(Step::NeedMore),
        };
        if h.rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        if let OpCode::Reserved(_) = h.opcode {
            return Err(ProtocolError::ReservedOpcode);
        }
        match (self.role, h.mask.is_some()) {
            (Role::Client, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Server, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }

        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
            let len = h.payload_len as usize;
            let total = header_len + len;
            if buf.len() < total {
                return Ok(Step::NeedMore);
            }
            let mut frame = ControlFrame {
                opcode: h.opcode,
                len: len as u8,
                payload: [0; MAX_CONTROL_PAYLOAD],
            };
            frame.payload[..len].copy_from_slice(&buf[header_len..total]);
            if let Some(key) = h.mask {
                apply_mask(&mut frame.payload[..len], key, 0);
            }
            if h.opcode == OpCode::Close {
                check_close_payload(frame.payload())?;
            }
            return Ok(Step::Control(frame, total));
        }

        let text = match (h.opcode, &self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(m)) => m.text,
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (op, None) => {
                let text = op == OpCode::Text;
                self.message = Some(Message { text, len: 0 });
                self.text = text;
                self.utf8.reset();
                text
            }
        };
        if h.payload_len > self.limits.max_frame {
            return Err(ProtocolError::FrameTooLarge);
        }
        let message = self.message.as_mut().expect("message started above");
        message.len += h.payload_len;
        if message.len > self.limits.max_message {
            return Err(ProtocolError::MessageTooLarge);
        }
        if h.payload_len == 0 {
            if h.fin {
                self.finish_message()?;
            }
        } else {
            self.payload = Some(Payload {
                remaining: h.payload_len,
                offset: 0,
                mask: h.mask,
                text,
                fin: h.fin,
            });
        }
        Ok(Step::Forward(header_len))
    }

    fn finish_message(&mut self) -> Result<(), ProtocolError> {
        let message = self
            .message
            .take()
            .expect("a data frame belongs to a message");
        if message.text && !self.utf8.is_complete() {
            return Err(ProtocolError::InvalidUtf8);
        }
        self.messages += 1;
        Ok(())
    }
}

fn validate_text(
    utf8: &mut Utf8Validator,
    data: &[u8],
    mask: Option<[u8; 4]>,
    offset: usize,
) -> Result<(), ProtocolError> {
    let Some(key) = mask else {
        return utf8.feed(data).map_err(|_| ProtocolError::InvalidUtf8);
    };
    let mut scratch = [0u8; SCRATCH];
    let mut at = 0;
    while at < data.len() {
        let n = (data.len() - at).min(SCRATCH);
        unmask_into(&mut scratch[..n], &data[at..at + n], key, offset + at);
        utf8.feed(&scratch[..n])
            .map_err(|_| ProtocolError::InvalidUtf8)?;
        at += n;
    }
    Ok(())
}

fn check_close_payload(p: &[u8]) -> Result<(), ProtocolError> {
    match p.len() {
        0 => Ok(()),
        1 => Err(ProtocolError::InvalidCloseFrame),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseFrame);
            }
            std::str::from_utf8(&p[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{write_close, write_frame};

    const KEY: Option<[u8; 4]> = Some([0xa1, 0xb2, 0xc3, 0xd4]);

    fn frame(op: OpCode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, op, payload, mask);
        if !fin {
            out[0] &= 0x7f;
        }
        out
    }

    /// Forwarded bytes, control frames, first error.
    type Run = (Vec<u8>, Vec<(OpCode, Vec<u8>)>, Option<ProtocolError>);

    /// Run the decoder over `input` fed in pieces of `chunk` bytes, the way the
    /// relay does (unconsumed bytes carried over). Returns the forwarded bytes,
    /// the control frames, and the first error.
    fn run(role: Role, input: &[u8], chunk: usize) -> Run {
        let mut d = Decoder::new(
            role,
            Limits {
                max_frame: 1 << 20,
                max_message: 1 << 21,
            },
        );
        let mut fwd = Vec::new();
        let mut ctl = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            pending.extend_from_slice(piece);
            let mut at = 0;
            loop {
                match d.step(&pending[at..]) {
                    Ok(Step::Forward(n)) => {
                        fwd.extend_from_slice(&pending[at..at + n]);
                        at += n;
                    }
                    Ok(Step::Control(c, n)) => {
                        ctl.push((c.opcode, c.payload().to_vec()));
                        at += n;
                    }
                    Ok(Step::NeedMore) => break,
                    Err(e) => return (fwd, ctl, Some(e)),
                }
            }
            pending.drain(..at);
        }
        (fwd, ctl, None)
    }

    #[test]
    fn data_frames_pass_through_byte_for_byte_in_any_piece_size() {
        let mut input = frame(OpCode::Text, false, "héllo ".as_bytes(), KEY);
        input.extend(frame(OpCode::Ping, true, b"p", KEY));
        input.extend(frame(OpCode::Continuation, true, "wörld".as_bytes(), KEY));
        input.extend(frame(OpCode::Binary, true, &[0xff; 70000], KEY));
        let data: Vec<u8> = input
            .iter()
            .copied()
            .enumerate()
            .filter(|&(i, _)| {
                let ping_start = frame(OpCode::Text, false, "héllo ".as_bytes(), KEY).len();
                !(ping_start..ping_start + 7).contains(&i)
            })
            .map(|(_, b)| b)
            .collect();
        for chunk in [1, 2, 3, 7, 64, 4096, 1 << 20] {
            let (fwd, ctl, err) = run(Role::Client, &input, chunk);
            assert_eq!(err, None, "chunk {chunk}");
            assert_eq!(fwd, data, "chunk {chunk}");
            assert_eq!(ctl, vec![(OpCode::Ping, b"p".to_vec())]);
        }
    }

    #[test]
    fn masking_is_enforced_by_role() {
        let unmasked = frame(OpCode::Text, true, b"x", None);
        assert_eq!(
            run(Role::Client, &unmasked, 64).2,
            Some(ProtocolError::UnmaskedClientFrame)
        );
        let masked = frame(OpCode::Text, true, b"x", KEY);
        assert_eq!(
            run(Role::Server, &masked, 64).2,
            Some(ProtocolError::MaskedServerFrame)
        );
    }

    #[test]
    fn reserved_bits_and_opcodes_are_rejected() {
        let mut f = frame(OpCode::Text, true, b"x", KEY);
        f[0] |= 0x40;
        assert_eq!(
            run(Role::Client, &f, 64).2,
            Some(ProtocolError::ReservedBits)
        );
        for op in [3u8, 7, 0xb, 0xf] {
            let f = frame(OpCode::Reserved(op), true, b"", KEY);
            assert_eq!(
                run(Role::Client, &f, 64).2,
                Some(ProtocolError::ReservedOpcode)
            );
        }
    }

    #[test]
    fn control_frame_rules() {
        let long = frame(OpCode::Ping, true, &[0; 126], KEY);
        assert_eq!(
            run(Role::Client, &long, 200).2,
            Some(ProtocolError::ControlFrameTooLong)
        );
        let fragmented = frame(OpCode::Ping, false, b"", KEY);
        assert_eq!(
            run(Role::Client, &fragmented, 64).2,
            Some(ProtocolError::FragmentedControlFrame)
        );
    }

    #[test]
    fn fragmentation_order_is_enforced() {
        let cont = frame(OpCode::Continuation, true, b"x", KEY);
        assert_eq!(
            run(Role::Client, &cont, 64).2,
            Some(ProtocolError::UnexpectedContinuation)
        );
        let mut two = frame(OpCode::Text, false, b"a", KEY);
        two.extend(frame(OpCode::Text, true, b"b", KEY));
        assert_eq!(
            run(Role::Client, &two, 64).2,
            Some(ProtocolError::ExpectedContinuation)
        );
    }

    #[test]
    fn invalid_utf8_fails_fast_even_mid_frame() {
        let mut payload = b"valid ".to_vec();
        payload.extend_from_slice(b"\xf4\x90\x80\x80 and much more text after the bad bytes");
        let f = frame(OpCode::Text, true, &payload, KEY);
        let (fwd, _, err) = run(Role::Client, &f, 9);
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
        assert!(fwd.len() < f.len(), "failed before the end of the frame");
        // A code point split across fragments is fine.
        let euro = "€".as_bytes();
        let mut ok = frame(OpCode::Text, false, &euro[..1], KEY);
        ok.extend(frame(OpCode::Continuation, true, &euro[1..], KEY));
        assert_eq!(run(Role::Client, &ok, 3).2, None);
        // A message ending inside a code point is not.
        let cut = frame(OpCode::Text, true, &euro[..2], None);
        assert_eq!(
            run(Role::Server, &cut, 3).2,
            Some(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn after_an_error_inside_a_frame_the_decoder_is_not_at_a_boundary() {
        // Regression: a text frame ending inside a code point (Autobahn 6.14.7)
        // used to leave the decoder "between frames" though only the header had
        // been forwarded, so a close frame was written inside the payload.
        let f = frame(OpCode::Text, true, b"\xef\xbf", KEY);
        let mut d = Decoder::new(Role::Client, Limits::default());
        let Ok(Step::Forward(n)) = d.step(&f) else {
            panic!()
        };
        assert_eq!(d.step(&f[n..]).unwrap_err(), ProtocolError::InvalidUtf8);
        assert!(!d.at_frame_boundary());
    }

    #[test]
    fn limits_are_checked_from_the_declared_length() {
        // Only the header is supplied: the limit trips before any payload exists.
        let h = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: KEY,
            payload_len: (1 << 20) + 1,
        };
        let mut b = [0u8; 14];
        let n = h.encode(&mut b);
        assert_eq!(
            run(Role::Client, &b[..n], 64).2,
            Some(ProtocolError::FrameTooLarge)
        );
        // Three 1 MiB fragments exceed the 2 MiB message limit.
        let mut three = frame(OpCode::Binary, false, &[0; 1 << 20], KEY);
        three.extend(frame(OpCode::Continuation, false, &[0; 1 << 20], KEY));
        three.extend(frame(OpCode::Continuation, true, &[0; 1 << 20], KEY));
        assert_eq!(
            run(Role::Client, &three, 1 << 16).2,
            Some(ProtocolError::MessageTooLarge)
        );
    }

    #[test]
    fn close_payloads_are_checked() {
        let mut one = Vec::new();
        write_frame(&mut one, OpCode::Close, &[3], KEY);
        assert_eq!(
            run(Role::Client, &one, 64).2,
            Some(ProtocolError::InvalidCloseFrame)
        );
        let mut bad_code = Vec::new();
        write_close(&mut bad_code, Some(1005), "", KEY);
        assert_eq!(
            run(Role::Client, &bad_code, 64).2,
            Some(ProtocolError::InvalidCloseFrame)
        );
        let mut bad_reason = Vec::new();
        write_frame(&mut bad_reason, OpCode::Close, b"\x03\xe8\xff", KEY);
        assert_eq!(
            run(Role::Client, &bad_reason, 64).2,
            Some(ProtocolError::InvalidUtf8)
        );
        let mut good = Vec::new();
        write_close(&mut good, Some(1000), "bye", KEY);
        let (_, ctl, err) = run(Role::Client, &good, 2);
        assert_eq!(err, None);
        assert_eq!(ctl[0].1, b"\x03\xe8bye");
    }
}
