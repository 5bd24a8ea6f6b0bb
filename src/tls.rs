//! TLS termination: certificates, the rustls server config, and a TLS stream
//! split into a read half and a write half for the relay.
//!
//! Why not monoio-rustls' stream: the relay reads and writes one connection
//! concurrently (two directions), and monoio-rustls' split shares one
//! `&mut Stream` between both halves; its read error path writes an alert
//! through the write buffer, which a concurrent write may have taken (a
//! panic). It also fixes 2 x 16 KiB of buffers per connection for life. Here
//! the rustls connection sits in an `Rc<RefCell<_>>` borrowed only between
//! awaits, each half owns its socket half, and ciphertext buffers come from
//! the per-core pool.
//!
//! Certificates: PEM chain and key as certbot writes them (RSA or ECDSA;
//! PKCS#8, PKCS#1 or SEC1 keys). Without one, a self-signed ECDSA P-256
//! certificate for localhost/127.0.0.1/::1 is made at start.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
};
use std::ops::DerefMut;

use crate::config::TlsMode;
use crate::io::{ensure_room, give_buf, read_append, take_buf, ReadHalf, ReadSizer, WriteHalf};

/// Certificate chain and key, loaded once in `main` and shared by all workers.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the self-signed certificate was written, if one was made.
    pub self_signed_path: Option<PathBuf>,
}

/// Load the PEM files, or make a self-signed certificate.
pub fn load_or_generate(mode: &TlsMode) -> Result<Option<CertifiedKey>, String> {
    match mode {
        TlsMode::Off => Ok(None),
        TlsMode::Files { cert, key } => load_pem(cert, key).map(Some),
        TlsMode::SelfSigned { dir } => generate_self_signed(dir).map(Some),
    }
}

fn load_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert {}: no CERTIFICATE block found",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "tls.key {}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key.display()
        )
    })?;
    Ok(CertifiedKey {
        chain,
        key: key_der,
        self_signed_path: None,
    })
}

fn generate_self_signed(dir: &Path) -> Result<CertifiedKey, String> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("self-signed certificate: {e}"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("tls.self_signed_dir {}: {e}", dir.display()))?;
    let cert_path = dir.join("ringway-selfsigned.crt");
    let key_path = dir.join("ringway-selfsigned.key");
    let cert_pem = ck.cert.pem();
    let key_pem = ck.key_pair.serialize_pem();
    std::fs::write(&cert_path, &cert_pem)
        .map_err(|e| format!("writing {}: {e}", cert_path.display()))?;
    write_private(&key_path, key_pem.as_bytes())
        .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(CertifiedKey {
        chain: vec![ck.cert.der().clone()],
        key,
        self_signed_path: Some(cert_path),
    })
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Key exchange groups, X25519 first (what clients send a key share for).
/// With the `fast-x25519` feature (default) X25519 comes from aws-lc-rs,
/// about twice as fast as ring's; P-256 and P-384 from ring.
pub fn kx_groups() -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::ring::kx_group;
    #[cfg(feature = "fast-x25519")]
    let x25519: &'static dyn rustls::crypto::SupportedKxGroup =
        rustls::crypto::aws_lc_rs::kx_group::X25519;
    #[cfg(not(feature = "fast-x25519"))]
    let x25519: &'static dyn rustls::crypto::SupportedKxGroup = kx_group::X25519;
    vec![x25519, kx_group::SECP256R1, kx_group::SECP384R1]
}

/// Randomness for handshakes (server random, ticket nonces): with
/// `fast-x25519`, aws-lc's per-thread DRBG seeded from the kernel (no system
/// call per handshake; ring's asks getrandom(2) each time), else ring's.
fn secure_random() -> &'static dyn rustls::crypto::SecureRandom {
    #[cfg(feature = "fast-x25519")]
    return rustls::crypto::aws_lc_rs::default_provider().secure_random;
    #[cfg(not(feature = "fast-x25519"))]
    return rustls::crypto::ring::default_provider().secure_random;
}

/// The shared server config: TLS 1.2 and 1.3 (all rustls offers), ALPN http/1.1.
///
/// Cipher suites in the server's order, AES-128-GCM first: its key schedule
/// hashes with SHA-256, which CPUs accelerate (SHA-NI), while the
/// AES-256/SHA-384 suite rustls otherwise takes from clients' lists costs a
/// software SHA-512 on every handshake. All suites offered are AEAD with
/// forward secrecy.
pub fn server_config(ck: &CertifiedKey) -> Result<ServerTls, String> {
    use rustls::crypto::ring::cipher_suite as cs;
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: kx_groups(),
        secure_random: secure_random(),
        ..rustls::crypto::ring::default_provider()
    });
    let certs = Arc::new(Certs {
        current: Mutex::new(Arc::new(certified(ck, &provider)?)),
        generation: AtomicU64::new(0),
        provider: provider.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(ServerTls { config, certs })
}

/// The TLS setup the workers start from.
pub struct ServerTls {
    pub config: ServerConfig,
    /// The certificate served, replaceable while running.
    pub certs: Arc<Certs>,
}

fn certified(
    ck: &CertifiedKey,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    rustls::sign::CertifiedKey::from_der(ck.chain.clone(), ck.key.clone_key(), provider)
        .map_err(|e| format!("certificate and key do not match or are unsupported: {e}"))
}

/// The certificate and key every worker serves. [`Certs::reload`] replaces
/// them while running (SIGHUP, after a certbot renewal): sessions already
/// open keep theirs, the next handshakes on every core get the new one.
pub struct Certs {
    current: Mutex<Arc<rustls::sign::CertifiedKey>>,
    /// Bumped by each replacement; workers compare it with their copy's.
    generation: AtomicU64,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Certs {
    /// Read the PEM files again; on any error the certificate in use stays.
    pub fn reload(&self, mode: &TlsMode) -> Result<String, String> {
        let TlsMode::Files { cert, key } = mode else {
            return Err("no certificate files configured (tls.cert, tls.key)".into());
        };
        let ck = load_pem(cert, key)?;
        let fresh = certified(&ck, &self.provider)
            .map_err(|e| format!("{e} ({} / {})", cert.display(), key.display()))?;
        *self
            .current
            .lock()
            .map_err(|_| "certificate store poisoned")? = Arc::new(fresh);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(format!(
            "{} ({} certificates in the chain) with {}",
            cert.display(),
            ck.chain.len(),
            key.display()
        ))
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// A worker's copy of the served certificate: one atomic load per handshake
/// to see whether it was replaced, and a reference count of its own (the
/// shared one would be a cache line every core writes).
struct WorkerCert {
    certs: Arc<Certs>,
    mine: Mutex<(u64, Arc<rustls::sign::CertifiedKey>)>,
}

impl WorkerCert {
    fn new(certs: &Arc<Certs>) -> WorkerCert {
        let generation = certs.generation.load(Ordering::Acquire);
        let copy = Arc::new((*certs.current()).clone());
        WorkerCert {
            certs: certs.clone(),
            mine: Mutex::new((generation, copy)),
        }
    }
}

impl std::fmt::Debug for WorkerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCert").finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for WorkerCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut mine = self.mine.lock().ok()?;
        let generation = self.certs.generation.load(Ordering::Acquire);
        if mine.0 != generation {
            *mine = (generation, Arc::new((*self.certs.current()).clone()));
        }
        Some(mine.1.clone())
    }
}

/// A worker's own copy of the config: its own session-ID cache (TLS 1.2
/// clients without tickets), so that no lock is shared between cores, its
/// own ticketer on the keys every worker shares (see [`TicketSeed`]), and
/// its own copy of the certificate.
pub fn per_worker(
    base: &ServerConfig,
    certs: &Arc<Certs>,
    seed: &TicketSeed,
    worker: u32,
) -> Arc<ServerConfig> {
    let mut c = base.clone();
    c.session_storage = ServerSessionMemoryCache::new(4096);
    c.ticketer = Arc::new(Tickets::new(seed, worker));
    c.cert_resolver = Arc::new(WorkerCert::new(certs));
    // One ticket per new session (rustls' default is two): a WebSocket client
    // resumes one connection at a time, and each resumption brings a new one.
    c.send_tls13_tickets = 1;
    Arc::new(c)
}

/// How long one ticket key encrypts; a key decrypts for one period more.
const TICKET_PERIOD_SECS: u64 = 6 * 3600;

/// The secret all workers' ticket keys come from.
///
/// Stateless session tickets (RFC 5077, RFC 8446 §4.6.1) let a client resume
/// on whichever core its next connection lands (SO_REUSEPORT spreads them),
/// with no session cache shared between cores. Every worker starts from this
/// one random secret and ratchets it forward one SHA-256 step per period, so
/// all derive the same AES-256-GCM key for a period without talking to each
/// other, and a key two periods old is gone from memory: a resumed session's
/// keys are safe from a later memory disclosure after at most 12 hours, as
/// with rustls' own rotating ticketer.
#[derive(Clone)]
pub struct TicketSeed {
    secret: [u8; 32],
    period: u64,
}

impl TicketSeed {
    pub fn new() -> Result<TicketSeed, String> {
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| "no randomness for the session ticket key".to_string())?;
        Ok(TicketSeed {
            secret,
            period: ticket_period(),
        })
    }
}

fn ticket_period() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / TICKET_PERIOD_SECS)
}

fn sha256(label: &[u8], secret: &[u8; 32]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(label);
    ctx.update(secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn ticket_key(secret: &[u8; 32]) -> ring::aead::LessSafeKey {
    let key = sha256(b"ringway ticket key", secret);
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).expect("32-byte key"),
    )
}

/// A ticket: `period (8 bytes, big-endian) | nonce (12) | sealed session state | tag (16)`.
/// The period is the additional authenticated data; the nonce is the worker's
/// index and its counter, unique under each key.
const TICKET_HEAD: usize = 8 + 12;

/// One worker's ticketer (the `Mutex` is never contended: each worker has its
/// own config; rustls asks for `Sync`).
pub struct Tickets {
    worker: u32,
    state: Mutex<TicketState>,
}

struct TicketState {
    period: u64,
    secret: [u8; 32],
    current: ring::aead::LessSafeKey,
    previous: Option<ring::aead::LessSafeKey>,
    counter: u64,
}

impl TicketState {
    /// Ratchet forward to `now` (never back: a clock stepped back keeps the key).
    fn advance(&mut self, now: u64) {
        while self.period < now {
            self.secret = sha256(b"ringway ticket ratchet", &self.secret);
            self.period += 1;
            let next = ticket_key(&self.secret);
            self.previous = Some(std::mem::replace(&mut self.current, next));
            self.counter = 0;
        }
    }
}

impl TicketState {
    /// Seal under the current period's key.
    fn seal(&mut self, worker: u32, plain: &[u8]) -> Option<Vec<u8>> {
        self.counter += 1;
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&worker.to_be_bytes());
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        let mut out = Vec::with_capacity(TICKET_HEAD + plain.len() + 16);
        out.extend_from_slice(&self.period.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(TICKET_HEAD);
        let tag = self
            .current
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&head[..8]),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }
}

impl Tickets {
    pub fn new(seed: &TicketSeed, worker: u32) -> Tickets {
        Tickets {
            worker,
            state: Mutex::new(TicketState {
                period: seed.period,
                secret: seed.secret,
                current: ticket_key(&seed.secret),
                previous: None,
                counter: 0,
            }),
        }
    }
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("worker", &self.worker)
            .finish()
    }
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_PERIOD_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut st = self.state.lock().ok()?;
        st.advance(ticket_period());
        st.seal(self.worker, plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < TICKET_HEAD + 16 {
            return None;
        }
        let period = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        let nonce: [u8; 12] = ticket[8..TICKET_HEAD].try_into().ok()?;
        let mut st = self.state.lock().ok()?;
        st.advance(ticket_period());
        let key = if period == st.period {
            &st.current
        } else if period.checked_add(1) == Some(st.period) {
            st.previous.as_ref()?
        } else {
            return None;
        };
        let mut body = ticket[TICKET_HEAD..].to_vec();
        let n = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&ticket[..8]),
                &mut body,
            )
            .ok()?
            .len();
        body.truncate(n);
        Some(body)
    }
}

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
    handshake(tcp, conn, min_rate).await
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
    sizer: ReadSizer,
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

impl<C: TlsSide> ReadHalf for TlsReader<C> {
    async fn read_more(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            match self.take_plaintext(&mut buf) {
                Ok(Some(n)) => return (Ok(n), buf),
                Ok(None) => {}
                Err(e) => return (Err(e), buf),
            }
            if self.cipher.is_some() {
                if let Err(e) = self.feed() {
                    return (Err(e), buf);
                }
                continue;
            }
            if self.eof {
                return (Ok(0), buf);
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
                    if let Err(e) = self.feed() {
                        return (Err(e), buf);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn tickets_open_on_every_worker_of_one_seed_only() {
        let seed = TicketSeed::new().unwrap();
        let (a, b) = (Tickets::new(&seed, 0), Tickets::new(&seed, 1));
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        assert_eq!(a.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        // Same plaintext, another nonce.
        assert_ne!(a.encrypt(b"session state").unwrap(), t);
        let other = Tickets::new(&TicketSeed::new().unwrap(), 0);
        assert_eq!(other.decrypt(&t), None);
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert_eq!(b.decrypt(&bad), None, "byte {i} altered");
        }
        assert_eq!(b.decrypt(&t[..t.len() - 1]), None);
        assert_eq!(b.decrypt(&[]), None);
        // A ticket from a client may claim any period.
        let mut forged = t.clone();
        forged[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(b.decrypt(&forged), None);
    }

    #[test]
    fn ticket_keys_ratchet_and_forget() {
        let now = ticket_period();
        // Workers that started three periods ago ratchet to the same keys.
        let seed = TicketSeed {
            secret: [7; 32],
            period: now - 3,
        };
        let old = Tickets::new(&seed, 0);
        let mut st = old.state.lock().unwrap();
        st.advance(now - 2);
        let two_old = st.seal(0, b"two periods ago").unwrap();
        st.advance(now - 1);
        let one_old = st.seal(0, b"one period ago").unwrap();
        drop(st);
        let fresh = Tickets::new(&seed, 1);
        assert_eq!(
            fresh.decrypt(&one_old).as_deref(),
            Some(&b"one period ago"[..])
        );
        assert_eq!(fresh.decrypt(&two_old), None, "that key is gone");
        assert_eq!(old.decrypt(&two_old), None);
        let t = old.encrypt(b"now").unwrap();
        assert_eq!(fresh.decrypt(&t).as_deref(), Some(&b"now"[..]));
    }
}
