//! The two I/O operations the relay needs, over any transport; read sizing;
//! and how pending I/O is stopped.
//!
//! [`ReadHalf::read_more`] appends received bytes after what a buffer already
//! holds (so a partial frame header carried over stays in front). A buffer
//! with no spare room gets some from the reader, sized by a [`ReadSizer`]:
//! small while a connection is quiet, growing while reads come back full. An
//! idle session therefore holds about 512 bytes per pending read, not 16.
//!
//! Pending operations are ended with `shutdown(2)` on the socket ([`stop`])
//! rather than io_uring cancellation: a receive then completes with 0 bytes
//! and a send with an error, the in-flight operation finishes normally (no
//! future is dropped), and the hot path pays nothing per operation for the
//! ability.
//!
//! Implemented for plain TCP and Unix stream halves here, and for TLS in
//! the `tls` module.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::{TcpStream, UnixStream};

/// A receive half the relay reads from.
#[allow(async_fn_in_trait)]
pub trait ReadHalf {
    /// Receive into the spare capacity of `buf`, after its current contents
    /// (reserving some first if it has none). `Ok(0)` means the peer closed
    /// its side, or the socket was [`stop`]ped.
    async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
}

/// A send half the relay writes to.
#[allow(async_fn_in_trait)]
pub trait WriteHalf {
    /// Send all of `buf`.
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Finish the stream (TLS close_notify, then TCP FIN). Errors are of no interest by then.
    async fn shutdown(&mut self);
    /// Send all of `buf` (the last bytes: a close frame) and finish the
    /// stream, in as few writes as the transport allows.
    async fn write_final(&mut self, buf: Vec<u8>) -> io::Result<()> {
        let (r, _) = self.write_all(buf).await;
        self.shutdown().await;
        r
    }
}

/// How to stop a socket's pending I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Pending and future receives return 0 bytes.
    Reads,
    /// Receives return 0 and sends fail.
    All,
}

/// End pending I/O on `fd` with `shutdown(2)`. The descriptor stays open
/// (its owner closes it); errors (already shut, not connected) do not matter.
pub fn stop(fd: RawFd, how: Stop) {
    let how = match how {
        Stop::Reads => libc::SHUT_RD,
        Stop::All => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown(2) on a descriptor this process owns; it does not close it.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Run `fut`; at the deadline, call `expire` (which [`stop`]s the socket's
/// I/O) and let `fut` finish on its own, instead of dropping in-flight
/// io_uring operations (a dropped future leaves its buffer to the kernel and
/// costs a cancellation). The one way the gateway times out socket I/O.
pub async fn with_deadline<F: std::future::Future>(
    dur: std::time::Duration,
    expire: impl FnOnce(),
    fut: F,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let sleep = monoio::time::sleep(dur);
    monoio::select! {
        out = &mut fut => return out,
        _ = sleep => {}
    }
    expire();
    fut.await
}

/// Run `fut`; if the worker shuts down first, call `stop` (which ends the
/// socket's pending reads) and let `fut` finish on its own.
pub async fn unless_shutdown<F: std::future::Future>(
    shutdown: &crate::signal::Broadcast,
    stop: impl FnOnce(),
    fut: F,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    monoio::select! {
        out = &mut fut => return out,
        _ = shutdown.wait() => {}
    }
    stop();
    fut.await
}

/// Adaptive read size: starts small, quadruples after a read that filled its
/// buffer, halves after reads that used less than an eighth.
#[derive(Debug, Clone, Copy)]
pub struct ReadSizer {
    next: usize,
}

impl ReadSizer {
    pub const MIN: usize = 512;
    pub const MAX: usize = 64 * 1024;

    pub fn new() -> ReadSizer {
        ReadSizer { next: Self::MIN }
    }

    pub fn size(&self) -> usize {
        self.next
    }

    /// Learn from a read of `n` bytes into `room` bytes of space.
    pub fn update(&mut self, n: usize, room: usize) {
        if n >= room {
            self.next = (self.next * 4).min(Self::MAX);
        } else if n <= self.next / 8 {
            self.next = (self.next / 2).max(Self::MIN);
        }
    }
}

impl Default for ReadSizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Make sure `buf` has spare room: reserve `want` bytes if it has none.
pub fn ensure_room(buf: &mut Vec<u8>, want: usize) {
    if buf.len() == buf.capacity() {
        buf.reserve_exact(want);
    }
}

/// Read into `buf[len..capacity]`.
pub async fn read_append<R: AsyncReadRent>(
    io: &mut R,
    buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let slice = buf.slice_mut(len..);
    let (res, slice) = io.read(slice).await;
    (res, slice.into_inner())
}

/// A plain stream's receive half with adaptive read sizes.
pub struct PlainReader<S> {
    half: OwnedReadHalf<S>,
    sizer: ReadSizer,
}

impl<S> PlainReader<S> {
    pub fn new(half: OwnedReadHalf<S>) -> Self {
        PlainReader {
            half,
            sizer: ReadSizer::new(),
        }
    }
}

macro_rules! plain_halves {
    ($stream:ty) => {
        impl ReadHalf for PlainReader<$stream> {
            async fn read_more(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
                ensure_room(&mut buf, self.sizer.size());
                let room = buf.capacity() - buf.len();
                let (res, buf) = read_append(&mut self.half, buf).await;
                if let Ok(n) = res {
                    self.sizer.update(n, room);
                }
                (res, buf)
            }
        }

        impl WriteHalf for OwnedWriteHalf<$stream> {
            async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
                let (res, buf) = AsyncWriteRentExt::write_all(self, buf).await;
                (res.map(|_| ()), buf)
            }

            async fn shutdown(&mut self) {
                let _ = AsyncWriteRent::shutdown(self).await;
            }
        }
    };
}

plain_halves!(TcpStream);
plain_halves!(UnixStream);

/// Size of the handshake-phase read buffers.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per core for reuse; more are freed.
const POOL_MAX: usize = 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with [`BUF_SIZE`] capacity, from this core's pool.
pub fn take_buf() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

/// Return a buffer to this core's pool. Buffers of other sizes are freed.
pub fn give_buf(mut buf: Vec<u8>) {
    if buf.capacity() != BUF_SIZE {
        return;
    }
    buf.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sizes_grow_under_load_and_shrink_when_quiet() {
        let mut s = ReadSizer::new();
        assert_eq!(s.size(), 512);
        s.update(512, 512);
        assert_eq!(s.size(), 2048);
        s.update(2048, 2048);
        s.update(8192, 8192);
        s.update(16384, 16384);
        s.update(65536, 65536);
        assert_eq!(s.size(), ReadSizer::MAX);
        for _ in 0..10 {
            s.update(100, s.size());
        }
        assert_eq!(s.size(), ReadSizer::MIN);
    }
}
