//! Whether a head a node reports is believable (pure: tested without a
//! clock, in [`super`]'s tests).

/// A head this far ahead of where the node (or, when known, the other
/// nodes) stood is not believed: a node reporting `0xffff…`, or a node of
/// another chain, must not make every correct node look behind.
pub const MAX_JUMP: u64 = 10_000;

/// No chain is this long: a head above it is nonsense.
const MAX_HEIGHT: u64 = 1 << 48;

/// Whether a reported `head` is believable for a node that stood at `prev`
/// (0: unknown), with the other nodes at best `others` (0: none known).
/// Pure: tested without a clock.
pub fn plausible(head: u64, prev: u64, others: u64) -> bool {
    if head > MAX_HEIGHT {
        return false;
    }
    match (others, prev) {
        (0, 0) => true,
        (0, prev) => head <= prev.saturating_add(MAX_JUMP),
        (others, _) => head <= others.saturating_add(MAX_JUMP),
    }
}
