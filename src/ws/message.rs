//! Whole messages out of a frame stream, sans-io: the [`Decoder`] checks
//! and walks the frames; the [`Assembler`] also keeps what its user needs of
//! each data message, unmasked:
//!
//! - all of it (a shared session rewrites each request; the health probe,
//!   the load generator and the mock node read answers);
//! - its start only (`keep` bytes: a pinned relay reads an answer's id from
//!   its first bytes and forwards the frames untouched);
//! - and optionally the frames as received (`raw`: a routed session holds a
//!   request until it is whole, then forwards its frames unchanged).
//!
//! Control frames come out whole; answering them (the obligations: a pong
//! for a ping, a close for a close) is the caller's, through its one writer.

use super::codec::{ControlFrame, Decoder, Limits, Role, Step};
use super::frame::ProtocolError;
use super::mask::apply_mask;

/// What the next bytes were.
#[derive(Debug)]
pub enum Event {
    /// `n` bytes of data frames (header or payload), taken in; `end` when
    /// they complete a message (then see [`Assembler::message`]).
    Data { n: usize, end: bool },
    /// A whole control frame of `n` bytes.
    Control(ControlFrame, usize),
    /// The buffer ends inside a header or a control frame.
    NeedMore,
}

/// A [`Decoder`] that keeps each message's payload, unmasked, up to `keep`
/// bytes, and (if asked) its frames as received.
#[derive(Debug, Clone)]
pub struct Assembler {
    dec: Decoder,
    keep: usize,
    keep_raw: bool,
    payload: Vec<u8>,
    raw: Vec<u8>,
    /// The message is longer than `keep`: `payload` holds its start.
    cut: bool,
    /// Frames kept as received up to this many bytes; a larger message is
    /// framed again from its payload ([`Assembler::take_frames`]).
    raw_max: usize,
    /// The message's frames went past `raw_max` (`raw` was dropped).
    raw_cut: bool,
    /// Payload capacity kept between messages (more is freed).
    retain: usize,
    /// Payload bytes of the message in progress, and of the last one done.
    length: usize,
    last_length: usize,
}

impl Assembler {
    /// `keep`: payload bytes kept per message (`usize::MAX`: all of it; the
    /// decoder's `max_message` bounds it). `keep_raw`: keep the frames too.
    pub fn new(role: Role, limits: Limits, keep: usize, keep_raw: bool) -> Assembler {
        Assembler {
            dec: Decoder::new(role, limits),
            keep,
            keep_raw,
            payload: Vec::new(),
            raw: Vec::new(),
            cut: false,
            raw_max: usize::MAX,
            raw_cut: false,
            retain: 64 * 1024,
            length: 0,
            last_length: 0,
        }
    }

    /// Keep the frames as received only up to `bytes` per message (a
    /// whole payload is kept: a larger message is framed again from it).
    pub fn raw_max(mut self, bytes: usize) -> Assembler {
        self.raw_max = bytes;
        self
    }

    /// Keep up to `bytes` of payload capacity between messages (a shared
    /// connection's reader, one per node, reuses its buffer for large answers).
    pub fn retain(mut self, bytes: usize) -> Assembler {
        self.retain = bytes;
        self
    }

    pub fn decoder(&self) -> &Decoder {
        &self.dec
    }

    /// Walk the start of `buf` by one step.
    pub fn step(&mut self, buf: &[u8]) -> Result<Event, ProtocolError> {
        let position = self.dec.payload_position();
        match self.dec.step(buf)? {
            Step::Forward(n) => {
                let bytes = &buf[..n];
                if self.keep_raw && !self.raw_cut {
                    if self.raw.len() + n > self.raw_max {
                        self.raw_cut = true;
                        self.raw = Vec::new();
                    } else {
                        self.raw.extend_from_slice(bytes);
                    }
                }
                if let Some((mask, offset)) = position {
                    self.length += n;
                    let room = self.keep.saturating_sub(self.payload.len());
                    let take = n.min(room);
                    self.cut |= take < n;
                    let start = self.payload.len();
                    self.payload.extend_from_slice(&bytes[..take]);
                    if let Some(key) = mask {
                        apply_mask(&mut self.payload[start..], key, offset);
                    }
                }
                let end = self.dec.at_message_boundary();
                if end {
                    self.last_length = std::mem::take(&mut self.length);
                }
                Ok(Event::Data { n, end })
            }
            Step::Control(frame, n) => Ok(Event::Control(frame, n)),
            Step::NeedMore => Ok(Event::NeedMore),
        }
    }

    /// The payload kept of the message in progress or just completed.
    pub fn message(&self) -> &[u8] {
        &self.payload
    }

    /// Payload bytes of the last whole message (kept or not).
    pub fn last_length(&self) -> usize {
        self.last_length
    }

    /// The message was longer than what was kept.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// The message is text (else binary).
    pub fn is_text(&self) -> bool {
        self.dec.message_is_text()
    }

    /// The frames of the message so far, as received (with `keep_raw`).
    pub fn take_raw(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.raw)
    }

    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// The frames of a whole message: as received, or, past `raw_max`, its
    /// payload as one frame masked with `mask` (a client's message towards
    /// a node must be masked).
    pub fn take_frames(&mut self, mask: Option<[u8; 4]>) -> Vec<u8> {
        if !std::mem::take(&mut self.raw_cut) {
            return self.take_raw();
        }
        let opcode = if self.is_text() {
            super::frame::OpCode::Text
        } else {
            super::frame::OpCode::Binary
        };
        let mut f = Vec::with_capacity(self.payload.len() + super::frame::MAX_HEADER_LEN);
        super::frame::write_frame(&mut f, opcode, &self.payload, mask);
        f
    }

    /// Forget the kept payload (after a whole message was handled); a large
    /// buffer is freed rather than kept for the next small one.
    pub fn clear(&mut self) {
        self.payload.clear();
        self.cut = false;
        if self.payload.capacity() > self.retain {
            self.payload = Vec::new();
        }
    }

    /// Data messages completed so far.
    pub fn messages(&self) -> u64 {
        self.dec.messages()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{write_frame, OpCode};

    fn frames(parts: &[(OpCode, bool, &[u8])], mask: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (op, fin, payload) in parts {
            let start = out.len();
            write_frame(&mut out, *op, payload, mask.then_some([1, 2, 3, 4]));
            if !fin {
                out[start] &= 0x7f;
            }
        }
        out
    }

    fn run(a: &mut Assembler, wire: &[u8], piece: usize) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for chunk in wire.chunks(piece) {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                match a.step(&buf[pos..]).unwrap() {
                    Event::Data { n, end } => {
                        pos += n;
                        if end {
                            out.push((a.message().to_vec(), a.is_cut()));
                            a.clear();
                        }
                    }
                    Event::Control(_, n) => pos += n,
                    Event::NeedMore => break,
                }
            }
            buf.drain(..pos);
        }
        out
    }

    #[test]
    fn fragmented_masked_messages_come_out_whole_and_unmasked_in_any_piece_size() {
        let wire = frames(
            &[
                (OpCode::Text, false, b"{\"id\":"),
                (OpCode::Ping, true, b"p"),
                (OpCode::Continuation, true, b"1}"),
                (OpCode::Binary, true, b"xyz"),
            ],
            true,
        );
        for piece in 1..wire.len() {
            let mut a = Assembler::new(Role::Client, Limits::default(), usize::MAX, false);
            let got = run(&mut a, &wire, piece);
            assert_eq!(
                got,
                [(b"{\"id\":1}".to_vec(), false), (b"xyz".to_vec(), false)],
                "piece {piece}"
            );
            assert_eq!(a.messages(), 2);
        }
    }

    #[test]
    fn only_the_start_is_kept_when_asked_and_raw_frames_are_unchanged() {
        let wire = frames(
            &[(OpCode::Text, true, b"{\"id\":7,\"result\":\"long\"}")],
            false,
        );
        let mut a = Assembler::new(Role::Server, Limits::default(), 8, true);
        let got = run(&mut a, &wire, 5);
        assert_eq!(got, [(b"{\"id\":7,".to_vec(), true)]);
        assert_eq!(a.take_raw(), wire);
        assert!(a.is_text());
    }

    #[test]
    fn a_message_past_raw_max_is_framed_again_from_its_payload() {
        let wire = frames(
            &[
                (OpCode::Text, false, b"{\"id\":1,"),
                (OpCode::Continuation, true, b"\"method\":\"m\"}"),
            ],
            true,
        );
        let whole = |a: &mut Assembler| {
            let mut pos = 0;
            while pos < wire.len() {
                match a.step(&wire[pos..]).unwrap() {
                    Event::Data { n, .. } | Event::Control(_, n) => pos += n,
                    Event::NeedMore => unreachable!("all of it is here"),
                }
            }
        };
        let mut a = Assembler::new(Role::Client, Limits::default(), usize::MAX, true).raw_max(8);
        whole(&mut a);
        let again = a.take_frames(Some([9, 8, 7, 6]));
        let mut b = Assembler::new(Role::Client, Limits::default(), usize::MAX, false);
        let got = run(&mut b, &again, 100);
        assert_eq!(got, [(b"{\"id\":1,\"method\":\"m\"}".to_vec(), false)]);
        // Below raw_max, the frames as they came.
        let mut c =
            Assembler::new(Role::Client, Limits::default(), usize::MAX, true).raw_max(1 << 20);
        whole(&mut c);
        assert_eq!(c.take_frames(None), wire);
    }
}
