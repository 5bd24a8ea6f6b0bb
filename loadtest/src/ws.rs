//! WebSocket endpoints for the load generator and the mock node, on
//! ringway's sans-io codec: a message reader that reassembles frames, the
//! client connect (TCP or TLS, then upgrade), and the server-side accept.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use monoio::io::Splitable;
use monoio::net::TcpStream;
use ringway::io::{give_buf, take_buf, PlainReader, ReadHalf, WriteHalf};
use ringway::tls::{TlsReader, TlsWriter};
use ringway::ws::codec::{Limits, Role};
use ringway::ws::frame::{OpCode, Parse};
use ringway::ws::message::{Assembler, Event};
use rustls::ClientConnection;

/// A complete message or a control frame.
#[derive(Debug)]
pub enum Incoming {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// Reassembles messages from a byte stream with ringway's sans-io
/// [`Assembler`] (frames checked as the gateway checks them).
pub struct MessageReader<R> {
    io: R,
    buf: Vec<u8>,
    asm: Assembler,
}

impl<R: ReadHalf> MessageReader<R> {
    /// `role`: whose frames these are (a client's are masked).
    pub fn new(io: R, early: Vec<u8>, role: Role, max_message: usize) -> Self {
        let mut buf = take_buf();
        buf.extend_from_slice(&early);
        let limits = Limits {
            max_frame: max_message as u64,
            max_message: max_message as u64,
        };
        MessageReader {
            io,
            buf,
            asm: Assembler::new(role, limits, usize::MAX, false),
        }
    }

    /// The next message; `Ok(None)` at end of stream.
    pub async fn next(&mut self) -> io::Result<Option<Incoming>> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(Some(m));
            }
            let (r, b) = self.io.read_more(std::mem::take(&mut self.buf)).await;
            self.buf = b;
            if r? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next message if one is already buffered (no I/O).
    pub fn try_next(&mut self) -> Option<Incoming> {
        self.parse().ok().flatten()
    }

    fn parse(&mut self) -> io::Result<Option<Incoming>> {
        let mut pos = 0;
        let mut out = None;
        while pos < self.buf.len() && out.is_none() {
            match self.asm.step(&self.buf[pos..]) {
                Ok(Event::Data { n, end }) => {
                    pos += n;
                    if end {
                        let payload = self.asm.message().to_vec();
                        self.asm.clear();
                        out = Some(if self.asm.is_text() {
                            Incoming::Text(payload)
                        } else {
                            Incoming::Binary(payload)
                        });
                    }
                }
                Ok(Event::Control(frame, n)) => {
                    pos += n;
                    out = Some(match frame.opcode {
                        OpCode::Ping => Incoming::Ping(frame.payload().to_vec()),
                        OpCode::Close => Incoming::Close(frame.close_code()),
                        _ => Incoming::Pong,
                    });
                }
                Ok(Event::NeedMore) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        self.buf.drain(..pos);
        Ok(out)
    }
}

impl<R> Drop for MessageReader<R> {
    fn drop(&mut self) {
        give_buf(std::mem::take(&mut self.buf));
    }
}

/// Either transport, for the client.
pub enum ClientRead {
    Plain(PlainReader<TcpStream>),
    Tls(TlsReader<ClientConnection>),
}

pub enum ClientWrite {
    Plain(monoio::io::OwnedWriteHalf<TcpStream>),
    Tls(TlsWriter<ClientConnection>),
}

impl ReadHalf for ClientRead {
    async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            ClientRead::Plain(r) => r.read_more(buf).await,
            ClientRead::Tls(r) => r.read_more(buf).await,
        }
    }
}

impl WriteHalf for ClientWrite {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            ClientWrite::Plain(w) => w.write_all(buf).await,
            ClientWrite::Tls(w) => w.write_all(buf).await,
        }
    }

    async fn shutdown(&mut self) {
        match self {
            ClientWrite::Plain(w) => w.shutdown().await,
            ClientWrite::Tls(w) => w.shutdown().await,
        }
    }

    async fn write_final(&mut self, buf: Vec<u8>) -> io::Result<()> {
        match self {
            ClientWrite::Plain(w) => w.write_final(buf).await,
            ClientWrite::Tls(w) => w.write_final(buf).await,
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Local address to connect from (another client address on loopback: 127.x.y.z).
    pub bind: Option<std::net::IpAddr>,
    /// API keys, one per connection in turn (`X-Api-Key`); empty: none.
    pub keys: Arc<Vec<String>>,
}

impl Target {
    /// Parse `ws://host:port/path` or `wss://...`.
    pub fn parse(
        url: &str,
        tls: impl FnOnce() -> Result<Arc<rustls::ClientConfig>, String>,
    ) -> Result<Target, String> {
        let (secure, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(format!("`{url}`: expected ws:// or wss://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:{}", if secure { 443 } else { 80 })
        };
        use std::net::ToSocketAddrs;
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("`{url}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{url}`: no address"))?;
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority);
        Ok(Target {
            addr,
            host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
            path: path.to_string(),
            tls: if secure { Some(tls()?) } else { None },
            bind: None,
            keys: Arc::default(),
        })
    }
}

/// Failure kinds, counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectError {
    Tcp,
    Tls,
    Upgrade,
}

impl ConnectError {
    pub fn name(self) -> &'static str {
        match self {
            ConnectError::Tcp => "connect",
            ConnectError::Tls => "tls",
            ConnectError::Upgrade => "upgrade",
        }
    }
}

/// An open client WebSocket.
pub struct Client {
    pub reader: MessageReader<ClientRead>,
    pub writer: ClientWrite,
}

/// Connect, TLS if asked, and upgrade.
pub async fn connect(t: &Target) -> Result<Client, (ConnectError, String)> {
    let tcp = match t.bind {
        None => TcpStream::connect_addr(t.addr)
            .await
            .map_err(|e| (ConnectError::Tcp, e.to_string()))?,
        Some(ip) => connect_from(ip, t.addr).map_err(|e| (ConnectError::Tcp, e.to_string()))?,
    };
    let _ = tcp.set_nodelay(true);
    let (mut r, mut w) = match &t.tls {
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| (ConnectError::Tls, e.to_string()))?;
            let (r, w) = ringway::tls::connect(tcp, cfg.clone(), name)
                .await
                .map_err(|e| (ConnectError::Tls, e.to_string()))?;
            (ClientRead::Tls(r), ClientWrite::Tls(w))
        }
        None => {
            let (r, w) = tcp.into_split();
            (
                ClientRead::Plain(PlainReader::new(r)),
                ClientWrite::Plain(w),
            )
        }
    };
    let key = ringway::rng::ws_key();
    // Connections take the keys in turn (process-wide).
    static NEXT_KEY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let api_key = match t.keys.len() {
        0 => String::new(),
        n => {
            let i = NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
            format!("X-Api-Key: {}\r\n", t.keys[i])
        }
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{api_key}Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        t.path, t.host
    );
    let (res, _) = w.write_all(req.into_bytes()).await;
    res.map_err(|e| (ConnectError::Upgrade, e.to_string()))?;
    let mut buf = take_buf();
    loop {
        let (res, b) = r.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => return Err((ConnectError::Upgrade, "closed during upgrade".into())),
            Ok(_) => {}
            Err(e) => return Err((ConnectError::Upgrade, e.to_string())),
        }
        match ringway::ws::handshake::parse_upstream_response(&buf, &key, None, buf.capacity()) {
            Ok(Parse::Done(_, n)) => {
                buf.drain(..n);
                let reader = MessageReader::new(r, buf, Role::Server, 64 << 20);
                return Ok(Client { reader, writer: w });
            }
            Ok(Parse::NeedMore(_)) => {}
            Err(e) => return Err((ConnectError::Upgrade, e.to_string())),
        }
    }
}

/// Connect from a given local address (a blocking connect: on loopback it
/// completes at once), then hand the socket to the runtime.
fn connect_from(ip: std::net::IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect(&to.into())?;
    sock.set_nonblocking(true)?;
    TcpStream::from_std(sock.into())
}

/// Append a masked client text frame.
pub fn text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    ringway::ws::frame::write_frame(out, OpCode::Text, payload, Some(ringway::rng::mask_key()));
}

/// A client TLS config trusting `ca` (PEM file), or anything (`insecure`).
pub fn client_tls(ca: Option<&str>, insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    // ring, with the gateway's faster X25519 (its `fast-x25519` feature).
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: ringway::tls::kx_groups(),
        ..rustls::crypto::ring::default_provider()
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let path =
            ca.ok_or("wss:// needs --ca FILE (the server's CA or certificate) or --insecure")?;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--ca {path}: {e}"))?
        {
            roots
                .add(c.map_err(|e| format!("--ca {path}: {e}"))?)
                .map_err(|e| e.to_string())?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // New sessions every connection: the connect benchmark measures full handshakes.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    // Trusting any certificate, the handshake signature proves nothing (any
    // key signs for itself), so `--insecure` skips its cost as well: the
    // client stays cheap next to the server it measures, which still signs.
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
