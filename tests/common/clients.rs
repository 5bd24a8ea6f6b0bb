//! Clients: raw TLS (for malformed input), tungstenite over rustls, and
//! real third-party JavaScript clients run with Node.js.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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

/// A TLS connection asking for (and verifying) the server name `name`.
pub fn tls_connect_named(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(TIMEOUT)).unwrap();
    let conn = ClientConnection::new(cfg, ServerName::try_from(name.to_string()).unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
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

/// `GET path` over TLS, one request per connection: status, headers, body.
pub fn https_get(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> (u16, String, String) {
    let mut s = tls_connect(addr, cfg);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut s)
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

/// The npm packages the tests run, pinned: real clients, and a real node.
pub const JS_CLIENTS: &[&str] = &[
    "ethers@6.17.0",
    "web3@4.16.0",
    "@polkadot/rpc-provider@16.5.6",
    "@polkadot/api@16.5.6",
    "viem@2.58.8",
];
pub const ANVIL: &[&str] = &["@foundry-rs/anvil@1.7.1"];
/// polkadot-api (the new JSON-RPC spec's client), apart from the others:
/// its dependencies are many.
pub const PAPI: &[&str] = &["polkadot-api@2.2.2", "ws@8.18.3"];

/// `target/DIR` made ready once: when `present` says it is not yet, under a
/// file lock (one test binary at a time; the others wait and find it
/// there), `install` is run there, after `tool` (a command that only runs
/// when the installer is there) or the test fails saying `missing`: no
/// test passes by skipping.
fn install_once(
    dir: &str,
    present: impl Fn(&Path) -> bool,
    tool: &[&str],
    missing: &str,
    install: impl FnOnce(&Path) -> Command,
) -> PathBuf {
    use std::os::fd::AsRawFd;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(dir);
    std::fs::create_dir_all(&root).unwrap();
    if present(&root) {
        return root;
    }
    let lock = std::fs::File::create(root.with_extension("lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
    unsafe {
        libc::flock(lock.as_raw_fd(), libc::LOCK_EX);
    }
    if !present(&root) {
        let there = Command::new(tool[0]).args(&tool[1..]).output();
        if !there.map(|o| o.status.success()).unwrap_or(false) {
            panic!("{missing}, then run the tests again");
        }
        let out = install(&root).output().unwrap();
        assert!(
            out.status.success() && present(&root),
            "installing into {} failed:\n{}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
    root
}

/// `target/DIR/node_modules` with `packages` in it, installed with npm the
/// first time (see [`install_once`]).
pub fn npm_packages(dir: &str, packages: &[&str]) -> PathBuf {
    let name = |p: &str| {
        p.rsplit_once('@')
            .filter(|(n, _)| !n.is_empty())
            .map_or(p, |(n, _)| n)
            .to_string()
    };
    let present = |root: &Path| {
        let modules = root.join("node_modules");
        packages.iter().all(|p| modules.join(name(p)).exists())
    };
    let missing = format!(
        "this test runs {packages:?} from npm, and npm is not installed: \
         install Node.js 18+ and npm (Debian: apt-get install nodejs npm)"
    );
    let root = install_once(dir, present, &["npm", "--version"], &missing, |root| {
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--silent"])
            .args(packages)
            .current_dir(root);
        npm
    });
    root.join("node_modules")
}

/// `target/DIR` with the Python `packages` in it, for `PYTHONPATH`,
/// installed with pip the first time (see [`install_once`]).
pub fn python_packages(dir: &str, packages: &[&str], module: &str) -> PathBuf {
    let missing = format!(
        "this test runs {packages:?} from PyPI, and python3 with pip is not installed: \
         install them (Debian: apt-get install python3 python3-pip)"
    );
    let present = |root: &Path| root.join(module).exists();
    let pip = ["python3", "-m", "pip", "--version"];
    install_once(dir, present, &pip, &missing, |root| {
        // --target installs beside the system's packages (PEP 668 allows it).
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(root)
        .args(packages);
        pip
    })
}

impl JsScript {
    /// A script from `tests/js`, with the real clients installed next to it.
    pub fn new(name: &str, pki: &TestPki) -> JsScript {
        Self::with_packages(name, pki, "js", JS_CLIENTS)
    }

    /// A script that imports `packages`, installed in `target/DIR`.
    pub fn with_packages(name: &str, pki: &TestPki, dir: &str, packages: &[&str]) -> JsScript {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let js = npm_packages(dir, packages).parent().unwrap().to_path_buf();
        // Run from a copy next to node_modules, so that `import` finds them.
        let path = js.join(name);
        std::fs::copy(root.join("tests/js").join(name), &path).unwrap();
        let ca = pki.dir.join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        JsScript { path, ca }
    }

    /// Start it with `args`, its stdout piped (to watch it while it runs).
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new("node")
            .arg(&self.path)
            .args(args)
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node")
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

/// Send a JSON-RPC call tagged `tag` to an echo node and check it comes
/// back unchanged (the default gateway reads every call: a payload that
/// is not one is answered -32700 by the gateway itself).
pub fn echo_call<S: std::io::Read + std::io::Write>(ws: &mut tungstenite::WebSocket<S>, tag: &str) {
    let call = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"echo","params":["{tag}"]}}"#);
    ws.send(tungstenite::Message::Text(call.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::Text(call));
}

/// One HTTP JSON-RPC request on a connection of its own (`Connection:
/// close`): the status and the body.
pub fn post_json(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, body: &str) -> (u16, String) {
    post_json_to(tls_connect(addr, cfg), "localhost", "/", body)
}

/// The same on `s` (a connection asking for a given server name), with
/// `Host: host`, to `path`.
pub fn post_json_to(mut s: TlsStream, host: &str, path: &str, body: &str) -> (u16, String) {
    s.sock
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut s);
    (status, body)
}

/// Read until the close frame: its code and reason (panics on an error
/// first, naming how many text messages came before).
pub fn close_frame<S: std::io::Read + std::io::Write>(
    ws: &mut tungstenite::WebSocket<S>,
) -> (u16, String, usize) {
    let mut texts = 0;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => {
                return (u16::from(f.code), f.reason.to_string(), texts)
            }
            Ok(tungstenite::Message::Text(_)) => texts += 1,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e} after {texts} text messages"),
        }
    }
}
