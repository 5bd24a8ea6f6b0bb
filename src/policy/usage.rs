//! Usage per API key: what limits read and what billing reads.
//!
//! A key's [`Usage`] is one set of atomics shared by every worker, so a
//! key's rate and quota hold across cores exactly (no per-core split): a
//! call costs a compare-and-swap on the rate (GCRA: one "theoretical
//! arrival time") and an add on the credits; no lock, no allocation.
//! Counters belong to the key's current period (a UTC day or month); at
//! its end they move to `previous` (kept for billing) and start at zero.
//!
//! The [`Book`] holds every key's usage by name, across reloads (a key
//! kept by name keeps its usage; one removed keeps its figures until they
//! are billed). It is written to the state file (`keys.state`) every
//! `keys.state_interval_ms` and at drain, and read at start: a restart
//! keeps the quota used, a SIGKILL loses at most one interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::keys::Period;

/// Why a key's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReason {
    Rate,
    Quota,
    Method,
    Chain,
    Origin,
    Connections,
    Disabled,
}

impl KeyReason {
    pub const ALL: [KeyReason; 7] = [
        KeyReason::Rate,
        KeyReason::Quota,
        KeyReason::Method,
        KeyReason::Chain,
        KeyReason::Origin,
        KeyReason::Connections,
        KeyReason::Disabled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyReason::Rate => "rate",
            KeyReason::Quota => "quota",
            KeyReason::Method => "method",
            KeyReason::Chain => "chain",
            KeyReason::Origin => "origin",
            KeyReason::Connections => "connections",
            KeyReason::Disabled => "disabled",
        }
    }
}

/// What a key used in one period (as `/usage` and the state file write it).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Unix seconds.
    pub period_start: u64,
    pub calls: u64,
    pub credits: u64,
    pub notifications: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub refused: BTreeMap<String, u64>,
}

/// One key's usage in its current period, shared by every worker.
#[derive(Debug, Default)]
pub struct Usage {
    calls: AtomicU64,
    credits: AtomicU64,
    notifications: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    refused: [AtomicU64; KeyReason::ALL.len()],
    /// Open connections (WebSocket sessions and HTTP connections).
    pub sessions: Arc<AtomicUsize>,
    period_start: AtomicU64,
    /// 0: month, 1: day (the key's period, as last configured).
    period: AtomicU8,
    /// GCRA: when the next call would be on time, in ns since [`epoch`].
    tat: AtomicU64,
    previous: Mutex<Option<Counts>>,
    /// The other gateways' figures for this key in this period (`[cluster]`:
    /// written by the sync thread every `sync_ms`; zero without a cluster).
    pub others: Others,
    /// Disabled through the cluster (`POST /keys/<name>/disable`).
    cluster_disabled: std::sync::atomic::AtomicBool,
    /// In a cluster: the credits this gateway may use in this period (its
    /// reservations from the cluster's quota), plus one; 0: none (the
    /// quota alone applies).
    grant: AtomicU64,
    /// The key's quota, as last configured (for the cluster's reservations).
    quota: AtomicU64,
    /// The key has a rate (as last configured): the cluster shares it out.
    rated: std::sync::atomic::AtomicBool,
    /// The key has a `max_connections`.
    capped: std::sync::atomic::AtomicBool,
    /// In a cluster: this gateway's share of the key's rate and burst, in
    /// millionths, by where the calls come (the sync thread's); 0: an even
    /// share (1 / the gateways seen alive).
    share: std::sync::atomic::AtomicU32,
}

/// Another gateway's, or all other gateways', figures for a key.
#[derive(Debug, Default)]
pub struct Others {
    pub calls: AtomicU64,
    pub credits: AtomicU64,
    pub notifications: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub sessions: AtomicU64,
}

/// How many gateways share each budget (`[cluster]`: the live instances
/// last seen; 1 without a cluster). Each admits its share of a rate.
static INSTANCES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// The gateways sharing each budget now.
pub fn instances() -> u32 {
    INSTANCES.load(Relaxed).max(1)
}

/// Set by the cluster's sync thread.
pub fn set_instances(n: u32) {
    INSTANCES.store(n.max(1), Relaxed);
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When the period holding `t` (Unix seconds) starts, and when it ends:
/// UTC days, calendar months.
pub fn period_bounds(period: Period, t: u64) -> (u64, u64) {
    let day = t - t % 86_400;
    match period {
        Period::Day => (day, day + 86_400),
        Period::Month => {
            let date = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(day);
            let first = date.replace_day(1).expect("every month has a first day");
            let next = match first.month() {
                time::Month::December => first
                    .replace_year(first.year() + 1)
                    .map(|d| d.replace_month(time::Month::January)),
                m => Ok(first.replace_month(m.next())),
            }
            .and_then(|d| d)
            .expect("the first of a month exists in every month");
            let secs = |d: time::OffsetDateTime| d.unix_timestamp() as u64;
            (secs(first), secs(next))
        }
    }
}

/// Unix seconds as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(t: u64) -> String {
    let mut s = crate::log::rfc3339(Duration::from_secs(t));
    // "...:SS.000Z" -> "...:SSZ"
    s.truncate(s.len() - 5);
    s.push('Z');
    s
}

pub fn period_name(p: Period) -> &'static str {
    match p {
        Period::Day => "day",
        Period::Month => "month",
    }
}

impl Usage {
    pub fn period(&self) -> Period {
        match self.period.load(Relaxed) {
            1 => Period::Day,
            _ => Period::Month,
        }
    }

    /// The current period's start and end (Unix seconds).
    pub fn period_bounds(&self) -> (u64, u64) {
        let start = self.period_start.load(Relaxed);
        (start, period_bounds(self.period(), start).1)
    }

    /// Take `n` calls from a rate of `rate` per second with `burst`
    /// (GCRA, exact across cores). `Err(wait)`: over; try after `wait`.
    pub fn take_rate(&self, n: u64, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        // In a cluster, this gateway's share of the rate and the burst.
        let share = match self.share.load(Relaxed) {
            0 => 1.0 / f64::from(instances()),
            ppm => f64::from(ppm) / 1e6,
        };
        let (rate, burst) = (rate * share, burst * share);
        let interval = (1e9 / rate) as u64;
        let tolerance = (burst.max(1.0) * 1e9 / rate) as u64;
        let now = now.saturating_duration_since(epoch()).as_nanos() as u64;
        let mut tat = self.tat.load(Relaxed);
        loop {
            let next = tat.max(now) + n * interval;
            if next > now + tolerance {
                return Err(Duration::from_nanos(next - now - tolerance));
            }
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Take `cost` credits from `quota` (0: none); false when they would
    /// go over it (nothing is taken then). In a cluster, over what this
    /// gateway reserved of it.
    pub fn take_credits(&self, cost: u64, quota: u64) -> bool {
        let used = self.credits.fetch_add(cost, Relaxed) + cost;
        let over = quota > 0
            && match self.grant.load(Relaxed) {
                0 => used + self.others.credits.load(Relaxed) > quota,
                g => used > g - 1,
            };
        if over {
            self.credits.fetch_sub(cost, Relaxed);
            return false;
        }
        true
    }

    /// Credits used in this period, by every gateway.
    pub fn credits(&self) -> u64 {
        self.credits.load(Relaxed) + self.others.credits.load(Relaxed)
    }

    /// Disabled through the cluster.
    pub fn cluster_disabled(&self) -> bool {
        self.cluster_disabled.load(Relaxed)
    }

    pub fn set_cluster_disabled(&self, disabled: bool) {
        self.cluster_disabled.store(disabled, Relaxed);
    }

    /// The key's quota as configured (0: none).
    pub fn quota(&self) -> u64 {
        self.quota.load(Relaxed)
    }

    pub fn set_quota(&self, quota: u64) {
        self.quota.store(quota, Relaxed);
    }

    pub fn rated(&self) -> bool {
        self.rated.load(Relaxed)
    }

    /// Whether the key has a `max_connections` (its connections on the
    /// other gateways count).
    pub fn capped(&self) -> bool {
        self.capped.load(Relaxed)
    }

    pub fn set_capped(&self, capped: bool) {
        self.capped.store(capped, Relaxed);
    }

    pub fn set_rated(&self, rated: bool) {
        self.rated.store(rated, Relaxed);
    }

    /// Set by the cluster's sync thread: this gateway's share of the rate
    /// in millionths (`None`: an even share).
    pub fn set_share(&self, ppm: Option<u32>) {
        self.share
            .store(ppm.map_or(0, |p| p.clamp(1, 1_000_000)), Relaxed);
    }

    /// Calls this gateway was asked for against the rate so far (admitted
    /// or refused by it): where the demand is.
    pub fn demand(&self) -> u64 {
        self.calls.load(Relaxed) + self.refused[KeyReason::Rate as usize].load(Relaxed)
    }

    /// This gateway's reservation of the cluster's quota (`None`: none yet).
    pub fn grant(&self) -> Option<u64> {
        self.grant.load(Relaxed).checked_sub(1)
    }

    /// Set by the cluster's sync thread (`None`: the quota alone applies).
    pub fn set_grant(&self, credits: Option<u64>) {
        self.grant
            .store(credits.map_or(0, |c| c.saturating_add(1)), Relaxed);
    }

    /// The sync thread's grant for period `period_start`: dropped when the
    /// period rolled over meanwhile (a new period starts without one).
    pub fn set_grant_for(&self, period_start: u64, credits: Option<u64>) {
        self.set_grant(credits);
        // Stored, then checked: a roll that came before or after leaves 0.
        if self.period_start.load(Relaxed) != period_start {
            self.grant.store(0, Relaxed);
        }
    }

    /// What this instance published of period `at.period_start` before it
    /// restarted (read back from the cluster): each counter resumes from
    /// the larger of that and what it has (from its state file), so a
    /// restart under the same name neither loses nor doubles a count.
    pub fn resume_at_least(&self, at: &Counts) {
        if self.period_start.load(Relaxed) != at.period_start {
            return;
        }
        for (cell, v) in [
            (&self.calls, at.calls),
            (&self.credits, at.credits),
            (&self.notifications, at.notifications),
            (&self.bytes_in, at.bytes_in),
            (&self.bytes_out, at.bytes_out),
        ] {
            cell.fetch_max(v, Relaxed);
        }
    }

    /// Credits used by this gateway in this period.
    pub fn local_credits(&self) -> u64 {
        self.credits.load(Relaxed)
    }

    /// Open connections on the other gateways.
    pub fn others_sessions(&self) -> usize {
        self.others.sessions.load(Relaxed) as usize
    }

    /// `n` calls admitted.
    pub fn called(&self, n: u64) {
        self.calls.fetch_add(n, Relaxed);
    }

    /// A notification delivered, with `cost` credits already taken (or
    /// forced: one that went out before it could be counted).
    pub fn notified(&self, forced_cost: u64) {
        self.notifications.fetch_add(1, Relaxed);
        if forced_cost > 0 {
            self.credits.fetch_add(forced_cost, Relaxed);
        }
    }

    pub fn refused(&self, why: KeyReason) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Relaxed);
    }

    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Relaxed);
    }

    /// A mark that moves whenever any figure of the period does (each
    /// counter only grows within a period): the period and their sum.
    pub fn mark(&self) -> (u64, u64) {
        let counters = [
            &self.calls,
            &self.credits,
            &self.notifications,
            &self.bytes_in,
            &self.bytes_out,
        ];
        let sum = counters
            .into_iter()
            .chain(&self.refused)
            .fold(0u64, |a, c| a.wrapping_add(c.load(Relaxed)));
        (self.period_start.load(Relaxed), sum)
    }

    /// The current period's first second (Unix).
    pub fn period_start(&self) -> u64 {
        self.period_start.load(Relaxed)
    }

    /// The current period's figures.
    pub fn counts(&self) -> Counts {
        Counts {
            period_start: self.period_start.load(Relaxed),
            calls: self.calls.load(Relaxed),
            credits: self.credits.load(Relaxed),
            notifications: self.notifications.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            refused: refused_map(|i| self.refused[i].load(Relaxed)),
        }
    }

    /// Set the period (a reload may change it) and start a new one if the
    /// current one is over at `now` (Unix seconds): the figures so far
    /// move to `previous`; each counter moves whole (an atomic swap), so
    /// a call counted meanwhile lands in one period or the other.
    pub fn roll(&self, period: Period, now: u64) {
        self.period.store(u8::from(period == Period::Day), Relaxed);
        let start = period_bounds(period, now).0;
        let was = self.period_start.load(Relaxed);
        if was == start {
            return;
        }
        self.period_start.store(start, Relaxed);
        let ended = Counts {
            period_start: was,
            calls: self.calls.swap(0, Relaxed),
            credits: self.credits.swap(0, Relaxed),
            notifications: self.notifications.swap(0, Relaxed),
            bytes_in: self.bytes_in.swap(0, Relaxed),
            bytes_out: self.bytes_out.swap(0, Relaxed),
            refused: refused_map(|i| self.refused[i].swap(0, Relaxed)),
        };
        if was != 0 {
            *self.previous.lock() = Some(ended);
        }
        // A new period: reservations start again.
        self.grant.store(0, Relaxed);
    }

    /// The figures a state file kept (its current period, if it is still
    /// current, and the one before).
    fn restore(&self, current: &Counts, previous: Option<Counts>) {
        self.period_start.store(current.period_start, Relaxed);
        self.calls.store(current.calls, Relaxed);
        self.credits.store(current.credits, Relaxed);
        self.notifications.store(current.notifications, Relaxed);
        self.bytes_in.store(current.bytes_in, Relaxed);
        self.bytes_out.store(current.bytes_out, Relaxed);
        for (i, r) in KeyReason::ALL.iter().enumerate() {
            let n = current.refused.get(r.name()).copied().unwrap_or(0);
            self.refused[i].store(n, Relaxed);
        }
        *self.previous.lock() = previous;
    }

    pub fn previous(&self) -> Option<Counts> {
        self.previous.lock().clone()
    }
}

fn refused_map(get: impl Fn(usize) -> u64) -> BTreeMap<String, u64> {
    KeyReason::ALL
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name().to_string(), get(i)))
        .collect()
}

/// One key's entry in the state file.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    period: Period,
    current: Counts,
    previous: Option<Counts>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    saved_at: String,
    keys: BTreeMap<String, Saved>,
}

impl StateFile {
    fn empty() -> StateFile {
        StateFile {
            version: 1,
            saved_at: String::new(),
            keys: BTreeMap::new(),
        }
    }
}

/// Every key's usage, by name, for the life of the process.
#[derive(Debug, Default)]
pub struct Book {
    keys: Mutex<BTreeMap<String, Arc<Usage>>>,
    /// The state file and how often it is written (`keys.state`).
    state: Mutex<Option<(PathBuf, Duration)>>,
    /// Set once the state file was read (at the first configuration
    /// naming one).
    loaded: std::sync::atomic::AtomicBool,
}

impl Book {
    /// Key `name`'s usage (a new one starts at zero in the current period).
    pub fn usage(&self, name: &str, period: Period) -> Arc<Usage> {
        let mut keys = self.keys.lock();
        let u = keys.entry(name.to_string()).or_default().clone();
        u.roll(period, unix_now());
        u
    }

    /// The state file in force, read the first time one is named: what it
    /// kept of a period still current counts on; an older period is
    /// `previous`. A file that cannot be read or is not a state file is
    /// never silently replaced: with `resumes` (a cluster, where this
    /// instance's usage is read back) or `reset` (`keys.state_reset`) it is
    /// moved aside (`<file>.bad-<unix time>`) and usage starts from there;
    /// otherwise the configuration is refused, naming the file.
    pub fn set_state(
        &self,
        state: Option<(PathBuf, Duration)>,
        resumes: bool,
        reset: bool,
    ) -> Result<(), String> {
        if let (Some((path, _)), false) = (&state, self.loaded.load(Relaxed)) {
            let read = match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
                    .map_err(|e| format!("not a usage state file ({e})")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::empty()),
                Err(e) => Err(format!("cannot read it ({e})")),
            };
            match read {
                Ok(file) => self.restore(file, unix_now()),
                Err(why) if !resumes && !reset => {
                    return Err(format!(
                        "keys.state {}: {why}; usage cannot be resumed without [cluster] (set keys.state_reset = true to start this key's usage from zero)",
                        path.display()
                    ));
                }
                Err(why) => {
                    let bad = PathBuf::from(format!("{}.bad-{}", path.display(), unix_now()));
                    let moved = std::fs::rename(path, &bad);
                    let from = if resumes {
                        "usage resumes from the cluster"
                    } else {
                        "usage starts at zero (keys.state_reset)"
                    };
                    match moved {
                        Ok(()) => crate::error!(
                            "keys.state {}: {why}; moved aside to {}; {from}",
                            path.display(),
                            bad.display()
                        ),
                        Err(e) => crate::error!(
                            "keys.state {}: {why}; it could not be moved aside ({e}); {from}",
                            path.display()
                        ),
                    }
                }
            }
            self.loaded.store(true, Relaxed);
        }
        *self.state.lock() = state;
        Ok(())
    }

    fn restore(&self, file: StateFile, now: u64) {
        let mut keys = self.keys.lock();
        for (name, saved) in file.keys {
            let u = keys.entry(name).or_default();
            u.restore(&saved.current, saved.previous);
            u.roll(saved.period, now);
        }
    }

    /// Every key's usage, by name.
    pub fn all(&self) -> Vec<(String, Arc<Usage>)> {
        let keys = self.keys.lock();
        keys.iter().map(|(n, u)| (n.clone(), u.clone())).collect()
    }

    /// Periods that ended at `now` start anew.
    pub fn tick(&self, now: u64) {
        for (_, u) in self.all() {
            u.roll(u.period(), now);
        }
    }

    /// Write the state file (a temporary file renamed over it: a crash
    /// mid-write leaves the last whole one).
    pub fn save(&self) -> std::io::Result<()> {
        let Some((path, _)) = self.state.lock().clone() else {
            return Ok(());
        };
        let keys = self
            .all()
            .into_iter()
            .map(|(n, u)| {
                let saved = Saved {
                    period: u.period(),
                    current: u.counts(),
                    previous: u.previous(),
                };
                (n, saved)
            })
            .collect();
        let file = StateFile {
            version: 1,
            saved_at: rfc3339(unix_now()),
            keys,
        };
        let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        write_atomically(&path, &text)
    }

    /// How often the state file is written, if there is one.
    pub fn interval(&self) -> Option<Duration> {
        self.state.lock().as_ref().map(|s| s.1)
    }
}

/// Temporary file, fsync, rename over `path`, fsync of the directory: a
/// crash at any point leaves the last whole file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The book's keeper: rolls periods over every second and writes the
/// state file every interval, until `stop`; then writes it once more.
pub fn keep(book: Arc<Book>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut last_save = Instant::now();
    let mut failing = false;
    loop {
        let stopping = stop.load(Relaxed);
        book.tick(unix_now());
        let due = book
            .interval()
            .is_some_and(|every| last_save.elapsed() >= every);
        if due || stopping {
            last_save = Instant::now();
            match book.save() {
                Ok(()) if failing => {
                    failing = false;
                    crate::info!("keys.state: written again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    crate::error!("keys.state: cannot write it ({e}); usage is kept in memory and written when it can be");
                }
                Err(_) => {}
            }
        }
        if stopping {
            return;
        }
        let step = book
            .interval()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        std::thread::sleep(step.min(Duration::from_millis(250)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the locks every worker shares: a panic caught while one is
    /// held (a task's, `crate::task`) used to poison it, and every later
    /// lock on every worker panicked in turn.
    #[test]
    fn a_panic_caught_under_the_books_lock_leaves_every_worker_its_usage() {
        let book = Arc::new(Book::default());
        let b = book.clone();
        let caught = std::thread::spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _held = b.keys.lock();
                panic!("a bug under the lock");
            }))
        })
        .join()
        .unwrap();
        assert!(caught.is_err());
        // Another worker goes on: its key's usage, counted.
        let u = book.usage("customer", Period::Month);
        u.calls.fetch_add(1, Relaxed);
        assert_eq!(book.usage("customer", Period::Month).calls.load(Relaxed), 1);
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        // 2026-12-05T16:30:00Z
        let t = 1_796_488_200;
        assert_eq!(rfc3339(t), "2026-12-05T16:30:00Z");
        let (s, e) = period_bounds(Period::Day, t);
        assert_eq!(
            (rfc3339(s).as_str(), rfc3339(e).as_str()),
            ("2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z")
        );
        let (s, e) = period_bounds(Period::Month, t);
        assert_eq!(
            (rfc3339(s).as_str(), rfc3339(e).as_str()),
            ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
        );
        let feb = period_bounds(Period::Month, 1_709_164_800); // 2024-02-29
        assert_eq!(rfc3339(feb.1), "2024-03-01T00:00:00Z");
    }

    #[test]
    fn a_rate_holds_exactly_across_threads() {
        let u = Arc::new(Usage::default());
        let t0 = Instant::now();
        // 8 threads ask 1,000 times each at one instant: the burst passes.
        let taken: usize = (0..8)
            .map(|_| {
                let u = u.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| u.take_rate(1, 100.0, 50.0, t0).is_ok())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 50);
        // Then, asked every millisecond for a second: the rate, 100.
        let more = (1..=1000)
            .filter(|i| {
                u.take_rate(1, 100.0, 50.0, t0 + Duration::from_millis(*i))
                    .is_ok()
            })
            .count();
        assert!((99..=101).contains(&more), "{more}");
        let later = t0 + Duration::from_millis(1000);
        let wait = u.take_rate(1, 100.0, 50.0, later).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
    }

    #[test]
    fn a_quota_is_never_passed_and_a_new_period_starts_at_zero() {
        let u = Usage::default();
        u.roll(Period::Day, 1_796_488_200);
        assert_eq!((0..20).filter(|_| u.take_credits(3, 30)).count(), 10);
        assert_eq!(u.credits(), 30);
        u.called(10);
        u.roll(Period::Day, 1_796_488_200 + 86_400);
        assert_eq!(u.credits(), 0);
        let prev = u.previous().unwrap();
        assert_eq!((prev.calls, prev.credits), (10, 30));
    }

    #[test]
    fn the_state_file_keeps_a_current_period_across_a_restart() {
        let dir = std::env::temp_dir().join(format!("ringway-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.json");
        let _ = std::fs::remove_file(&path);
        let book = Book::default();
        book.set_state(Some((path.clone(), Duration::from_secs(1))), false, false)
            .unwrap();
        let u = book.usage("alice", Period::Month);
        assert!(u.take_credits(7, 0));
        u.called(7);
        u.refused(KeyReason::Rate);
        book.save().unwrap();
        let again = Book::default();
        again
            .set_state(Some((path, Duration::from_secs(1))), false, false)
            .unwrap();
        let c = again.usage("alice", Period::Month).counts();
        assert_eq!((c.calls, c.credits, c.refused["rate"]), (7, 7, 1));
    }
}
