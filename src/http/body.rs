//! Reading an HTTP request's body: within its total deadline, its idle
//! time (`http.body_idle_timeout_ms`) and minimum rate, and (while it is
//! still arriving) within the core's budget of bytes held by bodies
//! (`http.max_bodies_bytes`). Framing is [`crate::h1`]'s.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::h1 as body;
use crate::io::{stop, with_deadline, ReadHalf, Stop};
use crate::policy::MIN_RATE_GRACE;

/// Why a request body was not read.
pub(super) enum BodyFailure {
    /// The client left (or broke the connection): nothing to answer.
    Gone,
    /// Answer with this status and reason, then close.
    Refused(u16, &'static str),
    /// Cut for its time or the core's budget (counted by reason).
    Cut(Cut),
}

/// Why a body was cut, in the order of `metrics::BODY_CUTS`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cut {
    /// No byte for `http.body_idle_timeout_ms`.
    Stalled = 0,
    /// Past `http.body_timeout_ms`, or below the minimum rate.
    Slow = 1,
    /// Over `http.max_bodies_bytes` on this core.
    Budget = 2,
}

impl Cut {
    pub(super) fn status(self) -> u16 {
        match self {
            Cut::Stalled | Cut::Slow => 408,
            Cut::Budget => 503,
        }
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            Cut::Stalled => "request body stalled (http.body_idle_timeout_ms)",
            Cut::Slow => "request body not received in time",
            Cut::Budget => {
                "too many request bodies arriving at once (http.max_bodies_bytes); retry"
            }
        }
    }
}

/// Bytes of a body still arriving, counted against its core's budget
/// (`http.max_bodies_bytes`) until dropped.
struct Held<'a> {
    total: &'a Cell<usize>,
    n: usize,
}

impl<'a> Held<'a> {
    /// Hold `n` bytes more, if the budget has room.
    fn grow(&mut self, n: usize, max: usize) -> bool {
        if self.total.get() + n > max {
            return false;
        }
        self.total.set(self.total.get() + n);
        self.n += n;
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.total.set(self.total.get() - self.n);
    }
}

/// Read the body that follows the head at `buf[..head_len]`, framed as
/// `kind`; on success `buf` keeps only what follows the body (the next
/// request). Linear in the body's size; a body that has not arrived within
/// `http.body_timeout_ms`, arrives slower than `min_rate` after the grace
/// period, or sends no byte for `http.body_idle_timeout_ms`, gets 408. While
/// a body is still arriving, what it holds (its declared length; a chunked
/// body's bytes so far) counts against the core's `bodies` budget: beyond
/// `http.max_bodies_bytes`, 503.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_body<R: ReadHalf>(
    r: &mut R,
    fd: RawFd,
    buf: &mut Vec<u8>,
    head_len: usize,
    kind: body::BodyKind,
    http: &crate::config::HttpSection,
    min_rate: u64,
    bodies: &Cell<usize>,
) -> Result<Vec<u8>, BodyFailure> {
    const SLOW: BodyFailure = BodyFailure::Cut(Cut::Slow);
    const STALLED: BodyFailure = BodyFailure::Cut(Cut::Stalled);
    const FULL: BodyFailure = BodyFailure::Cut(Cut::Budget);
    let mut held = Held {
        total: bodies,
        n: 0,
    };
    let idle_for = Duration::from_millis(http.body_idle_timeout_ms);
    let stalled = Cell::new(false);
    let timed_out = Cell::new(false);
    let expire = || {
        timed_out.set(true);
        stop(fd, Stop::Reads);
    };
    let deadline = Duration::from_millis(http.body_timeout_ms);
    let start = std::time::Instant::now();
    let mut chunked = body::Chunked::new(body::ChunkLimits::new(http.max_body_bytes));
    let mut out = Vec::new();
    // Bytes of the body received so far (chunked: on the wire).
    let mut received = 0usize;
    let read = with_deadline(deadline, expire, async {
        // Chunked: bytes before `at` are decoded; they are dropped after
        // each read, so the buffer holds one read at most.
        let mut at = head_len;
        loop {
            match kind {
                body::BodyKind::Length(n) => {
                    let n = n as usize; // at most max_body_bytes (checked by the caller)
                    if buf.len() - head_len >= n {
                        out = buf[head_len..head_len + n].to_vec();
                        buf.drain(..head_len + n);
                        return Ok(out);
                    }
                    // Still arriving: it holds its length from now on.
                    if held.n == 0 && !held.grow(n, http.max_bodies_bytes) {
                        return Err(FULL);
                    }
                    // All of it in one allocation, not a copy per read.
                    buf.reserve_exact(head_len + n - buf.len());
                }
                body::BodyKind::Chunked => {
                    let used = chunked
                        .feed(&buf[at..], &mut out)
                        .map_err(|e| BodyFailure::Refused(e.status(), e.reason()))?;
                    if chunked.is_done() {
                        buf.drain(..at + used);
                        return Ok(std::mem::take(&mut out));
                    }
                    if out.len() > held.n && !held.grow(out.len() - held.n, http.max_bodies_bytes) {
                        return Err(FULL);
                    }
                    buf.truncate(head_len);
                    at = head_len;
                }
                body::BodyKind::UntilClose => {
                    return Err(BodyFailure::Refused(400, "request without a length"))
                }
            }
            let before = buf.len();
            // No byte for the idle time: stalled, whatever came before.
            let read = r.read_more(std::mem::take(buf));
            let (res, b) = with_deadline(
                idle_for,
                || {
                    stalled.set(true);
                    stop(fd, Stop::Reads);
                },
                read,
            )
            .await;
            *buf = b;
            match res {
                Ok(n) if n > 0 => received += buf.len() - before,
                _ if timed_out.get() => return Err(SLOW),
                _ if stalled.get() => return Err(STALLED),
                _ => return Err(BodyFailure::Gone),
            }
            let elapsed = start.elapsed();
            if min_rate > 0
                && elapsed >= MIN_RATE_GRACE
                && (received as f64) < min_rate as f64 * elapsed.as_secs_f64()
            {
                return Err(SLOW);
            }
        }
    });
    read.await
}
