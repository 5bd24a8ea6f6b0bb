//! The error objects the gateway answers with itself (JSON-RPC 2.0 §5.1):
//! one builder, so every refusal, lost node and shutdown looks the same to a
//! client, with the request's own id echoed back as it was written.

use std::fmt::Write;

/// Error codes the gateway uses.
pub mod code {
    /// The message is not JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a JSON-RPC request (not an object, an empty batch, a bad id).
    pub const INVALID_REQUEST: i32 = -32600;
    /// A method the allowlist refuses.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// A subscription id the session does not own.
    pub const INVALID_PARAMS: i32 = -32602;
    /// The node could not answer (lost, unhealthy, shutting down).
    pub const INTERNAL_ERROR: i32 = -32603;
    /// A limit of the gateway's (rate, in flight, subscriptions, batch size).
    pub const LIMIT_EXCEEDED: i32 = -32005;
}

/// One error response: `{"jsonrpc":"2.0","error":{..},"id":ID}`. `id` is
/// raw JSON (`null` when the request had none that could be read);
/// `message` is escaped; `data` is raw JSON.
pub fn error(id: &[u8], code: i32, message: &str, data: Option<&str>) -> String {
    let mut out = String::with_capacity(64 + message.len() + id.len());
    push_error(&mut out, id, code, message, data);
    out
}

/// Errors for several ids with the same cause, as one batch answer (an
/// array) when `batch`, else the single error of the first id.
pub fn errors<'a>(
    ids: impl IntoIterator<Item = &'a [u8]>,
    batch: bool,
    code: i32,
    message: &str,
) -> Option<String> {
    let mut ids = ids.into_iter();
    if !batch {
        return ids.next().map(|id| error(id, code, message, None));
    }
    let mut out = String::from("[");
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_error(&mut out, id, code, message, None);
    }
    out.push(']');
    (out.len() > 2).then_some(out)
}

fn push_error(out: &mut String, id: &[u8], code: i32, message: &str, data: Option<&str>) {
    let _ = write!(
        out,
        r#"{{"jsonrpc":"2.0","error":{{"code":{code},"message":""#
    );
    escape_into(out, message);
    out.push('"');
    if let Some(d) = data {
        let _ = write!(out, r#","data":{d}"#);
    }
    out.push_str(r#"},"id":"#);
    out.push_str(&String::from_utf8_lossy(id));
    out.push('}');
}

/// JSON string escaping (RFC 8259 §7) of `s` into `out`.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_echo_the_id_as_written_and_escape_the_message() {
        let e = error(br#""a-1""#, code::INTERNAL_ERROR, r#"node "x" lost"#, None);
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["id"], "a-1");
        assert_eq!(v["error"]["message"], r#"node "x" lost"#);
        assert_eq!(v["error"]["code"], -32603);
        let e = error(
            b"7",
            code::LIMIT_EXCEEDED,
            "limit",
            Some(r#"{"limit":"x"}"#),
        );
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["error"]["data"]["limit"], "x");
    }

    #[test]
    fn a_batch_gets_one_array() {
        let ids: [&[u8]; 2] = [b"1", b"2"];
        let e = errors(ids, true, code::INTERNAL_ERROR, "gone").unwrap();
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[1]["id"], 2);
        assert_eq!(
            errors(ids, false, code::INTERNAL_ERROR, "gone").unwrap(),
            error(b"1", -32603, "gone", None)
        );
        assert_eq!(errors(Vec::<&[u8]>::new(), true, -32603, "x"), None);
    }
}
