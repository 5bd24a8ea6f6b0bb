//! Incremental UTF-8 validation for text messages that arrive in pieces
//! (RFC 6455 §8.1: a text message must be valid UTF-8 as a whole, and an
//! endpoint should fail as soon as it sees an invalid sequence).
//!
//! The state is at most three bytes of an unfinished code point. Validation is
//! exact and fails fast: `std::str::from_utf8` reports an incomplete tail
//! (`error_len() == None`) only when that tail is a valid prefix.

/// Validates a byte stream split at arbitrary points.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// The stream is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Feed the next piece of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let need = sequence_len(self.pending[0]) - have;
            let take = need.min(data.len());
            self.pending[have..have + take].copy_from_slice(&data[..take]);
            let now = have + take;
            match std::str::from_utf8(&self.pending[..now]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// True when the stream so far ends on a code point boundary; a message
    /// that ends otherwise is invalid.
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// Forget any partial state (start of a new message).
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

fn sequence_len(first: u8) -> usize {
    match first {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], at: &[usize]) -> Result<bool, InvalidUtf8> {
        let mut v = Utf8Validator::default();
        let mut prev = 0;
        for &cut in at.iter().chain(std::iter::once(&bytes.len())) {
            v.feed(&bytes[prev..cut])?;
            prev = cut;
        }
        Ok(v.is_complete())
    }

    #[test]
    fn accepts_valid_text_split_everywhere() {
        let text = "κόσμε 𝄞 € a".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(feed_split(text, &[i, j]), Ok(true), "cuts {i} {j}");
            }
        }
    }

    #[test]
    fn rejects_invalid_sequences_split_everywhere() {
        // Surrogate, overlong, code point above U+10FFFF, stray continuation.
        for bad in [
            &b"ab\xed\xa0\x80cd"[..],
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"x\x80",
        ] {
            for i in 0..=bad.len() {
                assert_eq!(feed_split(bad, &[i]), Err(InvalidUtf8), "{bad:?} cut {i}");
            }
        }
    }

    #[test]
    fn fails_fast_on_an_invalid_prefix() {
        // 0xf4 0x90 can never start a valid code point: no need to wait for more.
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"\xf4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
    }

    #[test]
    fn incomplete_at_end_is_reported() {
        assert_eq!(feed_split("€".as_bytes(), &[2]), Ok(true));
        let mut v = Utf8Validator::default();
        v.feed(&"€".as_bytes()[..2]).unwrap();
        assert!(!v.is_complete());
    }
}
