//! HTTP/1.1 message body framing (RFC 9112 §6, §7.1), sans-io.
//!
//! Two parts, both pure:
//! - [`framing`] decides from a head how its body is delimited, strictly:
//!   a request whose framing another proxy could read differently (request
//!   smuggling) is refused, never guessed at. `Transfer-Encoding` must be
//!   exactly one field saying `chunked`; `Content-Length` must be one field
//!   of digits; not both; `Transfer-Encoding` only on HTTP/1.1.
//! - [`Chunked`] decodes a chunked body incrementally: each call consumes
//!   what it can of the bytes given and never looks at them again, so the
//!   cost is linear in the body whatever its chunk sizes. Chunk-size digits,
//!   extensions and the trailer section each have a limit, and every length
//!   is checked against the body limit with arithmetic that cannot overflow.
//!
//! Each error maps to one status ([`BodyError::status`]): 413 for a body over
//! the limit, 501 for a transfer coding the gateway does not implement, 400
//! for everything else.

use crate::ws::handshake::Head;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a body cannot be read. Each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// Framing fields that contradict each other or are malformed (400).
    Framing(&'static str),
    /// A transfer coding other than `chunked` (501).
    UnsupportedCoding,
    /// Chunked syntax broken (400).
    Chunk(&'static str),
    /// The body is larger than allowed (413).
    TooLarge,
    /// The trailer section is larger than allowed (400).
    TrailersTooLarge,
}

impl BodyError {
    pub fn status(self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            BodyError::UnsupportedCoding => 501,
            _ => 400,
        }
    }

    /// One line for the response body and the log.
    pub fn reason(self) -> &'static str {
        match self {
            BodyError::Framing(why) | BodyError::Chunk(why) => why,
            BodyError::UnsupportedCoding => "only Transfer-Encoding: chunked is implemented",
            BodyError::TooLarge => "request body too large",
            BodyError::TrailersTooLarge => "chunked trailer section too large",
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for BodyError {}

/// The body framing of a head (RFC 9112 §6.3). Requests: no framing field
/// means no body. Responses: no framing field means until close.
pub fn framing(head: &Head<'_, '_>, is_response: bool) -> Result<BodyKind, BodyError> {
    let mut codings = head.values("transfer-encoding");
    if let Some(coding) = codings.next() {
        // Two fields would mean chunked applied twice, or a coding list a
        // proxy in front may have joined differently: refuse both.
        if codings.next().is_some() {
            return Err(BodyError::Framing("more than one Transfer-Encoding field"));
        }
        if head.values("content-length").next().is_some() {
            return Err(BodyError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !is_response && head.minor_version == 0 {
            return Err(BodyError::Framing(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let mut tokens = coding.split(|&b| b == b',').map(trim);
        let last = tokens.next_back().unwrap_or(b"");
        if !last.eq_ignore_ascii_case(b"chunked") {
            // §6.3: a request whose final coding is not chunked has no
            // determinable length.
            return Err(if is_response {
                BodyError::UnsupportedCoding
            } else {
                BodyError::Framing("chunked must be the final transfer coding")
            });
        }
        if tokens.next().is_some() {
            return Err(BodyError::UnsupportedCoding);
        }
        return Ok(BodyKind::Chunked);
    }
    let mut lengths = head.values("content-length");
    match (lengths.next(), lengths.next()) {
        (None, _) if is_response => Ok(BodyKind::UntilClose),
        (None, _) => Ok(BodyKind::Length(0)),
        (Some(v), None) => content_length(trim(v)).map(BodyKind::Length),
        (Some(_), Some(_)) => Err(BodyError::Framing("more than one Content-Length field")),
    }
}

/// `Content-Length = 1*DIGIT` (no sign, no spaces inside, no list), at most
/// 19 digits so it fits a u64.
fn content_length(v: &[u8]) -> Result<u64, BodyError> {
    const BAD: BodyError = BodyError::Framing("invalid Content-Length");
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Limits of the chunked decoder besides the body size.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Largest body (sum of chunk sizes).
    pub max_body: usize,
    /// Longest chunk-size line, extensions included (bytes before CRLF).
    pub max_line: usize,
    /// Largest trailer section (all trailer lines with their CRLFs).
    pub max_trailers: usize,
}

impl ChunkLimits {
    pub fn new(max_body: usize) -> ChunkLimits {
        ChunkLimits {
            max_body,
            max_line: 1024,
            max_trailers: 8 * 1024,
        }
    }
}

/// Hex digits a chunk size may have: 15 keep every size below 2^60, so no
/// sum or comparison with it can overflow.
const MAX_SIZE_DIGITS: u32 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk-size digits: `digits` seen, `size` so far.
    Size {
        digits: u32,
        size: u64,
    },
    /// After the digits: optional whitespace, then `;ext` or CRLF.
    AfterSize {
        size: u64,
    },
    /// In chunk extensions, until CR.
    Ext {
        size: u64,
    },
    /// Saw CR of the size line; LF must follow.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to come.
    Data {
        left: u64,
    },
    /// After the data: CR then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// Saw CR of a trailer line; `empty` when the line was empty (the end).
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Incremental chunked-body decoder (RFC 9112 §7.1). Feed it the bytes that
/// follow the head, in any pieces; it appends chunk data to the body and
/// reports how many input bytes it consumed (they may be dropped).
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    limits: ChunkLimits,
    /// Bytes of the current size line so far.
    line: usize,
    /// Bytes of the trailer section so far.
    trailers: usize,
    /// Body bytes so far.
    body: u64,
}

impl Chunked {
    pub fn new(limits: ChunkLimits) -> Chunked {
        Chunked {
            state: State::Size { digits: 0, size: 0 },
            limits,
            line: 0,
            trailers: 0,
            body: 0,
        }
    }

    /// True once the last chunk and the trailer section are in.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input`, appending data to `body`. Returns the bytes
    /// consumed: all of `input`, or fewer when the body ended inside it (the
    /// rest is the next request).
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, BodyError> {
        let mut at = 0;
        while at < input.len() {
            let b = input[at];
            match self.state {
                State::Data { left } => {
                    let n = (input.len() - at).min(left as usize);
                    body.extend_from_slice(&input[at..at + n]);
                    at += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::Done => return Ok(at),
                _ => {}
            }
            at += 1;
            self.state = self.step(b)?;
            if self.state == State::Done {
                return Ok(at);
            }
        }
        Ok(at)
    }

    /// One byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<State, BodyError> {
        const NO_LF: BodyError = BodyError::Chunk("CR not followed by LF in chunked body");
        let in_line = matches!(
            self.state,
            State::Size { .. } | State::AfterSize { .. } | State::Ext { .. }
        );
        if in_line {
            self.line += 1;
            if self.line > self.limits.max_line {
                return Err(BodyError::Chunk("chunk size line too long"));
            }
        }
        Ok(match self.state {
            State::Size { digits, size } => match hex(b) {
                Some(d) if digits < MAX_SIZE_DIGITS => State::Size {
                    digits: digits + 1,
                    size: size << 4 | u64::from(d),
                },
                Some(_) => return Err(BodyError::Chunk("chunk size has too many digits")),
                None if digits == 0 => return Err(BodyError::Chunk("bad chunk size")),
                None => self.after_size(size, b)?,
            },
            State::AfterSize { size } => match b {
                b' ' | b'\t' => State::AfterSize { size },
                b';' => State::Ext { size },
                _ => return Err(BodyError::Chunk("bad chunk size")),
            },
            State::Ext { size } => match b {
                b'\r' => State::SizeLf { size },
                b'\t' | b' '..=b'~' | 0x80.. => State::Ext { size },
                _ => return Err(BodyError::Chunk("control character in chunk extension")),
            },
            State::SizeLf { size } => {
                if b != b'\n' {
                    return Err(NO_LF);
                }
                self.line = 0;
                self.chunk(size)?
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { digits: 0, size: 0 },
            State::DataCr | State::DataLf => {
                return Err(BodyError::Chunk("chunk data not followed by CRLF"))
            }
            State::TrailerStart | State::TrailerLine => {
                self.trailers += 1;
                if self.trailers > self.limits.max_trailers {
                    return Err(BodyError::TrailersTooLarge);
                }
                match b {
                    b'\r' => State::TrailerLf {
                        empty: self.state == State::TrailerStart,
                    },
                    b'\n' => return Err(BodyError::Chunk("bare LF in trailer section")),
                    _ => State::TrailerLine,
                }
            }
            State::TrailerLf { empty } => {
                if b != b'\n' {
                    return Err(NO_LF);
                }
                self.trailers += 1;
                if empty {
                    State::Done
                } else {
                    State::TrailerStart
                }
            }
            State::Data { .. } | State::Done => unreachable!("handled in feed"),
        })
    }

    /// The byte right after the size's digits.
    fn after_size(&self, size: u64, b: u8) -> Result<State, BodyError> {
        Ok(match b {
            b'\r' => State::SizeLf { size },
            b';' => State::Ext { size },
            b' ' | b'\t' => State::AfterSize { size },
            _ => return Err(BodyError::Chunk("bad chunk size")),
        })
    }

    /// A complete size line: the next chunk, or the trailers after the last.
    fn chunk(&mut self, size: u64) -> Result<State, BodyError> {
        if size == 0 {
            return Ok(State::TrailerStart);
        }
        // Both below 2^60: no overflow.
        self.body += size;
        if self.body > self.limits.max_body as u64 {
            return Err(BodyError::TooLarge);
        }
        Ok(State::Data { left: size })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode a whole chunked body from `buf` at once (fuzzing, tests, and a
/// node's buffered answer): the body and the bytes used, or `None` while
/// incomplete.
pub fn decode_chunked(
    buf: &[u8],
    limits: ChunkLimits,
) -> Result<Option<(Vec<u8>, usize)>, BodyError> {
    let mut d = Chunked::new(limits);
    let mut body = Vec::new();
    let used = d.feed(buf, &mut body)?;
    Ok(d.is_done().then_some((body, used)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::Parse;
    use crate::ws::handshake::parse_head;

    fn limits(max_body: usize) -> ChunkLimits {
        ChunkLimits::new(max_body)
    }

    fn framing_of(head: &str) -> Result<BodyKind, BodyError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let Ok(Parse::Done(head, _)) = parse_head(head.as_bytes(), &mut headers, 8192, 32) else {
            panic!("head does not parse: {head:?}");
        };
        framing(&head, false)
    }

    #[test]
    fn chunked_bodies_decode_in_any_piece_size() {
        let wire = b"4\r\n{\"id\r\n6;ext=1\r\n\":1}  \r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let end = wire.len() - 4;
        assert_eq!(
            decode_chunked(wire, limits(100)),
            Ok(Some((b"{\"id\":1}  ".to_vec(), end)))
        );
        for piece in 1..wire.len() {
            let mut d = Chunked::new(limits(100));
            let mut body = Vec::new();
            let mut at = 0;
            while !d.is_done() {
                let to = (at + piece).min(wire.len());
                at += d.feed(&wire[at..to], &mut body).unwrap();
            }
            assert_eq!(
                (body.as_slice(), at),
                (&b"{\"id\":1}  "[..], end),
                "piece {piece}"
            );
        }
        for cut in 0..end {
            assert_eq!(
                decode_chunked(&wire[..cut], limits(100)),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn chunk_sizes_are_bare_hex_digits() {
        for bad in [
            "zz\r\n", "+31\r\n", " 31 \r\n", "-1\r\n", "\r\n", "0x10\r\n", "1 2\r\n",
        ] {
            assert!(
                matches!(
                    decode_chunked(bad.as_bytes(), limits(100)),
                    Err(BodyError::Chunk(_))
                ),
                "{bad:?}"
            );
        }
        // Whitespace before an extension is allowed (BWS).
        assert_eq!(
            decode_chunked(b"1 ;a=b\r\nx\r\n0\r\n\r\n", limits(100)),
            Ok(Some((b"x".to_vec(), 16)))
        );
    }

    #[test]
    fn a_chunk_size_that_would_overflow_is_refused_not_wrapped() {
        // Regression: `ffffffffffffffff` wrapped `body.len() + size` and panicked a worker.
        let wire = b"1\r\n{\r\nffffffffffffffff\r\nAAAA";
        assert_eq!(
            decode_chunked(wire, limits(usize::MAX)),
            Err(BodyError::Chunk("chunk size has too many digits"))
        );
        assert_eq!(
            decode_chunked(b"fffffffffffffff\r\n", limits(usize::MAX)),
            Ok(None)
        );
        assert_eq!(
            decode_chunked(b"fffffffffffffff\r\n", limits(1 << 20)),
            Err(BodyError::TooLarge)
        );
        assert_eq!(
            decode_chunked(b"ff\r\n", limits(10)),
            Err(BodyError::TooLarge)
        );
    }

    #[test]
    fn trailers_and_extensions_are_bounded() {
        // Regression: 34 MiB of trailer lines were accepted.
        let mut wire = b"0\r\n".to_vec();
        for _ in 0..1000 {
            wire.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            decode_chunked(&wire, limits(100)),
            Err(BodyError::TrailersTooLarge)
        );
        let mut line = b"1;".to_vec();
        line.resize(2000, b'e');
        assert_eq!(
            decode_chunked(&line, limits(100)),
            Err(BodyError::Chunk("chunk size line too long"))
        );
        assert!(decode_chunked(b"1;a\nb\r\n", limits(100)).is_err());
        assert!(decode_chunked(b"1\r\nxy", limits(100)).is_err());
        assert!(decode_chunked(b"0\r\nX: y\n\r\n", limits(100)).is_err());
    }

    #[test]
    fn a_one_byte_chunk_body_decodes_in_linear_time() {
        // Regression: the decoder re-parsed the whole buffer after every
        // read (a 2.6 MB body in 1-byte chunks took 38 s of CPU). Feeding
        // one read at a time must touch each byte once.
        let mut wire = Vec::new();
        for _ in 0..200_000 {
            wire.extend_from_slice(b"1\r\na\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut d = Chunked::new(limits(1 << 20));
        let mut body = Vec::new();
        let mut used = 0;
        for piece in wire.chunks(1500) {
            used += d.feed(piece, &mut body).unwrap();
        }
        assert!(d.is_done());
        assert_eq!((body.len(), used), (200_000, wire.len()));
    }

    #[test]
    fn framing_is_strict_where_proxies_could_disagree() {
        const POST: &str = "POST / HTTP/1.1\r\nHost: x\r\n";
        let f = |fields: &str| framing_of(&format!("{POST}{fields}\r\n"));
        assert_eq!(f("Content-Length: 49\r\n"), Ok(BodyKind::Length(49)));
        assert_eq!(f(""), Ok(BodyKind::Length(0)));
        assert_eq!(f("Transfer-Encoding: chunked\r\n"), Ok(BodyKind::Chunked));
        assert_eq!(f("Transfer-Encoding: CHUNKED\r\n"), Ok(BodyKind::Chunked));
        for bad in [
            "Content-Length: +49\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 4 9\r\n",
            "Content-Length: 49, 49\r\n",
            "Content-Length: 0x10\r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Content-Length: 1\r\nContent-Length: 1\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "Transfer-Encoding: identity\r\n",
        ] {
            assert_eq!(f(bad).map_err(|e| e.status()), Err(400), "{bad:?}");
        }
        assert_eq!(
            f("Transfer-Encoding: gzip, chunked\r\n"),
            Err(BodyError::UnsupportedCoding)
        );
        assert!(framing_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }
}
