//! Counting and reporting: per-worker histograms sent to the main thread once
//! a second (no shared locks), a live one-line progress report, the final
//! percentile table, and JSON for scripts.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The first error answer the run got (its text, cut to 300 bytes): the
/// report shows it, so a failing run says what failed.
static FIRST_ERROR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Keep `message` if it is the run's first error answer.
pub fn first_error(message: &[u8]) {
    FIRST_ERROR
        .get_or_init(|| String::from_utf8_lossy(&message[..message.len().min(300)]).into_owned());
}

/// Latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// What a worker reports, each second and at the end.
pub struct Tick {
    pub worker: usize,
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub open: u64,
    pub bytes: u64,
    pub last: bool,
}

/// Per-worker accumulation between ticks.
pub struct Counters {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub open: u64,
    pub bytes: u64,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            hist: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            open: 0,
            bytes: 0,
        }
    }

    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.hist.record(us);
        self.ok += 1;
    }

    pub fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Take the interval's figures (the open count is a level, not a count).
    pub fn take(&mut self, worker: usize, last: bool) -> Tick {
        let hist = std::mem::replace(&mut self.hist, histogram());
        Tick {
            worker,
            hist,
            ok: std::mem::take(&mut self.ok),
            errors: std::mem::take(&mut self.errors),
            open: self.open,
            bytes: std::mem::take(&mut self.bytes),
            last,
        }
    }
}

/// The whole run's totals.
pub struct Summary {
    pub label: &'static str,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub bytes: u64,
    pub peak_open: u64,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn print(&self, json: bool) {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        let errors: u64 = self.errors.values().sum();
        if json {
            let errs: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            println!(
                r#"{{"mode":"{}","elapsed_s":{:.3},"ok":{},"rate":{:.1},"p50_ms":{:.3},"p90_ms":{:.3},"p99_ms":{:.3},"p999_ms":{:.3},"max_ms":{:.3},"mean_ms":{:.3},"errors":{},"error_kinds":{{{}}},"bytes":{},"peak_open":{}{}}}"#,
                self.label,
                self.elapsed.as_secs_f64(),
                self.ok,
                self.rate(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                self.hist.max() as f64 / 1000.0,
                self.hist.mean() / 1000.0,
                errors,
                errs.join(","),
                self.bytes,
                self.peak_open,
                FIRST_ERROR
                    .get()
                    .map(|e| {
                        let mut j = String::from(r#","first_error":""#);
                        ringway::jsonrpc::error::escape_into(&mut j, e);
                        j + "\""
                    })
                    .unwrap_or_default()
            );
            return;
        }
        println!();
        println!(
            "{}: {} ok in {:.2} s = {:.0}/s; errors {}{}; peak open {}",
            self.label,
            self.ok,
            self.elapsed.as_secs_f64(),
            self.rate(),
            errors,
            if errors > 0 {
                format!(" {:?}", self.errors)
            } else {
                String::new()
            },
            self.peak_open
        );
        if let Some(e) = FIRST_ERROR.get() {
            println!("first error: {e}");
        }
        if self.bytes > 0 {
            println!(
                "received {:.1} MB = {:.1} MB/s",
                self.bytes as f64 / 1e6,
                self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
            );
        }
        if self.ok > 0 {
            println!("latency (ms)   p50 {:>9.3}   p90 {:>9.3}   p99 {:>9.3}   p99.9 {:>9.3}   max {:>9.3}",
                q(0.5), q(0.9), q(0.99), q(0.999), self.hist.max() as f64 / 1000.0);
        }
    }
}

/// Collect ticks from `workers` workers, print progress each second unless
/// `quiet`, and return the totals when every worker has sent its last tick.
pub fn collect(rx: Receiver<Tick>, workers: usize, label: &'static str, quiet: bool) -> Summary {
    let start = Instant::now();
    let mut total = Summary {
        label,
        elapsed: Duration::ZERO,
        hist: histogram(),
        ok: 0,
        errors: BTreeMap::new(),
        bytes: 0,
        peak_open: 0,
    };
    let mut open = vec![0u64; workers];
    let mut finished = 0;
    let mut interval = histogram();
    let mut interval_ok = 0u64;
    let mut interval_err = 0u64;
    let mut last_print = Instant::now();
    while finished < workers {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(t) => {
                let _ = total.hist.add(&t.hist);
                let _ = interval.add(&t.hist);
                total.ok += t.ok;
                interval_ok += t.ok;
                total.bytes += t.bytes;
                for (k, v) in &t.errors {
                    *total.errors.entry(k).or_default() += v;
                    interval_err += v;
                }
                open[t.worker] = t.open;
                total.peak_open = total.peak_open.max(open.iter().sum());
                if t.last {
                    finished += 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            if !quiet {
                let secs = last_print.elapsed().as_secs_f64();
                eprintln!(
                    "{:>5.1}s  open {:>6}  {:>9.0}/s  p50 {:>8.3} ms  p99 {:>8.3} ms  errors {}",
                    start.elapsed().as_secs_f64(),
                    open.iter().sum::<u64>(),
                    interval_ok as f64 / secs,
                    interval.value_at_quantile(0.5) as f64 / 1000.0,
                    interval.value_at_quantile(0.99) as f64 / 1000.0,
                    interval_err
                );
            }
            interval = histogram();
            interval_ok = 0;
            interval_err = 0;
            last_print = Instant::now();
        }
    }
    total.elapsed = start.elapsed();
    total
}
