//! The opening handshake (RFC 6455 §4, RFC 7230 §3), both sides, sans-io.
//!
//! Server side: [`parse_head`] reads an HTTP/1.1 request head with httparse
//! into a fixed header array, with caps on head size and header count;
//! [`validate_upgrade`] checks it is a WebSocket upgrade and says exactly what
//! is wrong when it is not, as a [`HandshakeError`] that maps to one HTTP status.
//!
//! Client side (the gateway towards a node): [`write_upstream_request`] builds
//! the upgrade request, and [`parse_upstream_response`] checks the node's 101.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha1::{Digest, Sha1};

use super::frame::Parse;

/// The GUID of RFC 6455 §1.3.
pub const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Size of the header array handed to httparse; `max_headers` may be lower.
pub const HEADER_ARRAY: usize = 128;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (base64 of SHA-1 of key + GUID).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    B64.encode(sha.finalize())
}

/// Why a request head is refused. Each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not parseable as HTTP/1.x (400).
    Malformed(&'static str),
    /// The head exceeds `max_head_bytes` (431).
    HeadTooLarge,
    /// More than `max_headers` header fields (431).
    TooManyHeaders,
    /// A WebSocket upgrade with a method other than GET (405).
    MethodNotAllowed,
    /// A request the gateway does not serve (405): not GET and not an upgrade.
    NotAGet,
    /// A WebSocket upgrade over HTTP/1.0 (400).
    OldHttpVersion,
    /// No Host, or more than one (400).
    BadHost,
    /// `Upgrade: websocket` without `upgrade` in `Connection` (400).
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Key` missing, repeated, or not base64 of 16 bytes (400).
    BadKey,
    /// `Sec-WebSocket-Version` missing or not 13 (426).
    UnsupportedVersion,
    /// A body on an upgrade request (400).
    UnexpectedBody,
    /// A request target that is not a path (400).
    BadTarget,
    /// The head did not arrive within the handshake timeout (408).
    Timeout,
}

impl HandshakeError {
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::MethodNotAllowed | HandshakeError::NotAGet => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::Timeout => 408,
            _ => 400,
        }
    }

    /// One line for the response body and the log.
    pub fn reason(self) -> &'static str {
        match self {
            HandshakeError::Malformed(why) => why,
            HandshakeError::HeadTooLarge => "request head too large",
            HandshakeError::TooManyHeaders => "too many header fields",
            HandshakeError::MethodNotAllowed => "a WebSocket upgrade must use GET",
            HandshakeError::NotAGet => "only GET (WebSocket upgrade) is served here",
            HandshakeError::OldHttpVersion => "a WebSocket upgrade needs HTTP/1.1",
            HandshakeError::BadHost => "exactly one Host header is required",
            HandshakeError::MissingConnectionUpgrade => {
                "Upgrade: websocket needs a Connection header containing \"upgrade\""
            }
            HandshakeError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes, given once",
            HandshakeError::UnsupportedVersion => "only Sec-WebSocket-Version 13 is supported",
            HandshakeError::UnexpectedBody => "a WebSocket upgrade request cannot carry a body",
            HandshakeError::BadTarget => "the request target must be a path",
            HandshakeError::Timeout => "request head not received in time",
        }
    }

    /// Header fields the status requires (RFC 7231 §6.5.5, RFC 6455 §4.4).
    pub fn extra_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            HandshakeError::MethodNotAllowed | HandshakeError::NotAGet => &[("Allow", "GET")],
            HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for HandshakeError {}

/// A parsed request head, borrowing the receive buffer.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    pub path: &'b str,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: &'h [httparse::Header<'b>],
}

impl<'h, 'b> Head<'h, 'b> {
    /// All values of a header field, in order.
    pub fn values(&self, name: &'static str) -> impl Iterator<Item = &'b [u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The single value of a header field; `None` when absent or repeated.
    pub fn single(&self, name: &'static str) -> Option<&'b [u8]> {
        let mut it = self.values(name);
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    /// True if a comma-separated header field (any of its instances) contains `token`, any case.
    pub fn has_token(&self, name: &'static str, token: &str) -> bool {
        self.values(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// True when the client asks for a WebSocket upgrade.
    pub fn wants_websocket(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parse a request head from `buf`.
///
/// `headers` is the caller's fixed array; only its first `max_headers` slots
/// are used. Returns `NeedMore` while the head is incomplete and shorter than
/// `max_head` bytes.
pub fn parse_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_head: usize,
    max_headers: usize,
) -> Result<Parse<Head<'h, 'b>>, HandshakeError> {
    let limit = max_headers.min(headers.len());
    let mut req = httparse::Request::new(&mut headers[..limit]);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            if len > max_head {
                return Err(HandshakeError::HeadTooLarge);
            }
            let path = req.path.unwrap_or("/");
            Ok(Parse::Done(
                Head {
                    method: req.method.unwrap_or(""),
                    path,
                    minor_version: req.version.unwrap_or(1),
                    headers: req.headers,
                },
                len,
            ))
        }
        Ok(httparse::Status::Partial) if buf.len() >= max_head => Err(HandshakeError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(Parse::NeedMore(buf.len() + 1)),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders),
        Err(httparse::Error::Version) => Err(HandshakeError::Malformed("not an HTTP/1.x request")),
        Err(httparse::Error::Token) => Err(HandshakeError::Malformed("invalid request line")),
        Err(httparse::Error::HeaderName) => Err(HandshakeError::Malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => Err(HandshakeError::Malformed("invalid header value")),
        Err(_) => Err(HandshakeError::Malformed("malformed request head")),
    }
}

/// A valid WebSocket upgrade request.
#[derive(Debug, Clone, Copy)]
pub struct Upgrade<'b> {
    pub path: &'b str,
    pub host: &'b [u8],
    pub key: &'b [u8],
    /// `Sec-WebSocket-Protocol` as sent (a comma-separated list), if any.
    pub protocols: Option<&'b [u8]>,
}

/// Check a request head is a WebSocket upgrade (RFC 6455 §4.2.1).
pub fn validate_upgrade<'b>(head: &Head<'_, 'b>) -> Result<Upgrade<'b>, HandshakeError> {
    if !head.method.eq_ignore_ascii_case("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if head.minor_version < 1 {
        return Err(HandshakeError::OldHttpVersion);
    }
    if !(head.path.starts_with('/') || head.path.contains("://")) {
        return Err(HandshakeError::BadTarget);
    }
    let host = head.single("host").ok_or(HandshakeError::BadHost)?;
    if !head.has_token("connection", "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    let key = head
        .single("sec-websocket-key")
        .ok_or(HandshakeError::BadKey)?;
    match B64.decode(trim(key)) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if head.single("sec-websocket-version").map(trim) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let has_body = head.values("transfer-encoding").next().is_some()
        || head.values("content-length").any(|v| trim(v) != b"0");
    if has_body {
        return Err(HandshakeError::UnexpectedBody);
    }
    let protocols = {
        let mut it = head.values("sec-websocket-protocol");
        let first = it.next();
        if it.next().is_some() {
            return Err(HandshakeError::Malformed(
                "send Sec-WebSocket-Protocol once, as a comma-separated list",
            ));
        }
        first
    };
    Ok(Upgrade {
        path: head.path,
        host,
        key: trim(key),
        protocols,
    })
}

/// Append the 101 response for `key` (and the subprotocol the node chose).
pub fn write_switching_protocols(out: &mut Vec<u8>, key: &[u8], protocol: Option<&[u8]>) {
    crate::stats::count(|c| c.http_status(101));
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key(key).as_bytes());
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Request header fields the gateway never passes to a node: hop-by-hop fields
/// (RFC 7230 §6.1), the handshake fields it sets itself, and extensions, which
/// it does not negotiate (frames pass through untouched, so RSV bits must stay clear).
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "proxy-authorization",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// What the gateway adds about the client, as nginx's `proxy_set_header` lines in the seeds do.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client's address as the gateway saw it.
    pub client_ip: &'a str,
    /// `https` behind TLS, `http` on a plaintext listener.
    pub proto: &'a str,
    /// API keys are on: `X-Api-Key` and `Authorization` (the client's
    /// credentials for the gateway) stay here.
    pub keys: bool,
}

/// Append the upgrade request the gateway sends to a node.
///
/// `path` is the node's path joined with the client's; `key` is a fresh
/// base64 nonce. The client's own header fields pass through except those in
/// `NOT_FORWARDED` and those named in its `Connection` field.
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    path: &str,
    key: &str,
    client: &Head<'_, '_>,
    upgrade: &Upgrade<'_>,
    fwd: Forwarded<'_>,
) {
    let mut fields = Vec::with_capacity(256);
    write_upstream_fields(&mut fields, client, upgrade, fwd);
    finish_upstream_request(out, path, &fields, key);
}

/// The header fields of the upgrade request towards a node, without the
/// request line and the key: kept by a session to open more connections
/// for the same client (its archive node) later.
pub fn write_upstream_fields(
    out: &mut Vec<u8>,
    client: &Head<'_, '_>,
    upgrade: &Upgrade<'_>,
    fwd: Forwarded<'_>,
) {
    write_forwarded(out, client, fwd);
    out.extend_from_slice(
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13",
    );
    if let Some(p) = upgrade.protocols {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p);
    }
    for h in client.headers {
        let skip = NOT_FORWARDED.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            || client.has_token("connection", h.name)
            || (fwd.keys
                && (h.name.eq_ignore_ascii_case("x-api-key")
                    || h.name.eq_ignore_ascii_case("authorization")));
        if !skip {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What a node is told of the client, over WebSocket and HTTP alike (the
/// seeds' nginx lines: `Host $host`, `X-Real-IP $remote_addr`,
/// `X-Forwarded-For $proxy_add_x_forwarded_for`, `X-Forwarded-Proto
/// $scheme`), each field CRLF-terminated:
///
/// - `Host` and `X-Forwarded-Host`: the client's `Host` (`localhost` if it sent none);
/// - `X-Forwarded-For`: the client's list, then the address the gateway saw;
/// - `X-Real-IP`: that address; `X-Forwarded-Proto`: `https` or `http`.
///
/// The client's own copies of these fields never reach the node.
pub fn write_forwarded(out: &mut Vec<u8>, client: &Head<'_, '_>, fwd: Forwarded<'_>) {
    let host = client.single("host").map_or(&b"localhost"[..], trim);
    for name in [&b"Host: "[..], b"X-Forwarded-Host: "] {
        out.extend_from_slice(name);
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for v in client.values("x-forwarded-for") {
        out.extend_from_slice(trim(v));
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(fwd.client_ip.as_bytes());
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(fwd.client_ip.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(fwd.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Request line + `fields` (from [`write_upstream_fields`]) + the key.
pub fn finish_upstream_request(out: &mut Vec<u8>, path: &str, fields: &[u8], key: &str) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(fields);
    out.extend_from_slice(b"Sec-WebSocket-Key: ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Why a node's answer to the upgrade is not a valid 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamRefusal {
    /// The node answered with another status (its code and reason phrase).
    Status(u16, String),
    /// The answer is not valid HTTP or not a valid WebSocket 101.
    Invalid(&'static str),
}

impl std::fmt::Display for UpstreamRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamRefusal::Status(code, reason) => write!(f, "answered {code} {reason}"),
            UpstreamRefusal::Invalid(why) => f.write_str(why),
        }
    }
}

/// A node's accepted upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAccepted {
    /// The subprotocol the node selected, to pass on to the client.
    pub protocol: Option<Vec<u8>>,
}

/// Parse and check a node's response to the upgrade request.
pub fn parse_upstream_response(
    buf: &[u8],
    key: &str,
    offered: Option<&[u8]>,
    max_head: usize,
) -> Result<Parse<UpstreamAccepted>, UpstreamRefusal> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(UpstreamRefusal::Invalid("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(Parse::NeedMore(buf.len() + 1)),
        Err(_) => return Err(UpstreamRefusal::Invalid("malformed HTTP response")),
    };
    let code = res.code.unwrap_or(0);
    if code != 101 {
        return Err(UpstreamRefusal::Status(
            code,
            res.reason.unwrap_or("").to_string(),
        ));
    }
    let head = Head {
        method: "",
        path: "",
        minor_version: 1,
        headers: res.headers,
    };
    if !head.has_token("upgrade", "websocket") || !head.has_token("connection", "upgrade") {
        return Err(UpstreamRefusal::Invalid("101 without Upgrade: websocket"));
    }
    if head.single("sec-websocket-accept").map(trim) != Some(accept_key(key.as_bytes()).as_bytes())
    {
        return Err(UpstreamRefusal::Invalid("wrong Sec-WebSocket-Accept"));
    }
    if head.values("sec-websocket-extensions").next().is_some() {
        return Err(UpstreamRefusal::Invalid(
            "node negotiated an extension nobody offered",
        ));
    }
    let protocol = match head.single("sec-websocket-protocol").map(trim) {
        None => None,
        Some(p) => {
            let offered_it = offered
                .map(|o| o.split(|&b| b == b',').any(|t| trim(t) == p))
                .unwrap_or(false);
            if !offered_it {
                return Err(UpstreamRefusal::Invalid(
                    "node chose a subprotocol the client did not offer",
                ));
            }
            Some(p.to_vec())
        }
    };
    Ok(Parse::Done(UpstreamAccepted { protocol }, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8443\r\nUpgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nOrigin: https://polkadot.js.org\r\n\r\n";

    fn check(req: &str) -> Result<(), HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        match parse_head(req.as_bytes(), &mut headers, 16384, 64)? {
            Parse::Done(head, _) => validate_upgrade(&head).map(|_| ()),
            Parse::NeedMore(_) => panic!("incomplete"),
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_upgrade_parses() {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        let Ok(Parse::Done(head, n)) = parse_head(GOOD.as_bytes(), &mut headers, 16384, 64) else {
            panic!()
        };
        assert_eq!(n, GOOD.len());
        let up = validate_upgrade(&head).unwrap();
        assert_eq!(up.path, "/chat?x=1");
        assert_eq!(up.host, b"example.com:8443");
    }

    #[test]
    fn each_defect_maps_to_its_status() {
        let cases: &[(&str, &str, u16)] = &[
            ("GET ", "POST ", 405),
            ("HTTP/1.1", "HTTP/1.0", 400),
            ("Host: example.com:8443\r\n", "", 400),
            ("keep-alive, Upgrade", "keep-alive", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==", 400),
            ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426),
            ("Sec-WebSocket-Version: 13\r\n", "", 426),
        ];
        for (from, to, status) in cases {
            let req = GOOD.replacen(from, to, 1);
            let err = check(&req).expect_err(&req);
            assert_eq!(err.status(), *status, "{req}");
        }
    }

    #[test]
    fn head_size_and_header_count_are_capped() {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(20000));
        assert_eq!(
            parse_head(big.as_bytes(), &mut headers, 16384, 64).unwrap_err(),
            HandshakeError::HeadTooLarge
        );
        let many: String = (0..70).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        assert_eq!(
            parse_head(req.as_bytes(), &mut headers, 16384, 64).unwrap_err(),
            HandshakeError::TooManyHeaders
        );
    }

    #[test]
    fn partial_head_needs_more() {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        assert!(matches!(
            parse_head(&GOOD.as_bytes()[..30], &mut headers, 16384, 64),
            Ok(Parse::NeedMore(_))
        ));
    }

    #[test]
    fn upstream_request_forwards_client_fields_and_adds_forwarding() {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        let req = GOOD.replace("\r\n\r\n", "\r\nX-Forwarded-For: 10.0.0.1\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Protocol: a, b\r\n\r\n");
        let Ok(Parse::Done(head, _)) = parse_head(req.as_bytes(), &mut headers, 16384, 64) else {
            panic!()
        };
        let up = validate_upgrade(&head).unwrap();
        let mut out = Vec::new();
        write_upstream_request(
            &mut out,
            "/chat?x=1",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            &head,
            &up,
            Forwarded {
                client_ip: "192.0.2.7",
                proto: "https",
                keys: false,
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8443\r\n"));
        assert!(text.contains("\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"));
        assert!(text.contains("\r\nX-Real-IP: 192.0.2.7\r\n"));
        assert!(text.contains("\r\nOrigin: https://polkadot.js.org\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Protocol: a, b\r\n"));
        assert!(!text.contains("deflate"));
        assert!(!text.contains("keep-alive"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn upstream_response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: b\r\n\r\nFRAME";
        let r = parse_upstream_response(ok.as_bytes(), key, Some(b"a, b"), 4096).unwrap();
        assert_eq!(
            r,
            Parse::Done(
                UpstreamAccepted {
                    protocol: Some(b"b".to_vec())
                },
                ok.len() - 5
            )
        );
        assert!(parse_upstream_response(ok.as_bytes(), key, Some(b"a"), 4096).is_err());
        let wrong = ok.replace("s3pP", "AAAA");
        assert_eq!(
            parse_upstream_response(wrong.as_bytes(), key, Some(b"b"), 4096),
            Err(UpstreamRefusal::Invalid("wrong Sec-WebSocket-Accept"))
        );
        let forbidden = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_upstream_response(forbidden.as_bytes(), key, None, 4096),
            Err(UpstreamRefusal::Status(403, "Forbidden".into()))
        );
    }
}
