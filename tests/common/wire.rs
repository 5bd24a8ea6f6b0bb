//! Bytes on the wire, by hand: HTTP responses, upgrade requests, frames.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, RootCertStore, StreamOwned};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::*;

/// Read an HTTP response: status, head, body (by Content-Length).
pub fn read_response(s: &mut impl Read) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&data).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body);
    (status, head, String::from_utf8_lossy(&body).to_string())
}

/// A valid upgrade request head with one header replaced or removed.
pub fn upgrade_request(path: &str, edit: impl Fn(&mut Vec<(String, String)>)) -> String {
    let mut headers: Vec<(String, String)> = vec![
        ("Host".into(), "localhost".into()),
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
        (
            "Sec-WebSocket-Key".into(),
            "dGhlIHNhbXBsZSBub25jZQ==".into(),
        ),
        ("Sec-WebSocket-Version".into(), "13".into()),
    ];
    edit(&mut headers);
    let mut out = format!("GET {path} HTTP/1.1\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out
}

/// A client frame built by hand (masked unless `mask` is None).
pub fn client_frame(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first_byte];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(m | payload.len() as u8);
    } else if payload.len() <= 65535 {
        out.push(m | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Read one server frame: (first byte, payload). None on EOF.
pub fn read_frame(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((h[0], payload))
}

/// Read frames until a close frame; return its code (None for an empty close,
/// Some(0) if the connection ended without one).
pub fn read_close_code(s: &mut impl Read) -> Option<u16> {
    loop {
        match read_frame(s) {
            Some((b0, payload)) if b0 & 0x0f == 0x8 => {
                return if payload.len() >= 2 {
                    Some(u16::from_be_bytes([payload[0], payload[1]]))
                } else {
                    None
                };
            }
            Some(_) => continue,
            None => return Some(0),
        }
    }
}
