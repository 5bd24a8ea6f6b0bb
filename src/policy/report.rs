//! `GET /usage`: every API key's figures as JSON, by name, for billing
//! (the counting is [`super::usage`]'s).

use std::sync::atomic::Ordering::Relaxed;

use super::usage::{period_name, rfc3339, unix_now, Book};

/// A key's limits as `/usage` shows them: quota, rate, disabled.
pub type Limits = (u64, f64, bool);

/// `GET /usage`: every key's figures, by name, as JSON. `limits`: those of
/// the keys in force, by name (a key no longer in the file: "removed").
/// With `cluster`, each key also has `cluster`: every gateway's figures
/// summed (this one's now, the others' as of the last sync).
pub fn report(book: &Book, limits: &dyn Fn(&str) -> Option<Limits>, cluster: bool) -> String {
    use std::fmt::Write;
    let mut out = String::from("{\"keys\":{");
    for (i, (name, u)) in book.all().iter().enumerate() {
        let c = u.counts();
        let (start, end) = u.period_bounds();
        let (quota, rate, state) = match limits(name) {
            Some((q, r, disabled)) => (
                q,
                r,
                if disabled || u.cluster_disabled() {
                    "disabled"
                } else {
                    "active"
                },
            ),
            None => (0, 0.0, "removed"),
        };
        let cluster = if cluster {
            let o = &u.others;
            format!(
                ",\"cluster\":{{\"calls\":{},\"credits\":{},\"notifications\":{},\"bytes_in\":{},\"bytes_out\":{},\"sessions\":{}}}",
                c.calls + o.calls.load(Relaxed),
                c.credits + o.credits.load(Relaxed),
                c.notifications + o.notifications.load(Relaxed),
                c.bytes_in + o.bytes_in.load(Relaxed),
                c.bytes_out + o.bytes_out.load(Relaxed),
                u.sessions.load(Relaxed) as u64 + o.sessions.load(Relaxed),
            )
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "{}\"{}\":{{\"state\":\"{state}\",\"period\":\"{}\",\"period_start\":\"{}\",\"period_end\":\"{}\",\"quota\":{quota},\"rate\":{rate},\"sessions\":{},\"current\":{},\"previous\":{}{cluster}}}",
            if i > 0 { "," } else { "" },
            name,
            period_name(u.period()),
            rfc3339(start),
            rfc3339(end),
            u.sessions.load(Relaxed),
            serde_json::to_string(&c).unwrap_or_default(),
            serde_json::to_string(&u.previous()).unwrap_or_default(),
        );
    }
    let _ = write!(out, "}},\"at\":\"{}\"}}", rfc3339(unix_now()));
    out
}
