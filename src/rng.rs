//! A per-thread pseudo-random generator for load-balancing choices, handshake
//! nonces and the mask keys of the gateway's own frames to nodes.
//!
//! xorshift64*, seeded from the OS-seeded `RandomState`. Not for secrets: the
//! only unpredictability RFC 6455 asks of a mask key is that a *browser*
//! script cannot choose the bytes on the wire; this is a gateway talking to
//! its own nodes.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() | 1
}

/// The next pseudo-random u64.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A uniform-enough index below `n` (n > 0).
pub fn below(n: usize) -> usize {
    (((next_u64() >> 32) * n as u64) >> 32) as usize
}

/// A mask key for a frame the gateway writes to a node.
pub fn mask_key() -> [u8; 4] {
    (next_u64() as u32).to_ne_bytes()
}

/// Sixteen random bytes, base64: a `Sec-WebSocket-Key`.
pub fn ws_key() -> String {
    use base64::Engine;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&next_u64().to_ne_bytes());
    raw[8..].copy_from_slice(&next_u64().to_ne_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}
