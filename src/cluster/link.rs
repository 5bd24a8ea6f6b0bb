//! A connection to the cluster's Redis, as every part of the cluster opens one.

use std::time::Duration;

use crate::config::cluster::ClusterConfig;

/// A connection to the cluster's Redis (over TLS for `rediss://`), with
/// `timeout` to connect, and for each read and write.
pub fn open(config: &ClusterConfig, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    open_at(config, &config.redis, timeout)
}

/// A connection to `url` (the cluster's Redis or its cache's), with the
/// cluster's TLS settings.
pub fn open_at(
    config: &ClusterConfig,
    url: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let client = match &config.tls {
        None => redis::Client::open(url)?,
        Some(tls) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| {
                    let what = format!("{}: {e}", p.display());
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "TLS file",
                        what,
                    ))
                })
            };
            let client_tls = match &tls.client {
                Some((cert, key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert)?,
                    client_key: read(key)?,
                }),
                None => None,
            };
            let root_cert = tls.ca.as_deref().map(read).transpose()?;
            let certs = redis::TlsCertificates {
                client_tls,
                root_cert,
            };
            redis::Client::build_with_tls(url, certs)?
        }
    };
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// Whether an error is Redis refusing a permission (`NOPERM`).
pub fn no_permission(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM") || e.to_string().contains("NOPERM")
}
