//! The ids of an answer, read as it streams past, sans-io.
//!
//! A pinned session forwards a node's answers without holding them (a
//! `state_getMetadata` answer is 300 KB), but must see each answer's `id` to
//! know which request is done, wherever the node put the member (before or
//! after a large `result`). [`IdScanner`] is fed the payload in pieces and
//! collects the top-level `id` of an object, or of each object in a batch
//! answer, keeping no more than the id values themselves. Each byte is
//! looked at once; inside strings it skips to the next quote or backslash.

/// Collects the ids of one message.
#[derive(Debug, Clone, Default)]
pub struct IdScanner {
    depth: u32,
    /// Depth of the objects whose `id` member counts: 1 for a single
    /// answer, 2 for a batch (decided by the first byte).
    level: u32,
    in_string: bool,
    escape: bool,
    /// The string being read is a key at `level`, and matches `"id"` so far.
    key: Option<u8>,
    /// After a key at `level`: whether it was `id`, until its value starts.
    after_key: Option<bool>,
    /// Capturing an id value: where it starts in `bytes`, and the depth it
    /// started at.
    value: Option<(usize, u32)>,
    /// The ids found, one after the other, and where each ends: kept
    /// between messages, so a scan allocates nothing once warm.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Not JSON as expected: ids found so far may be incomplete.
    broken: bool,
    /// The next string at `level` is a member key (after `{` or `,`).
    key_next: bool,
}

/// The longest id value kept.
const MAX_ID: usize = 256;

impl IdScanner {
    pub fn new() -> IdScanner {
        IdScanner::default()
    }

    /// The ids found, once the message is complete (raw JSON).
    pub fn ids(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(a, b)| &self.bytes[a..b])
    }

    /// Ready for the next message (the buffers stay).
    pub fn reset(&mut self) {
        let (mut bytes, mut ends) = (
            std::mem::take(&mut self.bytes),
            std::mem::take(&mut self.ends),
        );
        bytes.clear();
        ends.clear();
        *self = IdScanner {
            bytes,
            ends,
            ..IdScanner::default()
        };
    }

    /// Feed the next piece of the payload.
    pub fn feed(&mut self, mut data: &[u8]) {
        // A single answer has one id: once it is read, the rest (a large
        // result, usually) need not be looked at.
        if self.level == 1 && !self.ends.is_empty() {
            return;
        }
        while !data.is_empty() && !self.broken {
            if self.in_string {
                // Fast path: the bulk of a large answer is inside strings.
                let stop = memchr::memchr2(b'"', b'\\', data).unwrap_or(data.len());
                if self.escape && stop > 0 {
                    self.escape = false;
                }
                self.string_bytes(&data[..stop]);
                data = &data[stop..];
                let Some(&b) = data.first() else { return };
                data = &data[1..];
                if self.escape {
                    self.escape = false;
                    self.string_bytes(&[b]);
                } else if b == b'\\' {
                    self.escape = true;
                    self.string_bytes(&[b]);
                } else {
                    self.end_string();
                }
                continue;
            }
            let b = data[0];
            data = &data[1..];
            self.structural(b);
        }
    }

    fn string_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(k) = self.key.filter(|&k| k != u8::MAX) {
            // Still `"id"` only if exactly `i`, `d` follow.
            let want = &b"id"[k as usize..];
            let still = bytes.len() <= want.len() && want.starts_with(bytes);
            self.key = Some(if still {
                k + bytes.len() as u8
            } else {
                u8::MAX
            });
        }
        if let Some((start, _)) = self.value {
            if self.bytes.len() - start + bytes.len() <= MAX_ID {
                self.bytes.extend_from_slice(bytes);
            }
        }
    }

    fn end_string(&mut self) {
        self.in_string = false;
        if let Some(k) = self.key.take() {
            self.after_key = Some(k == 2);
            return;
        }
        if self.value.is_some() {
            self.bytes.push(b'"');
        }
    }

    fn structural(&mut self, b: u8) {
        if let Some((start, depth)) = self.value {
            let ends = matches!(b, b',' | b'}' | b']') && self.depth == depth;
            if ends {
                while self.bytes.len() > start
                    && self.bytes.last().is_some_and(u8::is_ascii_whitespace)
                {
                    self.bytes.pop();
                }
                self.ends.push(self.bytes.len());
                self.value = None;
                if self.level == 1 {
                    self.broken = true; // done: nothing more to find
                }
            } else if (!b.is_ascii_whitespace() || self.depth > depth)
                && self.bytes.len() - start < MAX_ID
            {
                self.bytes.push(b);
            }
        }
        match b {
            b'"' => {
                self.in_string = true;
                let at_key = self.depth == self.level && self.after_key.is_none();
                if at_key && self.value.is_none() && self.key_next {
                    self.key = Some(0);
                    self.key_next = false;
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 {
                    self.level = if b == b'[' { 2 } else { 1 };
                }
                self.depth += 1;
                self.expect_key(b == b'{');
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                self.expect_key(false);
            }
            b':' => {
                if let Some(is_id) = self.after_key.take() {
                    if is_id {
                        self.value = Some((self.bytes.len(), self.depth));
                    }
                }
            }
            b',' => self.expect_key(self.depth == self.level),
            b if b.is_ascii_whitespace() => {}
            _ => {}
        }
        if self.depth == 0 && self.level == 0 && !b.is_ascii_whitespace() {
            self.broken = true;
        }
    }

    fn expect_key(&mut self, yes: bool) {
        self.key_next = yes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(msg: &[u8], piece: usize) -> Vec<String> {
        let mut s = IdScanner::new();
        for p in msg.chunks(piece) {
            s.feed(p);
        }
        let out = s
            .ids()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect();
        s.reset();
        out
    }

    #[test]
    fn the_id_is_found_before_or_after_a_large_result_in_any_piece_size() {
        let big = "ab".repeat(5000);
        let after = format!(r#"{{"jsonrpc":"2.0","result":"0x{big}","id":17}}"#);
        let before =
            format!(r#"{{"jsonrpc":"2.0","id":"x\"y","result":{{"id":5,"v":["{big}"]}}}}"#);
        for piece in [1, 3, 7, 64, 100_000] {
            assert_eq!(ids(after.as_bytes(), piece), ["17"], "piece {piece}");
            assert_eq!(
                ids(before.as_bytes(), piece),
                [r#""x\"y""#],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn a_batch_answer_gives_each_elements_id_and_nested_ids_do_not_count() {
        let msg = br#"[{"id":1,"result":{"id":9}}, {"result":[{"id":8}],"id":"b"} ,{"error":{"code":1},"id":null}]"#;
        for piece in [1, 2, 5, 1000] {
            assert_eq!(ids(msg, piece), ["1", r#""b""#, "null"]);
        }
    }

    #[test]
    fn notifications_and_keys_that_only_look_like_id() {
        assert!(ids(
            br#"{"method":"x","params":{"subscription":"s","result":{"id":3}}}"#,
            4
        )
        .is_empty());
        assert!(ids(br#"{"idx":1,"i":2,"d":3,"xid":4}"#, 2).is_empty());
        assert_eq!(ids(br#"{ "id" : 1e2 , "result":1}"#, 1), ["1e2"]);
    }
}
