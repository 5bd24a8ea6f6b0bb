//! Each key's ledger in Redis: per period, a field per instance with its
//! cumulative figures, its reservation of the quota and its heartbeat (see
//! [`RESERVE`]). An instance writes only its own field, so a retry, a Redis
//! that restarts empty, or an instance cut off for a while neither loses
//! nor doubles a count: the next sync writes them all again. A field whose
//! heartbeat stops (its gateway was killed, or renamed) stops counting for
//! sessions and grants at once; its figures stay for billing.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use std::time::Duration;

use crate::policy::usage::{Counts, Usage};

/// How long an instance counts as alive after its last announcement.
pub fn alive(sync: Duration) -> Duration {
    (sync * 20).max(Duration::from_secs(2))
}

/// Publishes one instance's figures for a key and period, with its
/// reservation of the quota and its share of the rate, atomically against
/// the others':
/// KEYS[1] the key's hash for the period (a field per instance: "calls
/// credits notifications bytes_in bytes_out sessions granted beat", the
/// beat being Redis's clock at its last sync, 0 once it left), KEYS[2] the
/// key's rate shares (a field per instance: "share demand time");
/// ARGV: the instance, its figures, the credits it holds, the credits it
/// asks for more, the quota, the hash's lifetime (ms), the calls asked of
/// it against the rate since its last sync (-1: the key has no rate), how
/// long an instance counts as alive (ms), and 1 for its last sync (drain:
/// it leaves, its unused grant returned, its sessions gone).
///
/// Another instance's field whose beat is older than the alive window (or
/// that has none: it was killed, or is of an older version) holds no
/// sessions and no grant: only the credits it used count against the
/// quota. Its calls, credits, notifications and bytes stay in the totals
/// for billing.
///
/// Quota: grants what is free of it (never more). Rate: each live
/// instance's share is a floor (1 / 10n) plus the rest in proportion to
/// where the calls come, and never more than the others leave free: the
/// shares written never add up to more than the whole. Answers {granted,
/// the others' calls, credits, notifications, bytes in, bytes out and live
/// sessions, this instance's share in millionths (-1: none)}.
pub const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = tonumber(ARGV[8])
local all = redis.call('HGETALL', KEYS[1])
local others = 0
local sums = {0, 0, 0, 0, 0, 0}
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local f = {}
    for x in string.gmatch(all[i + 1], '%S+') do f[#f + 1] = tonumber(x) or 0 end
    for k = 1, 5 do sums[k] = sums[k] + (f[k] or 0) end
    local beat = f[8] or 0
    if beat > 0 and now - beat <= alive then
      sums[6] = sums[6] + (f[6] or 0)
      others = others + math.max(f[7] or 0, f[2] or 0)
    else
      others = others + (f[2] or 0)
    end
  end
end
local keep, want, quota = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local got = 0
if want > 0 then
  got = math.max(0, math.min(want, quota - others - keep))
end
local beat = now
if ARGV[9] == '1' then beat = 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (keep + got) .. ' ' .. beat)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local share = -1
local demand = tonumber(ARGV[7])
if demand >= 0 then
  local rows = redis.call('HGETALL', KEYS[2])
  local n, asked, held = 1, demand, 0
  for i = 1, #rows, 2 do
    if rows[i] ~= ARGV[1] then
      local s, d, at = string.match(rows[i + 1], '(%S+) (%S+) (%S+)')
      if s and now - tonumber(at) <= alive then
        n = n + 1
        asked = asked + tonumber(d)
        held = held + tonumber(s)
      else
        redis.call('HDEL', KEYS[2], rows[i])
      end
    end
  end
  local floor = 1 / (10 * n)
  local want = 1 / n
  if asked > 0 then
    want = floor + (1 - n * floor) * demand / asked
  end
  share = math.max(floor, math.min(want, 1 - held))
  if ARGV[9] == '1' then
    redis.call('HDEL', KEYS[2], ARGV[1])
  else
    redis.call('HSET', KEYS[2], ARGV[1], string.format('%.6f %d %d', share, demand, now))
    redis.call('PEXPIRE', KEYS[2], alive * 2)
  end
  share = math.floor(share * 1000000)
end
return {got, sums[1], sums[2], sums[3], sums[4], sums[5], sums[6], share}
"#;

/// The script's SHA-1, for `EVALSHA` (its text travels once per connection,
/// in `SCRIPT LOAD`, not once per key per sync).
pub fn sha(script: &str) -> String {
    use sha1::Digest;
    let d = sha1::Sha1::digest(script.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// How often a key with nothing new is published all the same (in syncs):
/// four times in the alive window, so that its heartbeat (and its share
/// of the rate) never goes stale.
pub fn refresh_every(sync: Duration) -> u64 {
    (alive(sync).as_millis() / 4 / sync.as_millis().max(1)).max(1) as u64
}

/// What a key's last publication said, for the syncs after it.
#[derive(Debug)]
pub struct Published {
    /// Its credits and demand (the pace sizes reservations; the demand,
    /// shares of the rate).
    used: u64,
    demand: u64,
    /// Its figures ([`Usage::mark`]) and sessions as written, and the sync
    /// that wrote them.
    said: ((u64, u64), usize),
    round: u64,
    /// Redis took it (false: the sync failed, or Redis restarted empty).
    sent: bool,
}

/// What was published did not reach Redis, or Redis lost it: every key is
/// written at the next sync.
pub fn unsent(last: &mut Ledger) {
    for p in last.values_mut() {
        p.sent = false;
    }
}

/// Each key's last publication, by name.
pub type Ledger = HashMap<String, Published>;

/// Whether `u` can wait for a later sync: a key whose only cluster-wide
/// limit is its rate (no quota: reservations are a negotiation at every
/// sync; no `max_connections`: the others' sessions are read at every
/// sync), nothing of which changed since it was last published (counts,
/// refusals, sessions), and that was published within [`refresh_every`]
/// syncs. A gateway with 10,000 such keys, most of them idle, writes the
/// few in use at each sync and the rest in turn; what `/usage` shows of
/// the others' use of the rest is then at most that many syncs old.
pub fn quiet(c: &Names<'_>, name: &str, u: &Usage, last: &Ledger) -> bool {
    let Some(p) = last.get(name) else {
        return false;
    };
    p.sent
        && u.quota() == 0
        && !u.capped()
        && c.round.saturating_sub(p.round) < c.every
        && p.said == (u.mark(), sessions(c, u, false))
}

/// The sessions this instance publishes for `u` (none once it drains).
fn sessions(c: &Names<'_>, u: &Usage, leaving: bool) -> usize {
    if leaving || c.draining {
        0
    } else {
        u.sessions.load(Relaxed)
    }
}

/// What the ledger writes under.
pub struct Names<'a> {
    pub config: &'a crate::config::cluster::ClusterConfig,
    /// The live instances last seen (this one included).
    pub instances: u32,
    /// This instance drains: its sessions are published as 0.
    pub draining: bool,
    /// This sync's number, and how often a quiet key is published.
    pub round: u64,
    pub every: u64,
}

impl Names<'_> {
    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
    }
}

/// What one key's exchange needs to read its answer: what it kept of its
/// grant, and the period it asked in.
pub struct Asked {
    keep: u64,
    period: u64,
}

/// This instance's figures for `u` in one field, as the script writes them.
fn figures(c: &Counts, sessions: usize) -> String {
    format!(
        "{} {} {} {} {} {}",
        c.calls, c.credits, c.notifications, c.bytes_in, c.bytes_out, sessions
    )
}

/// One key's part of a sync: its figures and reservation published (with
/// its heartbeat), its grant topped up, the others' read: one `EVALSHA`
/// on `pipe`. `last`: each key's last publication. `leaving`:
/// the drain's last sync (sessions 0, the unused grant given back).
#[allow(clippy::too_many_arguments)] // the sync's facts, each used once
pub fn publish(
    pipe: &mut redis::Pipeline,
    c: &Names<'_>,
    sha: &str,
    name: &str,
    u: &Usage,
    last: &mut Ledger,
    leaving: bool,
) -> Asked {
    let mark = u.mark();
    let counts = u.counts();
    let quota = u.quota();
    let used = counts.credits;
    let demand = u.demand();
    let sessions = sessions(c, u, leaving);
    let (was_used, was_demand) = last
        .get(name)
        .map_or((used, demand), |p| (p.used, p.demand));
    let consumed = used.saturating_sub(was_used);
    let asked_rate = demand.saturating_sub(was_demand);
    last.insert(
        name.to_string(),
        Published {
            used,
            demand,
            said: (mark, sessions),
            round: c.round,
            sent: true,
        },
    );
    // Enough for two intervals at the pace of the last one, or half of this
    // gateway's part of what is left, whichever is more.
    let left = quota.saturating_sub(u.credits());
    let n = u64::from(c.instances.max(1));
    let headroom = (2 * consumed).max(left / (2 * n)).max(1);
    let held = u.grant().unwrap_or(used).max(used);
    let target = used + headroom;
    let (keep, want) = match leaving {
        true => (used, 0),
        false => {
            let keep = held.min(target);
            (keep, if quota > 0 { target - keep } else { 0 })
        }
    };
    let alive = alive(c.config.sync).as_millis() as u64;
    pipe.cmd("EVALSHA")
        .arg(sha)
        .arg(2)
        .arg(c.key(&format!("usage:{name}:{}", counts.period_start)))
        .arg(c.key(&format!("share:{name}")))
        .arg(&c.config.instance)
        .arg(figures(&counts, sessions))
        .arg(keep)
        .arg(want)
        .arg(quota)
        // Kept a while after the period, for billing.
        .arg(40u64 * 86_400_000)
        .arg(if u.rated() { asked_rate as i64 } else { -1 })
        .arg(alive)
        .arg(u8::from(leaving));
    Asked {
        keep,
        period: counts.period_start,
    }
}

/// One key's answer: its grant (for the period it asked in), its share of
/// the rate, and the others' figures.
pub fn read(u: &Usage, asked: Asked, reply: redis::Value) -> redis::RedisResult<()> {
    let v: Vec<i64> = redis::from_redis_value(&reply)?;
    let [got, calls, credits, notifications, bytes_in, bytes_out, sessions, share] = v[..] else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "the cluster's script answered in another shape",
        )));
    };
    if u.quota() > 0 {
        // A grant is for the period it was asked in: one that rolled over
        // meanwhile starts its reservations again.
        u.set_grant_for(asked.period, Some(asked.keep + got.max(0) as u64));
    }
    u.set_share(u32::try_from(share).ok());
    let o = &u.others;
    for (cell, v) in [
        (&o.calls, calls),
        (&o.credits, credits),
        (&o.notifications, notifications),
        (&o.bytes_in, bytes_in),
        (&o.bytes_out, bytes_out),
        (&o.sessions, sessions),
    ] {
        cell.store(v.max(0) as u64, Relaxed);
    }
    Ok(())
}

/// What this instance published for each of `keys` in their current
/// period before it (re)started, read back: each resumes from the larger
/// of that and its state file's (see [`Usage::resume_at_least`]).
pub fn resume(
    con: &mut redis::Connection,
    c: &Names<'_>,
    keys: &[(String, std::sync::Arc<Usage>)],
) -> redis::RedisResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    let periods: Vec<u64> = keys.iter().map(|(_, u)| u.counts().period_start).collect();
    for ((name, _), period) in keys.iter().zip(&periods) {
        pipe.cmd("HGET")
            .arg(c.key(&format!("usage:{name}:{period}")))
            .arg(&c.config.instance);
    }
    let fields: Vec<Option<String>> = pipe.query(con)?;
    for (((name, u), period), field) in keys.iter().zip(periods).zip(fields) {
        let Some(field) = field else { continue };
        let f: Vec<u64> = field.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
        let at = Counts {
            period_start: period,
            calls: f.first().copied().unwrap_or(0),
            credits: f.get(1).copied().unwrap_or(0),
            notifications: f.get(2).copied().unwrap_or(0),
            bytes_in: f.get(3).copied().unwrap_or(0),
            bytes_out: f.get(4).copied().unwrap_or(0),
            refused: Default::default(),
        };
        if at.calls > u.counts().calls || at.credits > u.counts().credits {
            crate::info!(
                "cluster: key {name} resumes from what this instance published ({} calls, {} credits)",
                at.calls,
                at.credits
            );
        }
        u.resume_at_least(&at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::usage::KeyReason;

    fn config() -> crate::config::cluster::ClusterConfig {
        crate::config::cluster::ClusterConfig {
            redis: "redis://127.0.0.1/".into(),
            sync: Duration::from_millis(100),
            prefix: "t".into(),
            instance: "a".into(),
            cache: false,
            cache_redis: "redis://127.0.0.1/".into(),
            cache_max_bytes: 1 << 20,
            tls: None,
        }
    }

    fn names(config: &crate::config::cluster::ClusterConfig, round: u64) -> Names<'_> {
        Names {
            config,
            instances: 1,
            draining: false,
            round,
            every: refresh_every(config.sync),
        }
    }

    fn published(
        config: &crate::config::cluster::ClusterConfig,
        u: &Usage,
        last: &mut Ledger,
        round: u64,
    ) {
        let mut pipe = redis::pipe();
        publish(&mut pipe, &names(config, round), "sha", "k", u, last, false);
    }

    #[test]
    fn a_rate_only_key_with_nothing_new_waits_until_its_refresh() {
        let config = config();
        assert_eq!(
            refresh_every(config.sync),
            5,
            "four times in the 2 s alive window"
        );
        let u = Usage::default();
        u.set_rated(true);
        let mut last = Ledger::new();
        assert!(
            !quiet(&names(&config, 1), "k", &u, &last),
            "never published"
        );
        published(&config, &u, &mut last, 1);
        assert!(quiet(&names(&config, 2), "k", &u, &last));
        assert!(quiet(&names(&config, 5), "k", &u, &last));
        assert!(
            !quiet(&names(&config, 6), "k", &u, &last),
            "its refresh is due"
        );
        for change in [
            &(|u: &Usage| u.called(1)) as &dyn Fn(&Usage),
            &|u: &Usage| u.refused(KeyReason::Rate),
            &|u: &Usage| u.bytes_out(10),
            &|u: &Usage| {
                u.sessions.fetch_add(1, Relaxed);
            },
        ] {
            published(&config, &u, &mut last, 10);
            change(&u);
            assert!(
                !quiet(&names(&config, 11), "k", &u, &last),
                "a change is written at once"
            );
        }
        published(&config, &u, &mut last, 20);
        unsent(&mut last);
        assert!(
            !quiet(&names(&config, 21), "k", &u, &last),
            "what Redis did not take goes again"
        );
    }

    #[test]
    fn a_key_with_a_quota_or_a_connection_cap_is_written_at_every_sync() {
        let config = config();
        for (quota, capped) in [(100, false), (0, true)] {
            let u = Usage::default();
            u.set_quota(quota);
            u.set_capped(capped);
            let mut last = Ledger::new();
            published(&config, &u, &mut last, 1);
            assert!(
                !quiet(&names(&config, 2), "k", &u, &last),
                "quota {quota}, capped {capped}"
            );
        }
    }
}
