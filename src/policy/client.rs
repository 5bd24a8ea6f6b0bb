//! Who the client is: the socket's address, or `X-Forwarded-For` /
//! `Forwarded` through the configured number of trusted proxy hops; and the
//! steering of each source address to one core at accept time.

use std::net::IpAddr;

/// The client's address: the socket's, or taken from `X-Forwarded-For` (or
/// RFC 7239 `Forwarded: for=`) through `trusted_hops` proxies we trust (the
/// last `trusted_hops` entries were added by them; the one before is the
/// client). Never from an untrusted header.
pub fn client_ip(socket: IpAddr, xff: Option<&[u8]>, trusted_hops: usize) -> IpAddr {
    client_ip_from(socket, xff, None, trusted_hops)
}

/// [`client_ip`] with the `Forwarded` header too (it wins when present).
pub fn client_ip_from(
    socket: IpAddr,
    xff: Option<&[u8]>,
    forwarded: Option<&[u8]>,
    trusted_hops: usize,
) -> IpAddr {
    if trusted_hops == 0 {
        return socket;
    }
    let entries: Vec<String> = match forwarded.and_then(|v| std::str::from_utf8(v).ok()) {
        Some(f) => f
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| forwarded_node(v.trim()))
                })
            })
            .collect(),
        None => match xff.and_then(|v| std::str::from_utf8(v).ok()) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
            None => return socket,
        },
    };
    if entries.len() < trusted_hops {
        return socket;
    }
    entries[entries.len() - trusted_hops]
        .parse()
        .unwrap_or(socket)
}

/// The address in an RFC 7239 node: `192.0.2.60`, `"192.0.2.60:47011"`,
/// `"[2001:db8:cafe::17]:4711"`.
pub fn forwarded_node(v: &str) -> String {
    let v = v.trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    match v.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_string()
        }
        _ => v.to_string(),
    }
}

/// Steer each source address to one socket of a `SO_REUSEPORT` group of `n`
/// listeners (a classic BPF program: source address modulo `n`), so that a
/// client's connections, and its rate-limit bucket, stay on one core.
pub fn steer_by_source(
    listener: &std::net::TcpListener,
    n: usize,
    ipv6: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if n <= 1 {
        return Ok(());
    }
    // SKF_NET_OFF: loads relative to the network header.
    const SKF_NET_OFF: u32 = (-0x100000i32) as u32;
    // IPv4: the source address is at offset 12; IPv6: its last 4 bytes at 8 + 12.
    let offset = if ipv6 { 20 } else { 12 };
    let code = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: SKF_NET_OFF.wrapping_add(offset),
        },
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: n as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: a valid socket and a BPF program that outlives the call (the
    // kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &prog as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
