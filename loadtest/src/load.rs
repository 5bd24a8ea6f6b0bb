//! The client modes: `run` (message load), `connect` (session setup),
//! `subscribe` (notification delivery) and `compare` (alternating targets).
//!
//! Each mode spreads its connections over worker threads, one monoio runtime
//! each; workers report to the main thread once a second through a channel.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use ringway::io::WriteHalf;
use ringway::jsonrpc;

use crate::stats::{collect, Counters, Summary, Tick};
use crate::ws::{client_tls, connect as ws_connect, text_frame, Incoming, Target};
use crate::{cores, runtime, Args};

/// A weighted request template.
#[derive(Clone)]
struct Call {
    weight: u32,
    method: String,
    params: String,
}

fn calls(args: &Args, default: &str) -> Result<Vec<Call>, String> {
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

fn pick(calls: &[Call], total: u32) -> &Call {
    let mut r = ringway::rng::below(total as usize) as u32;
    for c in calls {
        if r < c.weight {
            return c;
        }
        r -= c.weight;
    }
    &calls[0]
}

fn target(args: &Args, mode: &str) -> Result<Target, String> {
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
    Ok(t)
}

/// Split `total` over `workers` as evenly as possible.
fn share(total: usize, workers: usize, i: usize) -> usize {
    total / workers + usize::from(i < total % workers)
}

/// Spawn `workers` threads running `body(worker_index, sender)`, collect and return the summary.
fn workers<F>(n: usize, label: &'static str, quiet: bool, body: F) -> Summary
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

/// Send a tick every second until `done`, then the last one.
async fn ticker(
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
async fn drive<F, Fut>(
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

/// `run`: message load over N connections.
pub fn run(args: &Args) -> Result<u8, String> {
    let summary = run_summary(args)?;
    summary.print(args.flag("json"));
    Ok(if summary.ok == 0 { 1 } else { 0 })
}

fn run_summary(args: &Args) -> Result<Summary, String> {
    let t = target(args, "run")?;
    let conns: usize = args.num("connections", 100)?;
    let duration = args.secs("duration", 10.0)?;
    let depth: usize = args.num("depth", 1)?.max(1);
    let rate: f64 = args.num("rate", 0.0)?;
    let limit: u64 = args.num("messages", u64::MAX)?;
    let n = args.num("workers", cores())?.clamp(1, conns.max(1));
    let calls = calls(args, "system_health")?;
    let quiet = args.flag("quiet") || args.flag("json");
    let per_conn_limit = if limit == u64::MAX {
        u64::MAX
    } else {
        limit.div_ceil(conns.max(1) as u64)
    };
    let start = Instant::now();
    let deadline = start + duration;
    let mut s = workers(n, "run", quiet, move |w, tx| {
        let t = t.clone();
        let calls = calls.clone();
        let count = share(conns, n, w);
        runtime(move || async move {
            let c = Rc::new(RefCell::new(Counters::new()));
            let c2 = c.clone();
            drive(w, count, c, tx, move |_| {
                let t = t.clone();
                let calls = calls.clone();
                let c = c2.clone();
                async move {
                    let conn_rate = if rate > 0.0 { rate / conns as f64 } else { 0.0 };
                    let inflight = RefCell::new(AHashMap::new());
                    let plan = Plan {
                        calls: &calls,
                        depth,
                        conn_rate,
                        limit: per_conn_limit,
                        deadline,
                    };
                    let work = one_connection(&t, &plan, &c, &inflight);
                    // Requests still unanswered two seconds after the end are counted, each.
                    let cutoff = monoio::time::sleep_until(monoio::time::Instant::from_std(
                        deadline + Duration::from_secs(2),
                    ));
                    monoio::select! {
                        _ = work => {}
                        _ = cutoff => {
                            let n = inflight.borrow().len();
                            let mut c = c.borrow_mut();
                            for _ in 0..n {
                                c.error("unanswered");
                            }
                        }
                    }
                }
            })
            .await;
        });
    });
    s.elapsed = start.elapsed().min(duration).max(Duration::from_millis(1));
    Ok(s)
}

fn request(out: &mut Vec<u8>, id: u64, call: &Call) {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{}","params":{}}}"#,
        call.method, call.params
    );
    text_frame(out, body.as_bytes());
}

/// What a response is: its id (numeric, ours), and whether it is a JSON-RPC error.
fn response_id(m: &[u8]) -> Option<(u64, bool)> {
    let p = jsonrpc::peek(m)?;
    let id = std::str::from_utf8(p.id?).ok()?.parse().ok()?;
    Some((id, p.error.is_some()))
}

/// What one connection of `run` does.
struct Plan<'a> {
    calls: &'a [Call],
    /// Requests kept in flight (closed loop).
    depth: usize,
    /// Messages per second (open loop); 0 for closed loop.
    conn_rate: f64,
    /// Most requests to send.
    limit: u64,
    deadline: Instant,
}

async fn one_connection(
    t: &Target,
    plan: &Plan<'_>,
    c: &RefCell<Counters>,
    inflight: &RefCell<AHashMap<u64, Instant>>,
) {
    let Plan {
        calls,
        depth,
        conn_rate,
        limit,
        deadline,
    } = *plan;
    let mut client = match ws_connect(t).await {
        Ok(cl) => cl,
        Err((kind, _)) => {
            c.borrow_mut().error(kind.name());
            return;
        }
    };
    c.borrow_mut().open += 1;
    let total: u32 = calls.iter().map(|c| c.weight).sum();
    let mut next_id = 1u64;

    if conn_rate > 0.0 {
        // Open loop: a sender on a schedule, a receiver beside it.
        let interval = Duration::from_secs_f64(1.0 / conn_rate);
        let sender_done = std::cell::Cell::new(false);
        let finished = ringway::signal::Signal::default();
        let sender = async {
            // Spread connections' first sends over one interval.
            let mut at =
                Instant::now() + interval.mul_f64(ringway::rng::below(1000) as f64 / 1000.0);
            let mut sent = 0;
            while at < deadline && sent < limit {
                monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
                let mut out = Vec::new();
                request(&mut out, next_id, pick(calls, total));
                inflight.borrow_mut().insert(next_id, at);
                next_id += 1;
                sent += 1;
                let (res, _) = client.writer.write_all(out).await;
                if res.is_err() {
                    c.borrow_mut().error("write");
                    return;
                }
                at += interval;
            }
            sender_done.set(true);
            if inflight.borrow().is_empty() {
                finished.notify();
            }
        };
        let receiver = async {
            loop {
                match client.reader.next().await {
                    Ok(Some(Incoming::Text(m))) => handle_response(&m, inflight, c),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        c.borrow_mut().error("closed");
                        finished.notify();
                        return;
                    }
                }
                if sender_done.get() && inflight.borrow().is_empty() {
                    finished.notify();
                    return;
                }
            }
        };
        // Done when everything sent was answered (or the connection ended).
        let both = async { monoio::join!(sender, receiver) };
        monoio::select! {
            _ = both => {}
            _ = finished.wait() => {}
        }
    } else {
        // Closed loop: keep `depth` requests in flight.
        let mut out = Vec::new();
        let mut sent = 0;
        for _ in 0..depth.min(limit as usize) {
            request(&mut out, next_id, pick(calls, total));
            inflight.borrow_mut().insert(next_id, Instant::now());
            next_id += 1;
            sent += 1;
        }
        let (res, _) = client.writer.write_all(out).await;
        if res.is_err() {
            c.borrow_mut().error("write");
            return;
        }
        while !inflight.borrow().is_empty() {
            let msg = match client.reader.next().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => {
                    c.borrow_mut().error("closed");
                    break;
                }
            };
            let mut out = Vec::new();
            let mut handle = |m: Incoming, out: &mut Vec<u8>| {
                if let Incoming::Text(m) = m {
                    let before = inflight.borrow().len();
                    handle_response(&m, inflight, c);
                    let answered = before - inflight.borrow().len();
                    for _ in 0..answered {
                        if Instant::now() < deadline && sent < limit {
                            request(out, next_id, pick(calls, total));
                            inflight.borrow_mut().insert(next_id, Instant::now());
                            next_id += 1;
                            sent += 1;
                        }
                    }
                }
            };
            handle(msg, &mut out);
            while let Some(m) = client.reader.try_next() {
                handle(m, &mut out);
            }
            if !out.is_empty() {
                let (res, _) = client.writer.write_all(out).await;
                if res.is_err() {
                    c.borrow_mut().error("write");
                    break;
                }
            }
        }
    }
    let mut close = Vec::new();
    ringway::ws::frame::write_close(&mut close, Some(1000), "", Some(ringway::rng::mask_key()));
    let _ = client.writer.write_all(close).await;
    client.writer.shutdown().await;
    c.borrow_mut().open -= 1;
}

fn handle_response(m: &[u8], inflight: &RefCell<AHashMap<u64, Instant>>, c: &RefCell<Counters>) {
    let mut c = c.borrow_mut();
    c.bytes += m.len() as u64;
    match response_id(m) {
        Some((id, is_error)) => match inflight.borrow_mut().remove(&id) {
            Some(sent) => {
                if is_error {
                    // Rate-limited calls are counted apart: they are the point of a flood run.
                    let limited = m.windows(6).any(|w| w == b"-32005");
                    c.error(if limited { "rate_limited" } else { "rpc_error" });
                }
                c.record(sent.elapsed());
            }
            None => c.error("unknown_id"),
        },
        None if jsonrpc::peek(m).is_some_and(|p| p.method.is_some()) => {} // a notification
        None => c.error("bad_response"),
    }
}

/// `connect`: session setup rate and latency; optionally hold sessions open.
pub fn connect(args: &Args) -> Result<u8, String> {
    let t = target(args, "connect")?;
    let count: usize = args.num("count", 1000)?;
    let rate: f64 = args.num("rate", 0.0)?;
    let concurrency: usize = args.num("concurrency", 50)?.max(1);
    let hold = args.flag("hold");
    let duration = args.secs("duration", 10.0)?;
    let n = args.num("workers", cores())?.max(1);
    let quiet = args.flag("quiet") || args.flag("json");
    let start = Instant::now();
    let deadline = start + duration;
    let mut s = workers(n, "connect", quiet, move |w, tx| {
        let t = t.clone();
        let mine = share(count, n, w);
        let slots = if rate > 0.0 {
            mine
        } else {
            share(concurrency, n, w).min(mine).max(1)
        };
        runtime(move || async move {
            let c = Rc::new(RefCell::new(Counters::new()));
            let c2 = c.clone();
            let next = Rc::new(std::cell::Cell::new(0usize));
            let kept = Rc::new(RefCell::new(Vec::new()));
            let kept2 = kept.clone();
            drive(w, slots, c, tx, move |slot| {
                let t = t.clone();
                let c = c2.clone();
                let next = next.clone();
                let kept = kept2.clone();
                async move {
                    loop {
                        let i = next.get();
                        if i >= mine || Instant::now() >= deadline {
                            break;
                        }
                        next.set(i + 1);
                        if rate > 0.0 {
                            // Each slot makes one connection at its scheduled time.
                            let at = start + Duration::from_secs_f64((i * n + w) as f64 / rate);
                            if at >= deadline {
                                break;
                            }
                            monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
                        }
                        let t0 = Instant::now();
                        match ws_connect(&t).await {
                            Ok(client) => {
                                {
                                    let mut cc = c.borrow_mut();
                                    cc.record(t0.elapsed());
                                    cc.open += 1;
                                }
                                if hold {
                                    kept.borrow_mut().push(client);
                                } else {
                                    let mut client = client;
                                    let mut close = Vec::new();
                                    ringway::ws::frame::write_close(
                                        &mut close,
                                        Some(1000),
                                        "",
                                        Some(ringway::rng::mask_key()),
                                    );
                                    let _ = client.writer.write_final(close).await;
                                    c.borrow_mut().open -= 1;
                                }
                            }
                            Err((kind, _)) => c.borrow_mut().error(kind.name()),
                        }
                        if rate > 0.0 {
                            break;
                        }
                    }
                    let _ = slot;
                    if hold {
                        monoio::time::sleep_until(monoio::time::Instant::from_std(deadline)).await;
                    }
                }
            })
            .await;
            drop(kept);
        });
    });
    if !hold {
        s.elapsed = s.elapsed.min(duration);
    }
    s.print(args.flag("json"));
    Ok(if s.ok == 0 { 1 } else { 0 })
}

/// `subscribe`: N subscriptions, notification latency from the node's `ts`, and gaps.
pub fn subscribe(args: &Args) -> Result<u8, String> {
    let t = target(args, "subscribe")?;
    let conns: usize = args.num("connections", 100)?;
    let duration = args.secs("duration", 20.0)?;
    let method = args
        .str("method")
        .unwrap_or_else(|| "chain_subscribeNewHeads".into());
    let n = args.num("workers", cores())?.clamp(1, conns.max(1));
    let quiet = args.flag("quiet") || args.flag("json");
    let deadline = Instant::now() + duration;
    let s = workers(n, "subscribe", quiet, move |w, tx| {
        let t = t.clone();
        let method = method.clone();
        let count = share(conns, n, w);
        runtime(move || async move {
            let c = Rc::new(RefCell::new(Counters::new()));
            let c2 = c.clone();
            drive(w, count, c, tx, move |_| {
                let t = t.clone();
                let c = c2.clone();
                let method = method.clone();
                async move {
                    let work = subscription(&t, &method, &c);
                    let stop = monoio::time::sleep_until(monoio::time::Instant::from_std(deadline));
                    monoio::select! {
                        _ = work => {}
                        _ = stop => {}
                    }
                }
            })
            .await;
        });
    });
    s.print(args.flag("json"));
    Ok(if s.ok == 0 { 1 } else { 0 })
}

async fn subscription(t: &Target, method: &str, c: &RefCell<Counters>) {
    let mut client = match ws_connect(t).await {
        Ok(cl) => cl,
        Err((kind, _)) => {
            c.borrow_mut().error(kind.name());
            return;
        }
    };
    c.borrow_mut().open += 1;
    let mut out = Vec::new();
    text_frame(
        &mut out,
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":[]}}"#).as_bytes(),
    );
    let (res, _) = client.writer.write_all(out).await;
    if res.is_err() {
        c.borrow_mut().error("write");
        return;
    }
    let mut last_block: Option<u64> = None;
    loop {
        match client.reader.next().await {
            Ok(Some(Incoming::Text(m))) => {
                let Some(p) = jsonrpc::peek(&m) else {
                    c.borrow_mut().error("bad_response");
                    continue;
                };
                if p.error.is_some() {
                    c.borrow_mut().error("rpc_error");
                    return;
                }
                let Some(params) = p.params else { continue };
                let Some(inner) = jsonrpc::peek(params) else {
                    continue;
                };
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_micros() as u64;
                let mut cc = c.borrow_mut();
                cc.bytes += m.len() as u64;
                // The mock node stamps its send time in params.ts.
                let ts = find_number(params, b"\"ts\":");
                match ts {
                    Some(ts) => cc.record(Duration::from_micros(now_us.saturating_sub(ts))),
                    None => cc.ok += 1,
                }
                let number = inner.result.and_then(|r| find_hex(r, b"\"number\":\"0x"));
                if let (Some(prev), Some(n)) = (last_block, number) {
                    if n > prev + 1 {
                        for _ in 0..(n - prev - 1) {
                            cc.error("gap");
                        }
                    }
                }
                if number.is_some() {
                    last_block = number;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                c.borrow_mut().error("closed");
                return;
            }
        }
    }
}

fn find_number(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = hay.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = hay[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn find_hex(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = hay.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = hay[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(std::str::from_utf8(&digits).ok()?, 16).ok()
}

/// `compare`: alternate `run` over targets, report medians and ratios.
pub fn compare(args: &Args) -> Result<u8, String> {
    let targets: Vec<(String, String)> = args
        .all("target")
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .ok_or_else(|| format!("--target {t}: expected NAME=URL"))
        })
        .collect::<Result<_, _>>()?;
    if targets.len() < 2 {
        return Err("compare needs at least two --target NAME=URL".into());
    }
    let rounds: usize = args.num("rounds", 3)?;
    // Pass every other option through to `run`.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let passthrough: Vec<String> = std::env::args().skip(2).collect();
    let mut filtered = Vec::new();
    let mut skip = false;
    for a in &passthrough {
        if skip {
            skip = false;
            continue;
        }
        if a == "--target" || a == "--rounds" {
            skip = true;
            continue;
        }
        if a.starts_with("--target=") || a.starts_with("--rounds=") || a == "--json" {
            continue;
        }
        filtered.push(a.clone());
    }
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, url)) in targets.iter().enumerate() {
            let out = std::process::Command::new(&exe)
                .arg("run")
                .arg(url)
                .args(&filtered)
                .arg("--json")
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rate = find_float(&text, "\"rate\":").unwrap_or(0.0);
            let p50 = find_float(&text, "\"p50_ms\":").unwrap_or(0.0);
            let p99 = find_float(&text, "\"p99_ms\":").unwrap_or(0.0);
            eprintln!(
                "round {} {name}: {rate:.0}/s p50 {p50:.3} ms p99 {p99:.3} ms",
                round + 1
            );
            results[i].push((rate, p50, p99));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mut meds = Vec::new();
    println!(
        "{:<12} {:>12} {:>10} {:>10}",
        "target", "msgs/s", "p50 ms", "p99 ms"
    );
    for (i, (name, _)) in targets.iter().enumerate() {
        let mut r: Vec<f64> = results[i].iter().map(|x| x.0).collect();
        let mut a: Vec<f64> = results[i].iter().map(|x| x.1).collect();
        let mut b: Vec<f64> = results[i].iter().map(|x| x.2).collect();
        let m = (median(&mut r), median(&mut a), median(&mut b));
        println!("{name:<12} {:>12.0} {:>10.3} {:>10.3}", m.0, m.1, m.2);
        meds.push(m);
    }
    for i in 1..targets.len() {
        println!(
            "{} / {}: throughput x{:.2}, p50 x{:.2}, p99 x{:.2}",
            targets[0].0,
            targets[i].0,
            meds[0].0 / meds[i].0.max(1e-9),
            meds[0].1 / meds[i].1.max(1e-9),
            meds[0].2 / meds[i].2.max(1e-9)
        );
    }
    Ok(0)
}

fn find_float(hay: &str, key: &str) -> Option<f64> {
    let at = hay.find(key)? + key.len();
    let end = hay[at..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .map_or(hay.len(), |e| at + e);
    hay[at..end].parse().ok()
}
