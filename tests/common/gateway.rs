//! The real `ringway` binary as a child process on 127.0.0.1:0, its
//! address read from what it prints; killed (and its stderr checked for
//! panics) when dropped.

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

/// A configuration that reads no call: a plain WebSocket relay.
pub const RELAY: &str = "[cache]\nenabled = false\n[admission]\nmax_subscriptions_per_connection = 0\nmax_inflight_per_connection = 0\n";

/// The gateway binary, killed on drop (and checked for panics).
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub stdout_lines: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Gateway {
    /// Wait up to `within` for the gateway to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stop the gateway and return what it wrote to stderr.
    pub fn stop_and_read_stderr(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// The gateway's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send the gateway `signal` (`"HUP"`, `"TERM"`, ...).
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// Run the gateway (TLS from `pki`, in front of `upstream`, plus
    /// `extra`) as one that is expected to exit by itself: what it did.
    pub fn run_to_exit(pki: &TestPki, upstream: &str, extra: &[&str]) -> std::process::Output {
        let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
        std::process::Command::new(env!("CARGO_BIN_EXE_ringway"))
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(["--cert", cert, "--key", key])
            .args(extra)
            .output()
            .unwrap()
    }

    /// Start with TLS from `pki`, in front of `upstreams`, plus extra flags.
    pub fn start(pki: &TestPki, upstreams: &[String], extra: &[&str]) -> Gateway {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            pki.cert.display().to_string(),
            "--key".into(),
            pki.key.display().to_string(),
            "--workers".into(),
            "2".into(),
        ];
        for u in upstreams {
            args.push("--upstream".into());
            args.push(u.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Gateway::start_args(&args)
    }

    /// Start as a plain WebSocket relay (no call read: no cache, no
    /// per-call limits), for tests of frames with payloads that are not
    /// JSON-RPC; the default gateway answers those itself (-32700).
    pub fn start_relay(pki: &TestPki, upstreams: &[String]) -> Gateway {
        let cfg = write_config(pki, "relay.toml", RELAY);
        Gateway::start(pki, upstreams, &["--config", cfg.to_str().unwrap()])
    }

    pub fn start_args(args: &[String]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringway");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err_thread = thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(TIMEOUT) {
                Ok(line) => {
                    let found = line
                        .split("listening on ")
                        .nth(1)
                        .and_then(|rest| rest.split("://").nth(1))
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                    lines.push(line);
                    if let Some(addr) = found {
                        return Gateway {
                            child,
                            addr,
                            stdout_lines: lines,
                            stderr: Some(err_thread),
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "gateway did not start; stdout {lines:?}; stderr {}",
                        err_thread.join().unwrap_or_default()
                    );
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("wss://localhost:{}{}", self.addr.port(), path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr.take() {
            let err = t.join().unwrap_or_default();
            if std::env::var_os("RINGWAY_TEST_LOG").is_some() {
                eprintln!("--- gateway stderr ---\n{err}");
            }
            if err.contains("panicked") && !thread::panicking() {
                panic!("the gateway panicked:\n{err}");
            }
        }
    }
}

/// The address the gateway printed after `marker` (e.g. "metrics on http://").
pub fn printed_addr(gw: &Gateway, marker: &str) -> String {
    gw.stdout_lines
        .iter()
        .find_map(|l| l.split(marker).nth(1))
        .and_then(|r| r.split(['/', ' ']).next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no `{marker}` address printed: {:?}", gw.stdout_lines))
}

/// `GET path` over plain HTTP/1.1 from `addr` (the metrics listener).
pub fn plain_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    super::read_response(&mut s)
}

/// The `ringway` binary run to its end with `args` (`--check`, `import-nginx`).
pub fn run_ringway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(args)
        .output()
        .unwrap()
}

/// `ringway --check --config FILE`.
pub fn check_config(file: &str) -> std::process::Output {
    run_ringway(&["--check", "--config", file])
}
