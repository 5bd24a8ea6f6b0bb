//! Clients: raw TLS (for malformed input), tungstenite over rustls, and
//! real third-party JavaScript clients run with Node.js.

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

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to the gateway, trusting `cfg`.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsStream {
    tls_connect_from(None, addr, cfg)
}

/// The same from a given local address (127.x.y.z: another client address).
pub fn tls_connect_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> TlsStream {
    let tcp = match from {
        None => TcpStream::connect(addr).unwrap(),
        Some(ip) => {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            sock.connect(&addr.into()).unwrap();
            sock.into()
        }
    };
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(TIMEOUT)).unwrap();
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

/// A tungstenite client over TLS through the gateway.
pub fn ws_connect(
    gw: &Gateway,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> WebSocket<TlsStream> {
    ws_connect_from(None, gw, cfg, path)
}

/// The same from a given local address.
pub fn ws_connect_from(
    from: Option<std::net::IpAddr>,
    gw: &Gateway,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> WebSocket<TlsStream> {
    let stream = tls_connect_from(from, gw.addr, cfg);
    let ws_cfg = WebSocketConfig {
        max_message_size: Some(64 << 20),
        ..Default::default()
    };
    let (ws, resp) = tungstenite::client::client_with_config(gw.url(path), stream, Some(ws_cfg))
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// Upgrade a raw TLS stream; panics unless the answer is 101.
pub fn raw_upgrade(gw: &Gateway, pki: &TestPki) -> TlsStream {
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(upgrade_request("/", |_| {}).as_bytes())
        .unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 101, "{head}");
    s
}

/// A Node.js script from `tests/js`, run from `target/js` (where `.ci/run`
/// installs the npm packages it imports), trusting the test CA.
pub struct JsScript {
    path: PathBuf,
    ca: PathBuf,
}

impl JsScript {
    /// `None` (the test skips, saying so) when a package in `needs` is not installed.
    pub fn new(name: &str, needs: &[&str], pki: &TestPki) -> Option<JsScript> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let js = root.join("target/js");
        if let Some(missing) = needs
            .iter()
            .find(|p| !js.join("node_modules").join(p).exists())
        {
            eprintln!("{missing} not installed (cd target/js && npm install {missing}); skipping");
            return None;
        }
        // Run from a copy next to node_modules, so that `import` finds them.
        let path = js.join(name);
        std::fs::copy(root.join("tests/js").join(name), &path).unwrap();
        let ca = pki.dir.join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        Some(JsScript { path, ca })
    }

    /// Run it with `args`: whether it succeeded, its stdout and its stderr.
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("node")
            .arg(&self.path)
            .args(args)
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .output()
            .expect("node");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
