//! Payload masking (RFC 6455 §5.3), a word at a time.
//!
//! Masking is an XOR with a 4-byte key repeated over the payload, so the same
//! function masks and unmasks. `offset` is the position of `buf[0]` within the
//! frame's payload, which lets a payload that arrives in pieces be processed
//! piece by piece.

/// XOR `buf` with `key`, as if `buf` started at byte `offset` of the payload.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    // SAFETY: every bit pattern is a valid u64, so viewing the aligned middle of a
    // byte slice as u64s is sound.
    let (head, words, tail) = unsafe { buf.align_to_mut::<u64>() };
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    let mut k = key;
    k.rotate_left(head.len() % 4);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    for w in words.iter_mut() {
        *w ^= word;
    }
    // Each u64 covers exactly two key cycles, so the tail starts at key index 0 of `k`.
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// Unmask `src` into `dst` (same length), leaving `src` untouched.
#[inline]
pub fn unmask_into(dst: &mut [u8], src: &[u8], key: [u8; 4], offset: usize) {
    debug_assert_eq!(dst.len(), src.len());
    dst.copy_from_slice(src);
    apply_mask(dst, key, offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) % 4];
        }
    }

    #[test]
    fn matches_bytewise_masking_on_odd_lengths_and_offsets() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..9 {
            for len in [
                0,
                1,
                2,
                3,
                4,
                5,
                7,
                8,
                9,
                15,
                16,
                17,
                31,
                64,
                100,
                291 - start,
            ] {
                for offset in 0..5 {
                    let mut fast = data[start..start + len].to_vec();
                    let mut slow = fast.clone();
                    apply_mask(&mut fast, key, offset);
                    naive(&mut slow, key, offset);
                    assert_eq!(fast, slow, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..101u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 13);
        assert_eq!(whole, pieces);
    }
}
