//! Strict JSON (RFC 8259), sans-io: the check every client message passes
//! before the gateway decides anything from it.
//!
//! The gateway reads a message and a node reads the same bytes. Where JSON
//! parsers disagree, a policy decided on one reading is bypassed by the
//! other: a member named twice (serde_json and Go keep the last, some keep
//! the first, some refuse), a name spelt with escapes (`"met\u0068od"`),
//! a lone surrogate (refused by serde_json, replaced by Go). [`check`]
//! accepts exactly what serde_json accepts as a `Value`, minus every object
//! with a duplicate member name (compared after unescaping), so what it
//! accepts has one meaning for every parser; [`unescape`] gives a string's
//! meaning. [`super::peek()`]'s lenient walker is then exact on what passed.
//!
//! One pass. Strings are scanned a word at a time; member names are kept
//! as offsets in a per-thread list (no allocation per message) and
//! compared raw unless one of them holds an escape.

use std::borrow::Cow;

/// Containers nested deeper than this are refused (serde_json's limit:
/// a node built on it refuses them too).
pub const MAX_DEPTH: usize = 127;

/// Objects with more members than this are checked for duplicates with a
/// hash set instead of comparing each name with the ones before it.
pub const LINEAR_KEYS: usize = 16;

/// Why bytes are not one strict JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON: a syntax error, bytes after the value, a lone surrogate,
    /// a control character in a string, a number out of range (-32700).
    Syntax,
    /// Containers nested deeper than [`MAX_DEPTH`] (-32700).
    TooDeep,
    /// An object names a member twice (after unescaping): parsers differ on
    /// which one counts (-32600).
    DuplicateMember,
}

impl Invalid {
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Syntax => "Parse error",
            Invalid::TooDeep => "Parse error: nested too deeply",
            Invalid::DuplicateMember => "Invalid Request: a member is named twice",
        }
    }
}

/// Check that `buf` is exactly one JSON value (whitespace around it allowed)
/// with no duplicate member names anywhere.
pub fn check(buf: &[u8]) -> Result<(), Invalid> {
    check_visit(buf, &mut |_| {})
}

/// What a JSON-RPC reading is told as [`check_visit`] goes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A member of a request object (the top-level object, or an element of
    /// a top-level array): its raw name (between the quotes) and raw value.
    Member(&'a [u8], &'a [u8]),
    /// A request (the top-level value, or an element of a top-level array)
    /// ends: its bytes, and whether an object in it names a member twice.
    Request(&'a [u8], bool),
}

/// [`check`], telling `visit` each request's members as it goes: one pass
/// both checks a message and reads it. On an error, what `visit` was told
/// is to be forgotten.
pub fn check_visit<'a>(buf: &'a [u8], visit: &mut dyn FnMut(Seen<'a>)) -> Result<(), Invalid> {
    // Strings are checked byte by byte below; their UTF-8 once, here (a
    // WebSocket text message was already checked: this is the fast ASCII path).
    if std::str::from_utf8(buf).is_err() {
        return Err(Invalid::Syntax);
    }
    NAMES.with(|names| {
        let mut c = Checker {
            buf,
            i: 0,
            names: std::mem::take(&mut *names.borrow_mut()),
            duplicate: false,
            visit,
            level: 1,
        };
        c.names.clear();
        let result = c.document();
        *names.borrow_mut() = c.names;
        result
    })
}

thread_local! {
    /// The member names of the objects being checked, reused.
    static NAMES: std::cell::RefCell<Vec<(u32, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The meaning of a JSON string's contents (between its quotes), escapes
/// decoded. Borrowed when there is no escape. Assumes contents [`check`]
/// accepted (anything else decodes to something, never panics).
pub fn unescape(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        let Some(u) = hex4(raw, i) else {
            continue;
        };
        i += 4;
        let c = if (0xD800..0xDC00).contains(&u)
            && raw.get(i) == Some(&b'\\')
            && raw.get(i + 1) == Some(&b'u')
        {
            match hex4(raw, i + 2) {
                Some(lo @ 0xDC00..=0xDFFF) => {
                    i += 6;
                    char::from_u32(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00))
                }
                _ => None,
            }
        } else {
            char::from_u32(u)
        };
        let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
    Cow::Owned(out)
}

/// Append `s` as a JSON string (quotes included): what a re-serialized
/// request carries for a name that came with escapes.
pub fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let h = raw.get(at..at + 4)?;
    let mut v = 0u32;
    for &d in h {
        v = v * 16 + (d as char).to_digit(16)?;
    }
    Some(v)
}

struct Checker<'a, 'v> {
    buf: &'a [u8],
    /// Told each request's members, and each request's end.
    visit: &'v mut dyn FnMut(Seen<'a>),
    /// The depth of request objects: 1 (the message is one), 2 (a batch's).
    level: usize,
    i: usize,
    /// The member names (raw, as offsets) of the objects open now,
    /// innermost last (each object truncates back to where it started
    /// when it closes).
    names: Vec<(u32, u32)>,
    /// A member was named twice (reported after the whole value is known
    /// to be JSON: a syntax error anywhere is the stronger answer).
    duplicate: bool,
}

/// Two raw member names mean the same name.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    if a.contains(&b'\\') || b.contains(&b'\\') {
        unescape(a) == unescape(b)
    } else {
        a == b
    }
}

impl<'a> Checker<'a, '_> {
    fn document(&mut self) -> Result<(), Invalid> {
        if self.buf.len() > u32::MAX as usize {
            return Err(Invalid::TooDeep);
        }
        self.ws();
        let start = self.i;
        if self.buf.get(start) == Some(&b'[') {
            self.level = 2;
        }
        self.value(0)?;
        if self.level == 1 {
            (self.visit)(Seen::Request(&self.buf[start..self.i], self.duplicate));
        }
        self.ws();
        if self.i != self.buf.len() {
            return Err(Invalid::Syntax);
        }
        if self.duplicate {
            return Err(Invalid::DuplicateMember);
        }
        Ok(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.buf.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), Invalid> {
        match self.buf.get(self.i) {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Invalid::Syntax),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        if self.buf[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Invalid::Syntax)
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid::TooDeep);
        }
        self.i += 1;
        self.ws();
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            if depth == 1 && self.level == 2 {
                // An element of a batch: a request of its own.
                let (start, before) = (self.i, std::mem::take(&mut self.duplicate));
                self.value(depth)?;
                let dup = self.duplicate;
                self.duplicate |= before;
                (self.visit)(Seen::Request(&self.buf[start..self.i], dup));
            } else {
                self.value(depth)?;
            }
            self.ws();
            if self.eat(b']') {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err(Invalid::Syntax);
            }
            self.ws();
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid::TooDeep);
        }
        self.i += 1;
        self.ws();
        if self.eat(b'}') {
            return Ok(());
        }
        let base = self.names.len();
        // Past LINEAR_KEYS members, the names seen are looked up here.
        let mut set: Option<ahash::AHashSet<Cow<'a, [u8]>>> = None;
        let result = loop {
            if self.buf.get(self.i) != Some(&b'"') {
                break Err(Invalid::Syntax);
            }
            let at = self.i + 1;
            let name = match self.string() {
                Ok(raw) => raw,
                Err(e) => break Err(e),
            };
            let buf = self.buf;
            let seen = match &mut set {
                Some(set) => !set.insert(unescape(name)),
                None => self.names[base..]
                    .iter()
                    .any(|&(s, e)| same_name(&buf[s as usize..e as usize], name)),
            };
            self.duplicate |= seen;
            if set.is_none() && self.names.len() - base == LINEAR_KEYS {
                let earlier = self.names.drain(base..);
                let mut all: ahash::AHashSet<Cow<'a, [u8]>> = earlier
                    .map(|(s, e)| unescape(&buf[s as usize..e as usize]))
                    .collect();
                all.insert(unescape(name));
                set = Some(all);
            } else if set.is_none() {
                self.names.push((at as u32, (at + name.len()) as u32));
            }
            self.ws();
            if !self.eat(b':') {
                break Err(Invalid::Syntax);
            }
            self.ws();
            let value_at = self.i;
            if let Err(e) = self.value(depth) {
                break Err(e);
            }
            if depth == self.level {
                (self.visit)(Seen::Member(name, &buf[value_at..self.i]));
            }
            self.ws();
            if self.eat(b'}') {
                break Ok(());
            }
            if !self.eat(b',') {
                break Err(Invalid::Syntax);
            }
            self.ws();
        };
        self.names.truncate(base);
        result
    }

    /// A string at `self.i` (its opening quote): its raw contents.
    fn string(&mut self) -> Result<&'a [u8], Invalid> {
        let buf = self.buf;
        let start = self.i + 1;
        let mut j = start;
        loop {
            j = plain_run(buf, j);
            let Some(&b) = buf.get(j) else {
                return Err(Invalid::Syntax);
            };
            match b {
                b'"' => {
                    self.i = j + 1;
                    return Ok(&buf[start..j]);
                }
                b'\\' => j = escape(buf, j + 1)?,
                0..=0x1f => return Err(Invalid::Syntax),
                _ => j += 1,
            }
        }
    }

    fn number(&mut self) -> Result<(), Invalid> {
        let buf = self.buf;
        let start = self.i;
        let mut j = start;
        let digits = |j: &mut usize| {
            let from = *j;
            while buf.get(*j).is_some_and(u8::is_ascii_digit) {
                *j += 1;
            }
            *j > from
        };
        if buf.get(j) == Some(&b'-') {
            j += 1;
        }
        match buf.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => {
                digits(&mut j);
            }
            _ => return Err(Invalid::Syntax),
        }
        let mut float = false;
        if buf.get(j) == Some(&b'.') {
            j += 1;
            float = true;
            if !digits(&mut j) {
                return Err(Invalid::Syntax);
            }
        }
        if let Some(b'e' | b'E') = buf.get(j) {
            j += 1;
            float = true;
            if let Some(b'+' | b'-') = buf.get(j) {
                j += 1;
            }
            if !digits(&mut j) {
                return Err(Invalid::Syntax);
            }
        }
        self.i = j;
        // serde_json refuses a number that overflows a double (`1e400`);
        // integers beyond 64 bits become doubles there, which cannot overflow
        // before some 300 digits.
        if float || j - start > 19 {
            let text = std::str::from_utf8(&buf[start..j]).map_err(|_| Invalid::Syntax)?;
            let v: f64 = text.parse().map_err(|_| Invalid::Syntax)?;
            if !v.is_finite() {
                return Err(Invalid::Syntax);
            }
        }
        Ok(())
    }
}

/// Where the run of string bytes that need no look (not `"`, `\`, or a
/// control character) starting at `j` ends: eight bytes at a time.
pub(super) fn plain_run(buf: &[u8], mut j: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte is zero in `x ^ splat(c)` where it is `c`; `(x - ONES) & !x
    // & HIGH` marks zero bytes (and a byte below 0x20 is a zero of `x &
    // !0x1f`-style masking: `x - splat(0x20)` borrows from it). False
    // marks only past a true one, so the first mark is exact.
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    while let Some(chunk) = buf.get(j..j + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let special = has_zero(x ^ (ONES * b'"' as u64))
            | has_zero(x ^ (ONES * b'\\' as u64))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if special != 0 {
            return j + (special.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    j
}

/// An escape whose backslash is just before `j`: where it ends. A `\u`
/// high surrogate must be followed by a low one, and a low one may not
/// stand alone (serde_json refuses both; Go replaces them).
fn escape(buf: &[u8], j: usize) -> Result<usize, Invalid> {
    match buf.get(j) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(j + 1),
        Some(b'u') => {
            let u = hex4(buf, j + 1).ok_or(Invalid::Syntax)?;
            match u {
                0xDC00..=0xDFFF => Err(Invalid::Syntax),
                0xD800..=0xDBFF => {
                    if buf.get(j + 5) != Some(&b'\\') || buf.get(j + 6) != Some(&b'u') {
                        return Err(Invalid::Syntax);
                    }
                    match hex4(buf, j + 7) {
                        Some(0xDC00..=0xDFFF) => Ok(j + 11),
                        _ => Err(Invalid::Syntax),
                    }
                }
                _ => Ok(j + 5),
            }
        }
        _ => Err(Invalid::Syntax),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_ok(s: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(s).is_ok()
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        for ok in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1,-2.5e3,"x\u00e9\ud83d\ude00",null,true,false,{}]}"#[..],
            b" [ ] ",
            b"0",
            b"-0.0e+0",
            br#""\"\\\/\b\f\n\r\t""#,
            "\"é\"".as_bytes(),
            b"123456789012345678901234567890",
        ] {
            assert!(serde_ok(ok), "{ok:?}");
            assert_eq!(check(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for bad in [
            &b"{"[..],
            b"",
            b"01",
            b"1.",
            b".5",
            b"+1",
            b"1e",
            b"1e400",
            b"-",
            b"tru",
            b"nul",
            br#"{"a":1,}"#,
            b"[1,]",
            br#"{"a" 1}"#,
            br#"{1:1}"#,
            b"{} {}",
            br#"{"id":1}x"#,
            br#""\ud800""#,
            br#""\udc00""#,
            br#""\ud800\u0041""#,
            br#""\x""#,
            br#""\u12g4""#,
            b"\"a\tb\"",
            b"\"\x01\"",
            b"\xef\xbb\xbf{}",
            b"\"\xff\"",
        ] {
            assert!(!serde_ok(bad), "serde_json takes {bad:?}");
            assert_eq!(
                check(bad),
                Err(Invalid::Syntax),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn nesting_is_bounded_where_serde_json_bounds_it() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = nest(MAX_DEPTH);
        assert!(serde_ok(ok.as_bytes()));
        assert_eq!(check(ok.as_bytes()), Ok(()));
        let deep = nest(MAX_DEPTH + 1);
        assert!(!serde_ok(deep.as_bytes()));
        assert_eq!(check(deep.as_bytes()), Err(Invalid::TooDeep));
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(check(objects.as_bytes()), Err(Invalid::TooDeep));
    }

    #[test]
    fn a_member_named_twice_is_refused_however_it_is_spelt_and_wherever_it_is() {
        for dup in [
            &br#"{"method":"a","method":"b"}"#[..],
            br#"{"met\u0068od":"a","method":"b"}"#,
            br#"{"method":"a","\u006d\u0065thod":"b"}"#,
            br#"{"params":[{"blockHash":"0x1","blockHash":"0x2"}]}"#,
            br#"[{"id":1},{"id":2,"id":3}]"#,
            br#"{"a\/b":1,"a/b":2}"#,
        ] {
            assert_eq!(
                check(dup),
                Err(Invalid::DuplicateMember),
                "{}",
                String::from_utf8_lossy(dup)
            );
        }
        // Names are compared per object, not across objects.
        assert_eq!(check(br#"{"a":{"a":{"a":1}},"b":{"a":2}}"#), Ok(()));
        assert_eq!(
            check(br#"{"ID":1,"id":2,"Id":3}"#),
            Ok(()),
            "case is the caller's rule"
        );
    }

    #[test]
    fn large_objects_find_duplicates_too() {
        let mut members: Vec<String> = (0..200).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let whole = format!("{{{}}}", members.join(","));
        assert_eq!(check(whole.as_bytes()), Ok(()));
        members.push(r#""k\u0031\u0037":0"#.into()); // "k17" again
        let dup = format!("{{{}}}", members.join(","));
        assert_eq!(check(dup.as_bytes()), Err(Invalid::DuplicateMember));
        let early = format!(r#"{{"k3":0,{}}}"#, members[..20].join(","));
        assert_eq!(check(early.as_bytes()), Err(Invalid::DuplicateMember));
    }

    #[test]
    fn unescape_gives_the_meaning() {
        assert_eq!(&*unescape(b"author_rotat\\u0065Keys"), b"author_rotateKeys");
        assert!(matches!(unescape(b"plain"), Cow::Borrowed(_)));
        assert_eq!(
            &*unescape(br#"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"#),
            "\"\\/\u{8}\u{c}\n\r\té😀".as_bytes()
        );
        let mut out = Vec::new();
        write_string(&mut out, "a\"b\\c\nd é".as_bytes());
        assert_eq!(out, "\"a\\\"b\\\\c\\u000ad é\"".as_bytes());
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd é");
    }

    #[test]
    fn the_word_at_a_time_scan_stops_where_the_byte_at_a_time_one_does() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let r = (x >> (i % 8 * 8)) as u8 ^ i as u8;
                    // Mostly plain, sometimes special, sometimes high bytes.
                    match r % 16 {
                        0 => b'"',
                        1 => b'\\',
                        2 => r % 0x20,
                        3 => 0x80 | r,
                        _ => b'a' + r % 26,
                    }
                })
                .collect();
            for start in 0..=len.min(3) {
                let naive = (start..len)
                    .find(|&i| matches!(bytes[i], b'"' | b'\\' | 0..=0x1f))
                    .unwrap_or(len);
                let fast = plain_run(&bytes, start);
                assert!(fast <= naive, "{bytes:?} from {start}");
                // The tail shorter than a word is left to the byte loop.
                assert!(
                    fast == naive || naive - fast < 8 && len - fast < 8,
                    "{bytes:?}"
                );
            }
        }
    }
}
