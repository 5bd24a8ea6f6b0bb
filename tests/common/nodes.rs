//! Real nodes, installed from npm into `target/` on first use: anvil
//! (Ethereum) and chopsticks (a real Substrate runtime from a raw chain
//! spec, offline).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::*;

/// The anvil binary: `RINGWAY_ANVIL`, or npm's package (installed into
/// `target/anvil` on first use).
pub fn anvil_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGWAY_ANVIL") {
        return PathBuf::from(p);
    }
    let modules = npm_packages("anvil", ANVIL);
    let bin = modules.join("@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(bin.exists(), "no anvil binary at {}", bin.display());
    bin
}

pub struct Anvil {
    child: Child,
    pub url: String,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn anvil(bin: &PathBuf, args: &[&str]) -> Anvil {
    let mut child = Command::new(bin)
        .args(["--port", "0", "--host", "127.0.0.1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start anvil");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        let line = lines.next().expect("anvil output").unwrap();
        if let Some(a) = line.strip_prefix("Listening on ") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Anvil {
        child,
        url: format!("ws://{addr}"),
    }
}

pub const CHOPSTICKS: &[&str] = &[
    "@acala-network/chopsticks@1.5.1",
    "@substrate/connect-known-chains@1.10.3",
];

/// A chopsticks node: Rococo's Asset Hub from its raw chain spec (its
/// genesis holds the runtime and all storage), in memory, on a free port.
pub struct Chopsticks {
    child: Child,
    pub url: String,
}

impl Drop for Chopsticks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chopsticks() -> Chopsticks {
    let modules = npm_packages("chopsticks", CHOPSTICKS);
    let root = modules.parent().unwrap().to_path_buf();
    let spec = root.join("rococo-asset-hub.json");
    if !spec.exists() {
        // Each writer its own part file (tests start chopsticks at once on
        // a fresh clone), renamed into place whole.
        let part = format!(
            "rococo-asset-hub.json.{:?}.part",
            std::thread::current().id()
        );
        let write = Command::new("node")
            .current_dir(&root)
            .args([
                "-e",
                r#"const {chainSpec} = require("@substrate/connect-known-chains/rococo_v2_2_asset_hub");
                   const part = process.argv[1];
                   require("fs").writeFileSync(part, chainSpec);
                   require("fs").renameSync(part, "rococo-asset-hub.json")"#,
                &part,
            ])
            .status()
            .unwrap();
        assert!(write.success(), "cannot write the Asset Hub chain spec");
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(modules.join(".bin/chopsticks"))
        .current_dir(&root)
        .arg("--chain-spec")
        .arg(&spec)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chopsticks");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("RPC listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("chopsticks did not listen within 90 s");
    Chopsticks {
        child,
        url: format!("ws://127.0.0.1:{port}"),
    }
}

/// A throwaway `redis-server` (Debian's package, which `.ci/run` installs)
/// on a free port below 32768, no persistence: stopped and started again,
/// it comes back empty.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// `redis-server`'s TLS arguments, when it takes only TLS.
    tls: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(Vec::new())
    }

    /// A Redis that takes TLS only, with `cert` and `key` (from `ca`), and
    /// asks clients for a certificate from `ca`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Redis {
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        Self::start_with(vec![
            "--tls-cert-file".into(),
            path(cert),
            "--tls-key-file".into(),
            path(key),
            "--tls-ca-cert-file".into(),
            path(ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ])
    }

    fn start_with(tls: Vec<String>) -> Redis {
        let port = loop {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
                + u64::from(std::process::id()) * 7919;
            let p = 20_000 + (seed % 12_000) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                break p;
            }
        };
        let mut r = Redis {
            child: None,
            port,
            tls,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        match self.tls.is_empty() {
            true => format!("redis://127.0.0.1:{}/", self.port),
            false => format!("rediss://localhost:{}/", self.port),
        }
    }

    /// Start it (again, empty) on its port.
    pub fn restart(&mut self) {
        install_redis();
        let child = Command::new("redis-server")
            .args(match self.tls.is_empty() {
                true => vec!["--port".to_string(), self.port.to_string()],
                false => vec![
                    "--port".to_string(),
                    "0".to_string(),
                    "--tls-port".to_string(),
                    self.port.to_string(),
                ],
            })
            .args(&self.tls)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server: the cluster tests run a real Redis; install it \
                 (Debian: apt-get install redis-server)",
            );
        self.child = Some(child);
        let port = self.port;
        wait_for(TIMEOUT, "redis-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `redis-server` on this machine: when it is missing, Debian's package is
/// installed (once; as root, like `.ci/run`), as the npm peers are.
fn install_redis() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut tried = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let present = || {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if *tried || present() {
        return;
    }
    *tried = true;
    let _ = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
