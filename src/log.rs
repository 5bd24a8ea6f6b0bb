//! Logging through the `log` facade, to stderr, one line per event: text,
//! or one JSON object per line (`log.format = "json"`) for log shippers.
//! The gateway's own lines and its dependencies' (rustls, the redis crate)
//! go the same way, each at its level; a dependency's line names its
//! module (`rustls::conn: ...`). Timestamps are RFC 3339 in UTC with
//! milliseconds (`2026-11-29T08:12:03.123Z`), what people, journald and log
//! shippers read; the calendar is the `time` crate's.
//!
//! The level is process-wide (`log::max_level`, set at start and by a
//! reload); checking it is one relaxed atomic load, so disabled debug lines
//! cost nothing on the hot path.

use std::sync::atomic::{AtomicBool, Ordering};

/// The levels a configuration names (`log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    fn filter(self) -> ::log::LevelFilter {
        match self {
            Level::Error => ::log::LevelFilter::Error,
            Level::Warn => ::log::LevelFilter::Warn,
            Level::Info => ::log::LevelFilter::Info,
            Level::Debug => ::log::LevelFilter::Debug,
        }
    }
}

static JSON: AtomicBool = AtomicBool::new(false);

/// The process's logger: every record at or above the level, to stderr.
struct Stderr;

static LOGGER: Stderr = Stderr;

impl ::log::Log for Stderr {
    fn enabled(&self, m: &::log::Metadata<'_>) -> bool {
        m.level() <= ::log::max_level()
    }

    fn log(&self, r: &::log::Record<'_>) {
        if self.enabled(r.metadata()) {
            write(r.level(), r.target(), r.args());
        }
    }

    fn flush(&self) {}
}

/// One JSON object per line instead of text.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// The level from now on (the logger is installed the first time).
pub fn set_level(level: Level) {
    // (Fails only when already installed.)
    let _ = ::log::set_logger(&LOGGER);
    ::log::set_max_level(level.filter());
}

/// Whether a record of this level is written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level.filter() <= ::log::max_level()
}

/// A record's module, named in its line unless it is the gateway's own.
fn foreign(target: &str) -> Option<&str> {
    (!target.starts_with("ringway")).then_some(target)
}

fn write(level: ::log::Level, target: &str, args: &std::fmt::Arguments<'_>) {
    use std::io::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("main");
    let mut err = std::io::stderr().lock();
    let _ = if JSON.load(Ordering::Relaxed) {
        let line = json_line(now, level, name, foreign(target), &args.to_string());
        writeln!(err, "{line}")
    } else {
        match foreign(target) {
            None => writeln!(err, "{} {:5} [{name}] {args}", rfc3339(now), level.as_str()),
            Some(t) => writeln!(
                err,
                "{} {:5} [{name}] {t}: {args}",
                rfc3339(now),
                level.as_str()
            ),
        }
    };
}

/// `{"ts":"2026-11-29T08:12:03.123Z","level":"info","thread":"worker-0","msg":"..."}`
/// (and `"target"`: a dependency's module).
fn json_line(
    now: std::time::Duration,
    level: ::log::Level,
    thread: &str,
    target: Option<&str>,
    msg: &str,
) -> String {
    let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let target = target.map_or(String::new(), |t| format!(",\"target\":{}", text(t)));
    format!(
        "{{\"ts\":\"{}\",\"level\":\"{}\",\"thread\":{}{target},\"msg\":{}}}",
        rfc3339(now),
        level.as_str().to_ascii_lowercase(),
        text(thread),
        text(msg)
    )
}

/// A time since the Unix epoch as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(since_epoch: std::time::Duration) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + since_epoch;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::__log::error!($($arg)+) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::__log::warn!($($arg)+) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::__log::info!($($arg)+) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::__log::debug!($($arg)+) }; }

/// Log a panic as one line (where, and its message) instead of the
/// standard hook's text and, under `RUST_BACKTRACE`, a backtrace of several
/// kilobytes per panic. A connection's panic is caught and its task ends
/// (`CatchUnwind`); the worker goes on.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::error!("panic at {at}: {msg}");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_json() {
        let line = json_line(
            std::time::Duration::from_millis(1_795_291_045_445),
            ::log::Level::Warn,
            "worker-0",
            None,
            "node \"a\" is down\nnext line",
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["thread"], "worker-0");
        assert_eq!(v["msg"], "node \"a\" is down\nnext line");
        assert_eq!(v["ts"], "2026-11-21T19:57:25.445Z");
        assert!(!line.contains('\n'));
        assert!(v.get("target").is_none(), "the gateway's own line");
        let dep = json_line(
            std::time::Duration::ZERO,
            ::log::Level::Debug,
            "w",
            Some("rustls::conn"),
            "x",
        );
        let v: serde_json::Value = serde_json::from_str(&dep).unwrap();
        assert_eq!(
            (v["target"].as_str(), v["level"].as_str()),
            (Some("rustls::conn"), Some("debug"))
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let at = |ms: u64| rfc3339(std::time::Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
    }
}
