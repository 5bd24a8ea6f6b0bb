//! The two I/O operations the relay needs, over any transport, and the
//! per-core buffer pool.
//!
//! [`ReadHalf::read_more`] appends received bytes after what a buffer already
//! holds (so a partial frame header carried over stays in front), and can be
//! cancelled: a session that ends cancels its pending reads instead of
//! dropping in-flight io_uring operations. [`WriteHalf::write_all`] takes the
//! buffer by value and gives it back, as monoio's owned-buffer I/O requires.
//!
//! Implemented for plain TCP and Unix stream halves here, and for TLS in
//! [`crate::tls`].

use std::cell::RefCell;
use std::io;

use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRentExt,
    OwnedReadHalf, OwnedWriteHalf,
};
use monoio::net::{TcpStream, UnixStream};

/// A receive half the relay reads from.
#[allow(async_fn_in_trait)]
pub trait ReadHalf {
    /// Receive into the spare capacity of `buf`, after its current contents.
    /// `Ok(0)` means the peer closed its side.
    async fn read_more(
        &mut self,
        buf: Vec<u8>,
        cancel: &CancelHandle,
    ) -> (io::Result<usize>, Vec<u8>);
}

/// A send half the relay writes to.
#[allow(async_fn_in_trait)]
pub trait WriteHalf {
    /// Send all of `buf`; cancelable like reads (a peer that stops reading must
    /// not hold a session past its close deadline).
    async fn write_all(&mut self, buf: Vec<u8>, cancel: &CancelHandle)
        -> (io::Result<()>, Vec<u8>);
    /// Finish the stream (TLS close_notify, then TCP FIN). Errors are of no interest by then.
    async fn shutdown(&mut self, cancel: &CancelHandle);
}

/// Read into `buf[len..capacity]` with a cancelable read.
pub async fn read_append<R: CancelableAsyncReadRent>(
    io: &mut R,
    buf: Vec<u8>,
    cancel: &CancelHandle,
) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    if len == buf.capacity() {
        return (Err(io::Error::other("read buffer full")), buf);
    }
    let slice = buf.slice_mut(len..);
    let (res, slice) = io.cancelable_read(slice, cancel.clone()).await;
    (res, slice.into_inner())
}

macro_rules! plain_halves {
    ($stream:ty) => {
        impl ReadHalf for OwnedReadHalf<$stream> {
            async fn read_more(
                &mut self,
                buf: Vec<u8>,
                cancel: &CancelHandle,
            ) -> (io::Result<usize>, Vec<u8>) {
                read_append(self, buf, cancel).await
            }
        }

        impl WriteHalf for OwnedWriteHalf<$stream> {
            async fn write_all(
                &mut self,
                buf: Vec<u8>,
                cancel: &CancelHandle,
            ) -> (io::Result<()>, Vec<u8>) {
                let (res, buf) =
                    CancelableAsyncWriteRentExt::write_all(self, buf, cancel.clone()).await;
                (res.map(|_| ()), buf)
            }

            async fn shutdown(&mut self, _cancel: &CancelHandle) {
                let _ = AsyncWriteRent::shutdown(self).await;
            }
        }
    };
}

plain_halves!(TcpStream);
plain_halves!(UnixStream);

/// Size of a relay read buffer: one TLS record of plaintext.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per core for reuse; more are freed.
const POOL_MAX: usize = 4096;

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
