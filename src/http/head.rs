//! Reading one request head off a connection: until it is complete, too
//! large, malformed, or arriving slower than the minimum rate (slowloris).
//! The first head of a connection (before an upgrade) and every head of an
//! HTTP keep-alive connection are read here; the deadline is the caller's.

use std::time::Instant;

use crate::config::Limits;
use crate::io::ReadHalf;
use crate::policy::MIN_RATE_GRACE;
use crate::ws::frame::Parse;
use crate::ws::handshake::{parse_head, HandshakeError, Head, HEADER_ARRAY};

/// Read into `buf` until it starts with a whole request head; returns its
/// length. `Ok(None)`: the peer closed, or the read was stopped (by the
/// caller's deadline) before a head was complete; what was read stays in
/// `buf`. A head still incomplete [`MIN_RATE_GRACE`] after its first byte
/// and arriving slower than `limits.handshake_min_rate` is refused (408).
pub async fn read_head<R: ReadHalf>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Option<usize>, HandshakeError> {
    let mut first_byte = (!buf.is_empty()).then(Instant::now);
    loop {
        let mut scratch = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        match parse_head(buf, &mut scratch, limits.max_head_bytes, limits.max_headers)? {
            Parse::Done(_, len) => return Ok(Some(len)),
            Parse::NeedMore(_) => {}
        }
        if let Some(start) = first_byte {
            let elapsed = start.elapsed();
            let rate = limits.handshake_min_rate as f64;
            if rate > 0.0
                && elapsed >= MIN_RATE_GRACE
                && (buf.len() as f64) < rate * elapsed.as_secs_f64()
            {
                crate::debug!("request head below {} bytes/s", limits.handshake_min_rate);
                return Err(HandshakeError::Timeout);
            }
        }
        let (res, b) = r.read_more(std::mem::take(buf)).await;
        *buf = b;
        match res {
            Ok(n) if n > 0 => {
                first_byte.get_or_insert_with(Instant::now);
            }
            _ => return Ok(None),
        }
    }
}

/// The head [`read_head`] found complete at the start of `buf`, parsed into
/// `headers` (borrowing both). `None` only if `buf` changed since.
pub fn parsed<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    limits: &Limits,
) -> Option<Head<'h, 'b>> {
    match parse_head(buf, headers, limits.max_head_bytes, limits.max_headers) {
        Ok(Parse::Done(head, _)) => Some(head),
        _ => None,
    }
}
