//! Binding the listening sockets before the workers start: one
//! `SO_REUSEPORT` TCP listener per worker (the kernel spreads connections
//! over them), and the side listeners worker 0 serves (HTTP redirect,
//! private metrics, Unix socket).

use std::io;
use std::net::SocketAddr;

use crate::config::Config;
use crate::gateway::SideListeners;

/// Bind `n` listeners on `addr` with `SO_REUSEPORT`, so the kernel spreads
/// connections over the workers. Port 0 is resolved by the first bind and
/// reused for the rest.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let sock = Socket::new(Domain::for_address(bound), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.set_nodelay(true)?;
        sock.bind(&bound.into())?;
        sock.listen(4096)?;
        sock.set_nonblocking(true)?;
        let l: std::net::TcpListener = sock.into();
        bound = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Bind the side listeners the config asks for; `https_port` is where the
/// redirect points.
pub fn bind_side(config: &Config, https_port: u16) -> io::Result<SideListeners> {
    let plain = |addr: Option<SocketAddr>| -> io::Result<Option<std::net::TcpListener>> {
        let Some(a) = addr else { return Ok(None) };
        let l = std::net::TcpListener::bind(a)?;
        l.set_nonblocking(true)?;
        Ok(Some(l))
    };
    let unix = match &config.unix_listen {
        Some((path, mode)) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::remove_file(path);
            let l = std::os::unix::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    Ok(SideListeners {
        redirect: plain(config.redirect_listen)?,
        metrics: plain(config.metrics_listen)?,
        unix,
        https_port,
    })
}
