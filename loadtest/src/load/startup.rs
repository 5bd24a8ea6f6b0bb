//! `startup`: N clients start at once, each as Polkadot-JS's `ApiPromise.create()`
//! does: the start-up calls in one burst (`rpc_methods`, the genesis hash,
//! runtime version, chain, properties, metadata), then subscriptions to new
//! heads and runtime version, until the first head arrives. Reports the time
//! each took to be ready; what that cost the node, the node reports.

use std::cell::RefCell;
use std::time::Instant;

use ringway::io::WriteHalf;
use ringway::jsonrpc;

use crate::stats::Counters;
use crate::ws::{connect as ws_connect, text_frame, Incoming, Target};
use crate::{cores, Args};

use super::*;

/// The calls of one client's start, in order (method, params).
pub const START_UP: &[(&str, &str)] = &[
    ("rpc_methods", "[]"),
    ("chain_getBlockHash", "[0]"),
    ("state_getRuntimeVersion", "[]"),
    ("system_chain", "[]"),
    ("system_properties", "[]"),
    ("state_getMetadata", "[]"),
    ("chain_subscribeNewHead", "[]"),
    ("state_subscribeRuntimeVersion", "[]"),
];

pub fn startup(args: &Args) -> Result<u8, String> {
    let t = target(args, "startup")?;
    let clients: usize = args.num("clients", 10)?;
    let n = args.num("workers", cores())?.clamp(1, clients.max(1));
    let quiet = args.flag("quiet") || args.flag("json");
    let s = each_connection(n, "startup", quiet, clients, move |c| {
        let t = t.clone();
        async move { start_one(&t, &c).await }
    });
    s.print(args.flag("json"));
    Ok(if s.errors.values().sum::<u64>() > 0 || s.ok == 0 {
        1
    } else {
        0
    })
}

async fn start_one(t: &Target, c: &RefCell<Counters>) {
    let started = Instant::now();
    let mut client = match ws_connect(t).await {
        Ok(cl) => cl,
        Err((kind, _)) => {
            c.borrow_mut().error(kind.name());
            return;
        }
    };
    let mut out = Vec::new();
    for (i, (method, params)) in START_UP.iter().enumerate() {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"{method}","params":{params}}}"#);
        text_frame(&mut out, body.as_bytes());
    }
    let (res, _) = client.writer.write_all(out).await;
    if res.is_err() {
        c.borrow_mut().error("write");
        return;
    }
    let mut answered = 0;
    let mut headed = false;
    while answered < START_UP.len() || !headed {
        match client.reader.next().await {
            Ok(Some(Incoming::Text(m))) => {
                c.borrow_mut().bytes += m.len() as u64;
                let Some(p) = jsonrpc::peek(&m) else {
                    c.borrow_mut().error("bad_response");
                    return;
                };
                if p.error.is_some() {
                    c.borrow_mut().error("rpc_error");
                    crate::stats::first_error(&m);
                    return;
                }
                if p.id.is_some() {
                    answered += 1;
                } else if p.method == Some(b"chain_newHead") {
                    headed = true;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                c.borrow_mut().error("closed");
                return;
            }
        }
    }
    c.borrow_mut().record(started.elapsed());
}
