//! Plain HTTP/1.1 responses the gateway writes itself (errors, information).
//!
//! Every refusal has a status, a `Content-Type`, an exact `Content-Length`
//! and a one-line body that says why, so a client (or a person with curl)
//! learns what to fix.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::io::{stop, with_deadline, ReadHalf, Stop, WriteHalf};
use crate::ws::handshake::HandshakeError;

/// Standard reason phrase for the statuses the gateway sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Append a whole response: the status line, `headers`, the body's type
/// and exact length, `Connection: close` when `close`, then the body. The
/// one place the gateway writes a response head.
pub fn write(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
    close: bool,
) {
    use std::io::Write;
    crate::stats::count(|c| c.http_status(status));
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some(t) = content_type {
        let _ = write!(out, "Content-Type: {t}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A response with a one-line text body that says why (a newline is added).
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
    close: bool,
) {
    let mut line = Vec::with_capacity(body.len() + 1);
    line.extend_from_slice(body.as_bytes());
    line.push(b'\n');
    write(out, status, headers, Some(TEXT), &line, close);
}

/// A JSON response (`Cache-Control: no-store`: it says how things are now).
pub fn write_json(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) {
    write(out, status, headers, Some(JSON), body, close);
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json; charset=utf-8";
/// Prometheus' text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a final response and the lingering read after it may take.
const LINGER: Duration = Duration::from_millis(1000);

/// Send a final response, end our side, and read what the client still sends
/// for a moment, so that closing does not reset the connection before the
/// client has read the response (RFC 7230 §6.6). Runs on its own deadline:
/// it is also how a handshake that timed out gets its 408.
pub async fn respond_and_close<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    out: Vec<u8>,
) {
    with_deadline(LINGER, || stop(fd, Stop::All), async {
        let (res, _) = w.write_all(out).await;
        if res.is_err() {
            return;
        }
        w.shutdown().await;
        for _ in 0..16 {
            let (res, _) = r.read_more(Vec::new()).await;
            if !matches!(res, Ok(n) if n > 0) {
                break;
            }
        }
    })
    .await;
}

/// Answer with `status`, `headers` and a one-line reason, then close: the
/// one way a request the gateway will not serve is answered.
pub async fn close_with<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    status: u16,
    headers: &[(&str, &str)],
    why: &str,
) {
    let mut out = Vec::new();
    write_response(&mut out, status, headers, why, true);
    respond_and_close(r, w, fd, out).await;
}

/// Answer a refused request head with its status and reason, then close.
pub async fn refuse<R: ReadHalf, W: WriteHalf>(r: &mut R, w: &mut W, fd: RawFd, e: HandshakeError) {
    close_with(r, w, fd, e.status(), e.extra_headers(), e.reason()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_counts_the_body_and_newline() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            426,
            &[("Sec-WebSocket-Version", "13")],
            "why",
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\nwhy\n"));
    }
}
