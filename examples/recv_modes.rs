//! How much would an io_uring layer of ringway's own save? A measurement,
//! not part of the gateway: a one-thread TCP relay on raw io_uring (the same
//! ring set-up as a worker: single issuer, deferred task running) that
//! forwards bytes between each client and its own node connection, with the
//! receive done one of three ways:
//!
//! - `single`: a receive is submitted after each completion (what monoio
//!   0.2.4 does: the kernel tries to read, finds nothing, arms a poll, and
//!   reads again when data comes);
//! - `poll-first`: the same with `IORING_RECVSEND_POLL_FIRST` (no first try);
//! - `multishot`: one multishot receive per socket into a ring of provided
//!   buffers, armed once.
//!
//! Sends are the same in all modes (one per received chunk, in order).
//! Being transparent, it relays the WebSocket handshake too, so
//! `ringway-load run ws://RELAY` against `ringway-load node` measures it:
//! see BENCHMARKS.md, "An io_uring layer of ringway's own?".
//!
//! `cargo run --release --example recv_modes -- LISTEN NODE single|poll-first|multishot`

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const BUF: usize = 16 * 1024;
/// Provided buffers (multishot): enough for every socket to hold one.
const RING_BUFS: u16 = 1024;
const GROUP: u16 = 0;
const ACCEPT: u64 = u64::MAX;
/// `IORING_RECVSEND_POLL_FIRST` (linux/io_uring.h; the crate keeps it private).
const RECVSEND_POLL_FIRST: u16 = 1;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Single,
    PollFirst,
    Multishot,
}

/// One socket of a pair: its peer, its own receive buffer (single and
/// poll-first modes) and what waits to be sent to it.
struct Sock {
    fd: RawFd,
    peer: usize,
    buf: Vec<u8>,
    queue: VecDeque<u8>,
    sending: Option<Vec<u8>>,
    closed: bool,
}

/// user_data: socket index << 1 | 0 for a receive, 1 for a send.
fn tag(i: usize, send: bool) -> u64 {
    (i as u64) << 1 | send as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, node, mode] = &args[..] else {
        eprintln!("usage: recv_modes LISTEN NODE single|poll-first|multishot");
        std::process::exit(2);
    };
    let mode = match mode.as_str() {
        "single" => Mode::Single,
        "poll-first" => Mode::PollFirst,
        "multishot" => Mode::Multishot,
        m => panic!("unknown mode {m}"),
    };
    let node: SocketAddr = node.parse().expect("NODE is ip:port");
    let listener = TcpListener::bind(listen.as_str()).expect("bind");
    let lfd = listener.into_raw_fd();
    let mut ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .expect("io_uring");

    // The provided-buffer ring: RING_BUFS entries of 16 bytes, page aligned,
    // each pointing at a BUF-sized slice of `pool`.
    let mut pool = vec![0u8; RING_BUFS as usize * BUF];
    let ring_mem = if mode == Mode::Multishot {
        let layout = std::alloc::Layout::from_size_align(RING_BUFS as usize * 16, 4096).unwrap();
        // SAFETY: a non-zero layout; the memory lives until the process ends.
        let base = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        // SAFETY: `base` is page aligned and holds RING_BUFS entries.
        unsafe {
            ring.submitter()
                .register_buf_ring(base as u64, RING_BUFS, GROUP)
                .expect("register_buf_ring");
        }
        for bid in 0..RING_BUFS {
            give_back(base, &mut pool, bid, bid);
        }
        publish(base, RING_BUFS);
        Some(base)
    } else {
        None
    };
    let mut tail = RING_BUFS;

    let mut socks: Vec<Sock> = Vec::new();
    let accept = opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
        .build()
        .user_data(ACCEPT);
    push(&mut ring, accept.clone());

    let recv = |s: &mut Sock, i: usize| -> squeue::Entry {
        match mode {
            Mode::Multishot => opcode::RecvMulti::new(types::Fd(s.fd), GROUP)
                .build()
                .user_data(tag(i, false)),
            _ => {
                let e = opcode::Recv::new(types::Fd(s.fd), s.buf.as_mut_ptr(), BUF as u32)
                    .build()
                    .user_data(tag(i, false));
                if mode == Mode::PollFirst {
                    with_poll_first(e)
                } else {
                    e
                }
            }
        }
    };

    let mut cqes = Vec::new();
    loop {
        ring.submit_and_wait(1).expect("submit_and_wait");
        cqes.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut returned = 0u16;
        for (data, res, flags) in cqes.drain(..) {
            if data == ACCEPT {
                push(&mut ring, accept.clone());
                if res < 0 {
                    continue;
                }
                let up = TcpStream::connect(node).expect("connect to node");
                up.set_nodelay(true).unwrap();
                let (c, u) = (socks.len(), socks.len() + 1);
                nodelay(res);
                for (fd, peer) in [(res, u), (up.into_raw_fd(), c)] {
                    socks.push(Sock {
                        fd,
                        peer,
                        buf: vec![0; BUF],
                        queue: VecDeque::new(),
                        sending: None,
                        closed: false,
                    });
                }
                for i in [c, u] {
                    let e = recv(&mut socks[i], i);
                    push(&mut ring, e);
                }
                continue;
            }
            let i = (data >> 1) as usize;
            if data & 1 == 1 {
                // A send finished: send what queued meanwhile.
                let s = &mut socks[i];
                let mut done = s.sending.take().unwrap();
                if res > 0 && (res as usize) < done.len() {
                    done.drain(..res as usize);
                    s.queue.extend(done);
                }
                if res < 0 {
                    close(&mut socks, i);
                    continue;
                }
                start_send(&mut ring, &mut socks, i);
                continue;
            }
            if socks[i].closed {
                continue;
            }
            if res <= 0 {
                if res == -libc::ENOBUFS {
                    let e = recv(&mut socks[i], i);
                    push(&mut ring, e);
                } else {
                    close(&mut socks, i);
                }
                continue;
            }
            let n = res as usize;
            let peer = socks[i].peer;
            match cqueue::buffer_select(flags) {
                Some(bid) => {
                    let at = bid as usize * BUF;
                    let data = pool[at..at + n].to_vec();
                    socks[peer].queue.extend(data);
                    give_back(
                        ring_mem.unwrap(),
                        &mut pool,
                        tail.wrapping_add(returned),
                        bid,
                    );
                    returned += 1;
                }
                None => {
                    let data = socks[i].buf[..n].to_vec();
                    socks[peer].queue.extend(data);
                }
            }
            if mode != Mode::Multishot || !cqueue::more(flags) {
                let e = recv(&mut socks[i], i);
                push(&mut ring, e);
            }
            start_send(&mut ring, &mut socks, peer);
        }
        if returned > 0 {
            tail = tail.wrapping_add(returned);
            publish(ring_mem.unwrap(), tail);
        }
    }
}

fn start_send(ring: &mut IoUring, socks: &mut [Sock], i: usize) {
    let s = &mut socks[i];
    if s.sending.is_some() || s.queue.is_empty() || s.closed {
        return;
    }
    let out: Vec<u8> = s.queue.drain(..).collect();
    let e = opcode::Send::new(types::Fd(s.fd), out.as_ptr(), out.len() as u32)
        .build()
        .user_data(tag(i, true));
    s.sending = Some(out);
    push(ring, e);
}

/// Queue `e`, submitting first if the queue is full.
fn push(ring: &mut IoUring, e: squeue::Entry) {
    // SAFETY: every buffer an entry points at outlives its operation
    // (socket buffers are never freed; pool and ring live to the end).
    while unsafe { ring.submission().push(&e) }.is_err() {
        ring.submit().expect("submit");
    }
}

fn close(socks: &mut [Sock], i: usize) {
    for j in [i, socks[i].peer] {
        if !socks[j].closed {
            socks[j].closed = true;
            // SAFETY: shutdown(2) on our own socket; pending operations end.
            unsafe { libc::shutdown(socks[j].fd, libc::SHUT_RDWR) };
        }
    }
}

fn nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option on our own socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Put buffer `bid` in ring slot `slot` (not yet visible to the kernel).
fn give_back(base: *mut types::BufRingEntry, pool: &mut [u8], slot: u16, bid: u16) {
    // SAFETY: `base` holds RING_BUFS entries; the slot index is masked.
    let e = unsafe { &mut *base.add((slot % RING_BUFS) as usize) };
    e.set_addr(pool[bid as usize * BUF..].as_mut_ptr() as u64);
    e.set_len(BUF as u32);
    e.set_bid(bid);
}

/// Make the slots before `tail` visible to the kernel.
fn publish(base: *mut types::BufRingEntry, tail: u16) {
    // SAFETY: the tail field of the ring's first entry, written with release
    // ordering after the entries (the kernel reads it with acquire).
    unsafe {
        let t = types::BufRingEntry::tail(base) as *const std::sync::atomic::AtomicU16;
        (*t).store(tail, std::sync::atomic::Ordering::Release);
    }
}

/// Set `IORING_RECVSEND_POLL_FIRST` (sqe.ioprio, bytes 2-3) on a receive.
fn with_poll_first(e: squeue::Entry) -> squeue::Entry {
    // SAFETY: Entry is repr(C) over io_uring_sqe (64 bytes); ioprio is the
    // u16 at offset 2, which a receive reads as its flags.
    unsafe {
        let mut raw: [u8; 64] = std::mem::transmute(e);
        raw[2..4].copy_from_slice(&RECVSEND_POLL_FIRST.to_ne_bytes());
        std::mem::transmute::<[u8; 64], squeue::Entry>(raw)
    }
}
