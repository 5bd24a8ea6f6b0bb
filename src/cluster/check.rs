//! What the configuration needs of its Redis user, tried: keys under the
//! prefix (the ledger, the name, the revocation set), scripts (the
//! ledger's reservations), and the revocation channel (PUBLISH and
//! SUBSCRIBE). Redis 7 gives an ACL user no channel unless it is given one
//! (`acl-pubsub-default resetchannels`): such a user can run a cluster,
//! with revocations arriving at each sync instead of at once.
//!
//! Run at start (the log and `/health` name what is missing) and by
//! `ringway --check` (which fails on what the cluster cannot do without).

use std::time::Duration;

use crate::config::cluster::ClusterConfig;

/// One permission the configuration needs and Redis refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The cluster cannot work without it (keys, scripts); else it works
    /// less well (pushes).
    pub needed: bool,
    pub what: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

/// Try each permission; `Err`: Redis could not be reached.
pub fn missing(config: &ClusterConfig) -> Result<Vec<Missing>, String> {
    let timeout = Duration::from_secs(2);
    let mut con = super::link::open(config, timeout).map_err(|e| e.to_string())?;
    let p = &config.prefix;
    let refused = |r: redis::RedisResult<redis::Value>| match r {
        Err(e) if super::link::no_permission(&e) => Some(e.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    let probe = format!("{p}:check:{}", config.instance);
    let set = redis::cmd("SET")
        .arg(&probe)
        .arg("1")
        .arg("PX")
        .arg(1000)
        .query(&mut con);
    if let Some(e) = refused(set) {
        out.push(Missing {
            needed: true,
            what: format!("keys under `{p}:*` are refused to this Redis user ({e}): give it `~{p}:*` and the commands of the ledger (+@read +@write)"),
        });
    }
    let eval = redis::cmd("EVAL").arg("return 1").arg(0).query(&mut con);
    if let Some(e) = refused(eval) {
        out.push(Missing {
            needed: true,
            what: format!("scripts are refused to this Redis user ({e}): give it +@scripting (the ledger's reservations run as one script)"),
        });
    }
    let channel = format!("{p}:revocations");
    let publish = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("check")
        .query(&mut con);
    if let Some(e) = refused(publish) {
        out.push(Missing {
            needed: false,
            what: format!("PUBLISH on `{channel}` is refused ({e}): give the user `&{p}:*`; revocations arrive at each sync instead of at once"),
        });
    }
    let mut sub_con = super::link::open(config, timeout).map_err(|e| e.to_string())?;
    let subscribed = sub_con.as_pubsub().subscribe(&channel);
    if let Err(e) = subscribed.as_ref().map(|_| ()) {
        if super::link::no_permission(e) {
            out.push(Missing {
                needed: false,
                what: format!("SUBSCRIBE to `{channel}` is refused ({e}): give the user `&{p}:*`; revocations arrive at each sync instead of at once"),
            });
        }
    }
    if config.cache && config.cache_redis != config.redis {
        // The second level's own Redis: a miss when it says no, not an error.
        let stored =
            super::link::open_at(config, &config.cache_redis, timeout).and_then(|mut c| {
                redis::cmd("SET")
                    .arg(&probe)
                    .arg("1")
                    .arg("PX")
                    .arg(1000)
                    .query::<redis::Value>(&mut c)
            });
        if let Err(e) = stored {
            out.push(Missing {
                needed: false,
                what: format!("the cache's Redis (cluster.cache_redis) takes no `{p}:cache:*` key ({e}): the second level is a miss until it does"),
            });
        }
    }
    Ok(out)
}

/// [`missing`] as lines for the log and `/health` (`None`: unreachable).
pub fn permissions(config: &ClusterConfig) -> Option<Vec<String>> {
    missing(config)
        .ok()
        .map(|m| m.iter().map(|m| m.to_string()).collect())
}
