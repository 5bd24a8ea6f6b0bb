//! `connect`: session setup (TCP, TLS, upgrade) per second, and holding sessions.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringway::io::WriteHalf;

use crate::stats::Counters;
use crate::ws::connect as ws_connect;
use crate::{cores, runtime, Args};

use super::*;

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
