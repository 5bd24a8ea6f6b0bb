//! One name, one gateway: an instance holds its name (`cluster.instance`)
//! in Redis while it runs (`<prefix>:instance:<name>`, its run id and the
//! time it last renewed it, expiring after the alive window), renewed at
//! each sync, released when it drains.
//!
//! At start, a name held by another run is either a live gateway (it renews
//! it: this one refuses to start) or one that died (its hold expires within
//! the alive window: this one waits it out, then takes the name).

use std::time::{Duration, Instant};

use crate::config::cluster::ClusterConfig;

/// Take the name if it is free or already this run's; renew it if this
/// run holds it. KEYS[1] the name's key; ARGV: this run's id, the hold's
/// life (ms). Answers 1 (held) or the holder's value.
pub const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. ' ' then
  return v
end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t[1] .. t[2], 'PX', ARGV[2])
return 1
"#;

/// Let the name go if this run holds it. KEYS[1] the name's key; ARGV[1]
/// this run's id.
pub const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// The key a name is held under.
pub fn key(config: &ClusterConfig) -> String {
    format!("{}:instance:{}", config.prefix, config.instance)
}

/// Why a gateway may not start under its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken(pub String);

/// Hold the name at start: at once if it is free; after the alive window
/// if the holder died (its hold is not renewed); `Err` if another gateway
/// renews it meanwhile (it runs). Redis unreachable: `Ok` (the name is
/// taken at the first sync that reaches it; a clash then is logged).
pub fn at_start(config: &ClusterConfig, run: &str, alive: Duration) -> Result<(), Taken> {
    let Ok(mut con) = super::link::open(config, Duration::from_secs(2)) else {
        return Ok(());
    };
    let key = key(config);
    let claim = || {
        redis::cmd("EVAL")
            .arg(CLAIM)
            .arg(1)
            .arg(&key)
            .arg(run)
            .arg(alive.as_millis() as u64)
            .clone()
    };
    let until = Instant::now() + alive + config.sync * 4 + Duration::from_millis(500);
    let mut first: Option<String> = None;
    loop {
        let answer: redis::Value = match claim().query(&mut con) {
            Ok(v) => v,
            // Refused (no permission, a script error): the sync says so.
            Err(_) => return Ok(()),
        };
        let holder = match answer {
            redis::Value::Int(1) => return Ok(()),
            redis::Value::BulkString(v) => String::from_utf8_lossy(&v).into_owned(),
            redis::Value::SimpleString(v) => v,
            _ => return Ok(()),
        };
        match &first {
            None => {
                crate::info!(
                    "cluster: the name {:?} is held by another run; waiting up to {} ms for it to expire (a gateway that died) or be renewed (one that runs)",
                    config.instance,
                    alive.as_millis()
                );
                first = Some(holder);
            }
            // Renewed while we wait: a gateway runs under this name.
            Some(was) if *was != holder => {
                return Err(Taken(format!(
                    "another gateway runs as `{}` (it renewed its hold on {key} while this one waited); give each gateway its own cluster.instance",
                    config.instance
                )))
            }
            Some(_) => {}
        }
        if Instant::now() >= until {
            return Err(Taken(format!(
                "the name `{}` stays held in {key} past the alive window; another gateway may run under it",
                config.instance
            )));
        }
        std::thread::sleep(config.sync.min(Duration::from_millis(200)));
    }
}
