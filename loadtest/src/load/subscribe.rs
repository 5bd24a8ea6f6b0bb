//! `subscribe`: notification delivery, latency and gaps.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use ringway::io::WriteHalf;
use ringway::jsonrpc;

use crate::stats::Counters;
use crate::ws::{connect as ws_connect, text_frame, Incoming, Target};
use crate::{cores, Args};

use super::*;

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
    let s = each_connection(n, "subscribe", quiet, conns, move |c| {
        let t = t.clone();
        let method = method.clone();
        async move {
            let work = subscription(&t, &method, &c);
            let stop = monoio::time::sleep_until(monoio::time::Instant::from_std(deadline));
            monoio::select! {
                _ = work => {}
                _ = stop => {}
            }
        }
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
                    crate::stats::first_error(&m);
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
