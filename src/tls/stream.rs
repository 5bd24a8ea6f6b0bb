//! A TLS stream split into a read half and a write half for the relay.
//!
//! Why not monoio-rustls' stream: the relay reads and writes one connection
//! concurrently (two directions), and monoio-rustls' split shares one
//! `&mut Stream` between both halves; its read error path writes an alert
//! through the write buffer, which a concurrent write may have taken (a
//! panic). It also fixes 2 x 16 KiB of buffers per connection for life. Here
//! the rustls connection sits in an `Rc<RefCell<_>>` borrowed only between
//! awaits, each half owns its socket half, and ciphertext buffers come from
//! the per-core pool.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
};
use std::ops::DerefMut;

use crate::io::{ensure_room, give_buf, read_append, take_buf, ReadHalf, ReadSizer, WriteHalf};

/// A rustls connection of either side: both deref to `ConnectionCommon`.
pub trait TlsSide: DerefMut<Target = ConnectionCommon<Self::Data>> + 'static {
    type Data: SideData;
}

impl TlsSide for ServerConnection {
    type Data = rustls::server::ServerConnectionData;
}

impl TlsSide for ClientConnection {
    type Data = rustls::client::ClientConnectionData;
}

/// A floor on how fast a peer sends its handshake (slowloris): after
/// `grace`, fewer than `bytes_per_s` on average ends it.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_s: u64,
    pub grace: std::time::Duration,
}

/// Run the server handshake on `tcp`. A timeout is the caller's: it stops
/// the socket ([`crate::io::stop`]), which ends this with an error. With
/// `min_rate`, a client that sends its handshake slower fails early.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    min_rate: Option<MinRate>,
) -> io::Result<(TlsReader, TlsWriter)> {
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let done = handshake(tcp, conn, min_rate).await;
    crate::stats::count(|c| match &done {
        Ok((r, _)) => {
            let conn = r.conn.borrow();
            let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
            let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            c.tls_done(tls13, resumed);
        }
        Err(_) => c.tls_failed.add(1),
    });
    done
}

/// Run the client handshake on `tcp` (the load generator; wss:// nodes).
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
) -> io::Result<(TlsReader<ClientConnection>, TlsWriter<ClientConnection>)> {
    let conn = ClientConnection::new(config, server_name).map_err(io::Error::other)?;
    handshake(tcp, conn, None).await
}

async fn handshake<C: TlsSide>(
    mut tcp: TcpStream,
    mut conn: C,
    min_rate: Option<MinRate>,
) -> io::Result<(TlsReader<C>, TlsWriter<C>)> {
    conn.set_buffer_limit(None);
    let start = std::time::Instant::now();
    let mut received = 0u64;
    let mut cipher = take_buf();
    let mut out = Vec::new();
    let result = async {
        loop {
            // TLS 1.3: once the handshake is done, what rustls still has to
            // send (a server's session tickets, a client's Finished) leaves
            // with the first write (the 101, the upgrade request) instead
            // of in a write and a segment of its own. Not in TLS 1.2, where
            // the server's Finished must arrive before the client may speak.
            if !conn.is_handshaking()
                && conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
            {
                return Ok(());
            }
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
                let (r, o) = tcp.write_all(std::mem::take(&mut out)).await;
                out = o;
                out.clear();
                r?;
            }
            if !conn.is_handshaking() {
                return Ok(());
            }
            cipher.clear();
            let (r, c) = read_append(&mut tcp, std::mem::take(&mut cipher)).await;
            cipher = c;
            let n = r?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during TLS handshake",
                ));
            }
            received += n as u64;
            if let Some(m) = min_rate {
                let elapsed = start.elapsed();
                if elapsed >= m.grace
                    && (received as f64) < m.bytes_per_s as f64 * elapsed.as_secs_f64()
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("TLS handshake below {} bytes/s", m.bytes_per_s),
                    ));
                }
            }
            let mut rd = &cipher[..];
            while !rd.is_empty() {
                conn.read_tls(&mut rd)?;
                if let Err(e) = conn.process_new_packets() {
                    // Send the alert rustls queued, then fail.
                    let _ = conn.write_tls(&mut out);
                    let _ = tcp.write_all(std::mem::take(&mut out)).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
    }
    .await;
    give_buf(cipher);
    result?;
    let (r, w) = tcp.into_split();
    let shared = Rc::new(RefCell::new(conn));
    Ok((
        TlsReader {
            tcp: r,
            conn: shared.clone(),
            cipher: None,
            cipher_pos: 0,
            eof: false,
            failed: false,
            sizer: ReadSizer::new(),
        },
        TlsWriter {
            tcp: w,
            conn: shared,
            out: Vec::new(),
        },
    ))
}

/// The receiving half of a TLS connection: ciphertext in, plaintext out.
pub struct TlsReader<C: TlsSide = ServerConnection> {
    tcp: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<C>>,
    /// Ciphertext received but not yet given to rustls (rustls stops taking
    /// input while decrypted plaintext waits to be read). Pooled; `None` when empty.
    cipher: Option<Vec<u8>>,
    cipher_pos: usize,
    eof: bool,
    /// An error was met after plaintext that was handed on first: the
    /// next read reports it (rustls keeps it).
    failed: bool,
    sizer: ReadSizer,
}

impl TlsReader<ServerConnection> {
    /// The server name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<String> {
        self.conn.borrow().server_name().map(str::to_string)
    }
}

impl<C: TlsSide> TlsReader<C> {
    /// The negotiated ALPN protocol, if any.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.conn.borrow().alpn_protocol().map(|p| p.to_vec())
    }

    /// Copy available plaintext into `buf`. `Ok(None)`: none yet.
    fn take_plaintext(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let mut conn = self.conn.borrow_mut();
        let mut reader = conn.reader();
        match reader.fill_buf() {
            Ok(chunk) => {
                ensure_room(buf, chunk.len().min(ReadSizer::MAX));
                let n = chunk.len().min(buf.capacity() - buf.len());
                buf.extend_from_slice(&chunk[..n]);
                reader.consume(n);
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // TCP closed without close_notify: the same as a close for a WebSocket relay,
            // whose own close handshake says whether the end was clean.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// The error met earlier, again: rustls returns it from every later call.
    fn error_again(&mut self) -> io::Error {
        let mut conn = self.conn.borrow_mut();
        if let Err(e) = conn.process_new_packets() {
            return io::Error::new(io::ErrorKind::InvalidData, e);
        }
        match conn.reader().fill_buf() {
            Err(e) => e,
            Ok(_) => io::Error::new(io::ErrorKind::InvalidData, "TLS error"),
        }
    }

    /// Decrypt what has been received, appending it to `buf` (up to
    /// [`ReadSizer::MAX`] bytes). The end of the stream, or an error, met
    /// after some plaintext is reported by the next call, after that plaintext.
    fn decrypt(&mut self, buf: &mut Vec<u8>) -> io::Result<Got> {
        let start = buf.len();
        loop {
            let some = |buf: &Vec<u8>| buf.len() > start;
            let failed = match self.take_plaintext(buf) {
                Ok(Some(0)) if some(buf) => return Ok(Got::Data),
                Ok(Some(0)) => return Ok(Got::End),
                Ok(Some(_)) if buf.len() - start >= ReadSizer::MAX => return Ok(Got::Data),
                Ok(Some(_)) => continue,
                Ok(None) if self.cipher.is_none() => {
                    return Ok(if some(buf) { Got::Data } else { Got::Nothing })
                }
                Ok(None) => self.feed().err(),
                Err(e) => Some(e),
            };
            match failed {
                None => {}
                Some(e) if !some(buf) => return Err(e),
                Some(_) => {
                    self.failed = true;
                    return Ok(Got::Data);
                }
            }
        }
    }

    /// Hand buffered ciphertext to rustls until it has plaintext or wants more.
    fn feed(&mut self) -> io::Result<()> {
        let Some(cipher) = &self.cipher else {
            return Ok(());
        };
        let mut conn = self.conn.borrow_mut();
        while self.cipher_pos < cipher.len() {
            let n = conn.read_tls(&mut &cipher[self.cipher_pos..])?;
            self.cipher_pos += n;
            let state = conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if n == 0 || state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                break;
            }
        }
        if self.cipher_pos == cipher.len() {
            self.cipher = None;
            self.cipher_pos = 0;
        }
        Ok(())
    }
}

/// What [`TlsReader::decrypt`] found.
enum Got {
    Data,
    /// The peer ended the stream (close_notify, or the TCP end).
    End,
    /// Nothing yet: receive more.
    Nothing,
}

impl<C: TlsSide> ReadHalf for TlsReader<C> {
    /// Every record received so far is decrypted and handed on together
    /// (up to [`ReadSizer::MAX`] bytes): pipelined requests that arrived in
    /// one TCP read reach the relay as one buffer, and leave it as one write.
    async fn read_more(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if self.failed {
            return (Err(self.error_again()), buf);
        }
        let start = buf.len();
        loop {
            match self.decrypt(&mut buf) {
                Ok(Got::Data) => return (Ok(buf.len() - start), buf),
                Ok(Got::End) => return (Ok(0), buf),
                Ok(Got::Nothing) if self.eof => return (Ok(0), buf),
                Ok(Got::Nothing) => {}
                Err(e) => return (Err(e), buf),
            }
            let room = self.sizer.size();
            let (r, cipher) = read_append(&mut self.tcp, Vec::with_capacity(room)).await;
            match r {
                Ok(0) => {
                    self.eof = true;
                    // Tell rustls the transport ended, so the reader reports it.
                    let _ = self.conn.borrow_mut().read_tls(&mut &[][..]);
                }
                Ok(n) => {
                    self.sizer.update(n, room);
                    self.cipher = Some(cipher);
                    self.cipher_pos = 0;
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }
}

/// The sending half of a TLS connection: plaintext in, ciphertext out.
pub struct TlsWriter<C: TlsSide = ServerConnection> {
    tcp: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<C>>,
    out: Vec<u8>,
}

impl<C: TlsSide> TlsWriter<C> {
    async fn flush_tls(&mut self) -> io::Result<()> {
        loop {
            {
                let mut conn = self.conn.borrow_mut();
                while conn.wants_write() {
                    conn.write_tls(&mut self.out)?;
                }
            }
            if self.out.is_empty() {
                return Ok(());
            }
            let (r, mut out) =
                AsyncWriteRentExt::write_all(&mut self.tcp, std::mem::take(&mut self.out)).await;
            // Keep a small buffer for the next write; let a large one go, so an
            // idle connection does not hold its largest message's worth.
            if out.capacity() <= 512 {
                out.clear();
                self.out = out;
            }
            r?;
        }
    }
}

impl<C: TlsSide> WriteHalf for TlsWriter<C> {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        // The buffer limit is off (set at accept), so rustls takes all of it.
        if let Err(e) = self.conn.borrow_mut().writer().write_all(&buf) {
            return (Err(e), buf);
        }
        (self.flush_tls().await, buf)
    }

    async fn shutdown(&mut self) {
        self.conn.borrow_mut().send_close_notify();
        let _ = self.flush_tls().await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut self.tcp).await;
    }

    /// The close frame and close_notify leave in one write.
    async fn write_final(&mut self, buf: Vec<u8>) -> io::Result<()> {
        let queued = {
            let mut conn = self.conn.borrow_mut();
            let r = conn.writer().write_all(&buf);
            conn.send_close_notify();
            r
        };
        let r = self.flush_tls().await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut self.tcp).await;
        queued.and(r)
    }
}
