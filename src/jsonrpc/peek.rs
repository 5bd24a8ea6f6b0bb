//! Peeking at JSON-RPC 2.0 messages without a full parse, sans-io.
//!
//! The hot path needs a message's `method`, its `id` (as raw JSON, echoed
//! back unchanged in errors), and sometimes one positional parameter. A
//! [`Peek`] walks only the top-level object (skipping nested values by
//! bracket depth, aware of strings and escapes) and returns borrowed slices.
//! Anything that is not a well-formed top-level object or array gives `None`
//! or [`Kind::Other`]; nothing allocates.

/// What a message is at the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON object: a single request, response or notification.
    Object,
    /// A JSON array: a batch.
    Batch,
    /// Anything else.
    Other,
}

/// The interesting top-level members of one JSON-RPC object, as raw JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peek<'a> {
    /// The method name, without quotes (escapes left as written).
    pub method: Option<&'a [u8]>,
    /// The raw `id` value (`1`, `"abc"`, `null`).
    pub id: Option<&'a [u8]>,
    /// The raw `params` value.
    pub params: Option<&'a [u8]>,
    /// The raw `result` value.
    pub result: Option<&'a [u8]>,
    /// The raw `error` value.
    pub error: Option<&'a [u8]>,
}

/// Classify a message by its first non-space byte.
pub fn kind(buf: &[u8]) -> Kind {
    match buf.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Batch,
        _ => Kind::Other,
    }
}

/// Peek at a top-level JSON object. `None` if `buf` is not one (or is cut short).
pub fn peek(buf: &[u8]) -> Option<Peek<'_>> {
    let mut p = Peek::default();
    walk_members(buf, |key, raw| {
        match key {
            b"method" if raw.len() >= 2 && raw[0] == b'"' => {
                p.method = Some(&raw[1..raw.len() - 1])
            }
            b"id" => p.id = Some(raw),
            b"params" => p.params = Some(raw),
            b"result" => p.result = Some(raw),
            b"error" => p.error = Some(raw),
            _ => {}
        }
        true
    })?;
    Some(p)
}

/// The raw value of member `name` of a JSON object (`params.subscription`),
/// found without walking the members after it.
pub fn member<'a>(buf: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    walk_members(buf, |key, raw| {
        if key == name {
            found = Some(raw);
        }
        found.is_none()
    });
    found
}

/// Call `f(key, raw value)` for each member of the top-level object in
/// `buf` until it returns false. `None` if `buf` is not a well-formed
/// object up to where the walk stopped.
pub(super) fn walk_members<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(&'a [u8], &'a [u8]) -> bool,
) -> Option<()> {
    let mut i = skip_ws(buf, 0);
    if buf.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(buf, i + 1);
    if buf.get(i) == Some(&b'}') {
        return Some(());
    }
    loop {
        if buf.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(buf, i)?;
        let key = &buf[i + 1..key_end - 1];
        i = skip_ws(buf, key_end);
        if buf.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(buf, i + 1);
        let v_end = value_end(buf, i)?;
        if !f(key, &buf[i..v_end]) {
            return Some(());
        }
        i = skip_ws(buf, v_end);
        match buf.get(i) {
            Some(b',') => i = skip_ws(buf, i + 1),
            Some(b'}') => return Some(()),
            _ => return None,
        }
    }
}

/// The raw elements of a JSON array (a batch, or positional `params`).
pub fn elements(buf: &[u8]) -> Elements<'_> {
    let i = skip_ws(buf, 0);
    let ok = buf.get(i) == Some(&b'[');
    Elements {
        buf,
        pos: if ok { skip_ws(buf, i + 1) } else { buf.len() },
        done: !ok,
    }
}

/// Iterator over raw array elements; stops at the end or at malformed input.
pub struct Elements<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Iterator for Elements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done || self.buf.get(self.pos) == Some(&b']') {
            self.done = true;
            return None;
        }
        let start = self.pos;
        let Some(end) = value_end(self.buf, start) else {
            self.done = true;
            return None;
        };
        let mut i = skip_ws(self.buf, end);
        match self.buf.get(i) {
            Some(b',') => i = skip_ws(self.buf, i + 1),
            Some(b']') => {}
            _ => self.done = true,
        }
        self.pos = i;
        Some(&self.buf[start..end])
    }
}

/// The raw positional parameter `index`, if `params` is an array that long.
pub fn param(params: &[u8], index: usize) -> Option<&[u8]> {
    elements(params).nth(index)
}

/// The contents of a JSON string token without its quotes.
pub fn unquote(raw: &[u8]) -> Option<&[u8]> {
    (raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"').then(|| &raw[1..raw.len() - 1])
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while i < buf.len() && matches!(buf[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index just past the string starting at `buf[i] == '"'`.
fn string_end(buf: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < buf.len() {
        // Eight bytes at a time past those that are neither `"` nor `\`
        // (a 300 KB result is walked to find the id after it).
        j = super::json::plain_run(buf, j);
        let Some(&b) = buf.get(j) else { break };
        match b {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Index just past the value starting at `buf[i]`.
fn value_end(buf: &[u8], i: usize) -> Option<usize> {
    match *buf.get(i)? {
        b'"' => string_end(buf, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < buf.len() {
                match buf[j] {
                    b'"' => {
                        j = string_end(buf, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < buf.len()
                && !matches!(buf[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Where `part` (a subslice of `whole`, as [`member`] gives) starts in it.
pub fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_method_id_and_params_at_any_position() {
        let m = br#"{"params":[{"a":"}]\"x"},"0xabc"],"id":"k-1","jsonrpc":"2.0","method":"state_getStorage"}"#;
        let p = peek(m).unwrap();
        assert_eq!(p.method, Some(&b"state_getStorage"[..]));
        assert_eq!(p.id, Some(&br#""k-1""#[..]));
        assert_eq!(param(p.params.unwrap(), 1), Some(&br#""0xabc""#[..]));
        assert_eq!(param(p.params.unwrap(), 2), None);
    }

    #[test]
    fn members_by_name_at_the_top_level_only() {
        let n = br#"{"subscription":"0xab","result":{"subscription":"nested","n":1}}"#;
        assert_eq!(member(n, b"subscription"), Some(&br#""0xab""#[..]));
        assert_eq!(
            member(n, b"result"),
            Some(&br#"{"subscription":"nested","n":1}"#[..])
        );
        assert_eq!(member(n, b"n"), None);
        assert_eq!(member(br#"{"a":{"id":1}}"#, b"id"), None);
        assert_eq!(member(b"[1]", b"id"), None);
        // Found before the malformed rest: an answer's id ahead of its result.
        assert_eq!(member(br#"{"id":7,"result":"#, b"id"), Some(&b"7"[..]));
    }

    #[test]
    fn responses_and_notifications() {
        let r = br#"{ "jsonrpc" : "2.0" , "result" : {"x":[1,2]} , "id" : 42 }"#;
        let p = peek(r).unwrap();
        assert_eq!(p.id, Some(&b"42"[..]));
        assert_eq!(p.result, Some(&br#"{"x":[1,2]}"#[..]));
        let e = br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"nope"},"id":null}"#;
        assert_eq!(peek(e).unwrap().id, Some(&b"null"[..]));
    }

    #[test]
    fn batches_and_garbage() {
        let b = br#"[{"id":1,"method":"a"}, {"id":2,"method":"b"}]"#;
        assert_eq!(kind(b), Kind::Batch);
        let methods: Vec<_> = elements(b)
            .map(|e| peek(e).unwrap().method.unwrap())
            .collect();
        assert_eq!(methods, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(kind(b"  hello"), Kind::Other);
        assert_eq!(peek(br#"{"id":1,"method":"a""#), None);
        assert_eq!(peek(b"{\"id\":1 \"method\":\"a\"}"), None);
        assert_eq!(elements(b"[]").count(), 0);
    }
}
