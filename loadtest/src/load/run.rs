//! `run` and `flood`: message load, closed or open loop, with a method mix.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use ringway::io::WriteHalf;
use ringway::jsonrpc;

use crate::stats::{Counters, Summary};
use crate::ws::{connect as ws_connect, text_frame, Incoming, Target};
use crate::{cores, Args};

use super::*;

/// `run`: message load over N connections.
pub fn run(args: &Args) -> Result<u8, String> {
    let summary = run_summary(args)?;
    summary.print(args.flag("json"));
    Ok(if summary.ok == 0 { 1 } else { 0 })
}

pub fn run_summary(args: &Args) -> Result<Summary, String> {
    let t = target(args, "run")?;
    let conns: usize = args.num("connections", 100)?;
    let duration = args.secs("duration", 10.0)?;
    let depth: usize = args.num("depth", 1)?.max(1);
    let rate: f64 = args.num("rate", 0.0)?;
    let separate = args.flag("separate");
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
    let mut s = each_connection(n, "run", quiet, conns, move |c| {
        let t = t.clone();
        let calls = calls.clone();
        async move {
            let conn_rate = if rate > 0.0 { rate / conns as f64 } else { 0.0 };
            let inflight = RefCell::new(AHashMap::new());
            let plan = Plan {
                calls: &calls,
                depth,
                separate,
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
    /// Each request in a write of its own (closed loop).
    separate: bool,
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
        separate,
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
        if send(&mut client.writer, out, separate).await.is_err() {
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
            if !out.is_empty() && send(&mut client.writer, out, separate).await.is_err() {
                c.borrow_mut().error("write");
                break;
            }
        }
    }
    let mut close = Vec::new();
    ringway::ws::frame::write_close(&mut close, Some(1000), "", Some(ringway::rng::mask_key()));
    let _ = client.writer.write_all(close).await;
    client.writer.shutdown().await;
    c.borrow_mut().open -= 1;
}

/// Send the frames in `out`: in one write, or (`separate`) a write each.
async fn send<W: WriteHalf>(w: &mut W, out: Vec<u8>, separate: bool) -> std::io::Result<()> {
    if !separate {
        return w.write_all(out).await.0;
    }
    let mut at = 0;
    while at < out.len() {
        let end = match ringway::ws::frame::FrameHeader::parse(&out[at..]) {
            Ok(ringway::ws::frame::Parse::Done(h, n)) => at + n + h.payload_len as usize,
            _ => out.len(),
        };
        w.write_all(out[at..end].to_vec()).await.0?;
        at = end;
    }
    Ok(())
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
                    if !limited {
                        crate::stats::first_error(m);
                    }
                }
                c.record(sent.elapsed());
            }
            None => c.error("unknown_id"),
        },
        None if jsonrpc::peek(m).is_some_and(|p| p.method.is_some()) => {} // a notification
        None => c.error("bad_response"),
    }
}
