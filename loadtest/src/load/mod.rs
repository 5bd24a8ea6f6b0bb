//! The client modes: `run` (message load), `connect` (session setup),
//! `subscribe` (notification delivery), `startup` (clients starting as
//! Polkadot-JS does) and `compare` (alternating targets).
//!
//! Each mode spreads its connections over worker threads, one monoio runtime
//! each; workers report to the main thread once a second through a channel.

mod compare;
mod connect;
mod run;
mod startup;
mod subscribe;

pub use compare::compare;
pub use connect::connect;
pub use run::run;
pub use startup::startup;
pub use subscribe::subscribe;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use crate::stats::{collect, Counters, Summary, Tick};
use crate::ws::{client_tls, Target};
use crate::Args;

/// A weighted request template.
#[derive(Clone)]
pub struct Call {
    weight: u32,
    method: String,
    params: String,
}

pub fn calls(args: &Args, default: &str) -> Result<Vec<Call>, String> {
    let mut out = Vec::new();
    for m in args.all("method") {
        let (method, weight) = match m.rsplit_once(':') {
            Some((n, w)) if w.parse::<u32>().is_ok() => (n.to_string(), w.parse().unwrap()),
            _ => (m.clone(), 1),
        };
        out.push(Call {
            weight,
            method,
            params: "[]".into(),
        });
    }
    if let Some(path) = args.str("mix") {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("--mix {path}: {e}"))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, char::is_whitespace);
            let bad = || {
                format!(
                    "--mix {path}:{}: expected 'WEIGHT METHOD PARAMS_JSON'",
                    i + 1
                )
            };
            let weight = parts.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
            let method = parts.next().ok_or_else(bad)?.to_string();
            let params = parts.next().unwrap_or("[]").trim().to_string();
            out.push(Call {
                weight,
                method,
                params,
            });
        }
    }
    if out.is_empty() {
        out.push(Call {
            weight: 1,
            method: default.into(),
            params: "[]".into(),
        });
    }
    Ok(out)
}

pub fn pick(calls: &[Call], total: u32) -> &Call {
    let mut r = ringway::rng::below(total as usize) as u32;
    for c in calls {
        if r < c.weight {
            return c;
        }
        r -= c.weight;
    }
    &calls[0]
}

pub fn target(args: &Args, mode: &str) -> Result<Target, String> {
    let url = args.url(mode)?;
    let ca = args.str("ca");
    let insecure = args.flag("insecure");
    let mut t = Target::parse(&url, || client_tls(ca.as_deref(), insecure))?;
    if let Some(b) = args.str("bind") {
        t.bind = Some(
            b.parse()
                .map_err(|_| format!("--bind {b}: not an IP address"))?,
        );
    }
    if let Some(file) = args.str("keys") {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("--keys {file}: {e}"))?;
        let keys = api_keys(&text);
        if keys.is_empty() {
            return Err(format!("--keys {file}: no key in it"));
        }
        t.keys = std::sync::Arc::new(keys);
    }
    Ok(t)
}

/// The secrets of a keys file: its `key = "..."` lines (ringway's keys
/// file; `key_sha256` entries hold none), or else one key per line.
pub fn api_keys(text: &str) -> Vec<String> {
    let from_toml: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            (name.trim() == "key").then(|| value.trim().trim_matches('"').to_string())
        })
        .collect();
    if !from_toml.is_empty() || text.contains("[[key]]") {
        return from_toml;
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Split `total` over `workers` as evenly as possible.
pub fn share(total: usize, workers: usize, i: usize) -> usize {
    total / workers + usize::from(i < total % workers)
}

/// Spawn `workers` threads running `body(worker_index, sender)`, collect and return the summary.
pub fn workers<F>(n: usize, label: &'static str, quiet: bool, body: F) -> Summary
where
    F: Fn(usize, mpsc::Sender<Tick>) + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel();
    let body = std::sync::Arc::new(body);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let tx = tx.clone();
            let body = body.clone();
            std::thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || body(i, tx))
                .expect("spawn")
        })
        .collect();
    drop(tx);
    let s = collect(rx, n, label, quiet);
    for h in handles {
        let _ = h.join();
    }
    s
}

/// `total` connections spread over `n` worker threads, each connection's
/// work the future `each` makes (given its worker's counters); returns the
/// summary.
pub fn each_connection<F, Fut>(
    n: usize,
    label: &'static str,
    quiet: bool,
    total: usize,
    each: F,
) -> Summary
where
    F: Fn(Rc<RefCell<Counters>>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let each = std::sync::Arc::new(each);
    workers(n, label, quiet, move |w, tx| {
        let each = each.clone();
        let count = share(total, n, w);
        crate::runtime(move || async move {
            let c = Rc::new(RefCell::new(Counters::new()));
            let mine = c.clone();
            drive(w, count, c, tx, move |_| each(mine.clone())).await;
        });
    })
}

/// Send a tick every second until `done`, then the last one.
pub async fn ticker(
    worker: usize,
    c: &RefCell<Counters>,
    tx: &mpsc::Sender<Tick>,
    done: &std::cell::Cell<bool>,
) {
    while !done.get() {
        monoio::time::sleep(Duration::from_millis(250)).await;
        let t = c.borrow_mut().take(worker, false);
        let _ = tx.send(t);
    }
}

/// Run futures produced by `make(i)` for `count` connections, concurrently,
/// plus the ticker; returns when all are done.
pub async fn drive<F, Fut>(
    worker: usize,
    count: usize,
    c: Rc<RefCell<Counters>>,
    tx: mpsc::Sender<Tick>,
    make: F,
) where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let done = Rc::new(std::cell::Cell::new(false));
    let remaining = Rc::new(std::cell::Cell::new(count));
    let all_done = Rc::new(RefCell::new(None::<std::task::Waker>));
    for i in 0..count {
        let fut = make(i);
        let remaining = remaining.clone();
        let all_done = all_done.clone();
        monoio::spawn(async move {
            fut.await;
            remaining.set(remaining.get() - 1);
            if remaining.get() == 0 {
                if let Some(w) = all_done.borrow_mut().take() {
                    w.wake();
                }
            }
        });
    }
    let wait = std::future::poll_fn(|cx| {
        if remaining.get() == 0 {
            std::task::Poll::Ready(())
        } else {
            *all_done.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    });
    let d = done.clone();
    let tick = ticker(worker, &c, &tx, &d);
    monoio::select! {
        _ = wait => {}
        _ = tick => {}
    }
    done.set(true);
    let t = c.borrow_mut().take(worker, true);
    let _ = tx.send(t);
}
