//! What kind of chain a pool of nodes serves, asked of the nodes when the
//! configuration does not say (a chain converted from nginx): one
//! `eth_chainId` over WebSocket. An Ethereum node answers it; a Substrate
//! node answers "method not found". Blocking, with a deadline per node
//! (however slowly a node trickles its bytes): it runs where a
//! configuration is loaded (at start, in the reload thread, `--check`),
//! never on a worker or the signal thread.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::config::{NodeAddr, NodeConfig};
use crate::route::Flavour;

/// The kind of the first of `nodes` (up to three tried) that answers
/// within `timeout` (the whole exchange with each); `None` when none does.
pub fn flavour(nodes: &[NodeConfig], timeout: Duration) -> Option<Flavour> {
    nodes.iter().take(3).find_map(|n| ask(n, timeout).ok())
}

/// A stream whose every read and write must end by one deadline.
trait Deadlined: Read + Write {
    /// Limit the next read or write to what is left of `until`.
    fn within(&mut self, until: Instant) -> std::io::Result<()>;
}

impl Deadlined for std::net::TcpStream {
    fn within(&mut self, until: Instant) -> std::io::Result<()> {
        let left = left(until)?;
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

impl Deadlined for std::os::unix::net::UnixStream {
    fn within(&mut self, until: Instant) -> std::io::Result<()> {
        let left = left(until)?;
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

fn left(until: Instant) -> std::io::Result<Duration> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer by the deadline",
        ));
    }
    Ok(left)
}

fn ask(node: &NodeConfig, timeout: Duration) -> std::io::Result<Flavour> {
    let until = Instant::now() + timeout;
    match &node.addr {
        NodeAddr::Tcp(addrs) => {
            let s = std::net::TcpStream::connect_timeout(&addrs[0], timeout)?;
            s.set_nodelay(true)?;
            exchange(s, &addrs[0].to_string(), &node.path, until)
        }
        NodeAddr::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            exchange(s, "localhost", &node.path, until)
        }
    }
}

fn exchange(
    mut s: impl Deadlined,
    host: &str,
    path: &str,
    until: Instant,
) -> std::io::Result<Flavour> {
    s.within(until)?;
    let bad = |why: &str| std::io::Error::other(why.to_string());
    let path = if path.is_empty() { "/" } else { path };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: cmluZ3dheS1kZXRlY3Qh\r\nSec-WebSocket-Version: 13\r\nUser-Agent: ringway-health\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        s.within(until)?;
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() > 16 << 10 {
            return Err(bad("no upgrade"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(bad("upgrade refused"));
    }
    // One masked text frame (RFC 6455 §5.3).
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let mask = [0x5a, 0x17, 0xc3, 0x88];
    let mut frame = vec![0x81, 0x80 | call.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(call.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.within(until)?;
    s.write_all(&frame)?;
    // The answer: the first text frame (unmasked from a server).
    let mut data = buf.split_off(head_end);
    loop {
        if let Some((op, payload)) = parse(&data) {
            if op == 1 {
                let v: serde_json::Value =
                    serde_json::from_slice(payload).map_err(|_| bad("not JSON"))?;
                return Ok(if v.get("result").is_some() {
                    Flavour::Ethereum
                } else {
                    Flavour::Substrate
                });
            }
            let used = payload.as_ptr() as usize - data.as_ptr() as usize + payload.len();
            data.drain(..used);
            continue;
        }
        s.within(until)?;
        let n = s.read(&mut chunk)?;
        if n == 0 || data.len() > 1 << 20 {
            return Err(bad("no answer"));
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// A whole unmasked frame at the start of `data`: its opcode and payload.
fn parse(data: &[u8]) -> Option<(u8, &[u8])> {
    let (op, len7) = (*data.first()? & 0x0f, *data.get(1)? & 0x7f);
    let (len, at): (usize, usize) = match len7 {
        126 => (
            u16::from_be_bytes([*data.get(2)?, *data.get(3)?]) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(data.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    Some((op, data.get(at..at.checked_add(len)?)?))
}
