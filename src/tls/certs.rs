//! Certificates: PEM chain and key as certbot writes them (RSA or ECDSA;
//! PKCS#8, PKCS#1 or SEC1 keys), or a self-signed ECDSA P-256 certificate
//! for localhost/127.0.0.1/::1 made at start; the rustls server config
//! built from them; and the reload behind SIGHUP (each worker serves its own
//! copy of the pair: no shared reference count per handshake).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;

use crate::config::{Chain, TlsMode};

use super::tickets::{TicketSeed, Tickets};

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

/// A PEM error in words (the library's own text shows raw lines as byte arrays).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section is not closed (no \"-----END {}-----\" line)",
            String::from_utf8_lossy(end_marker).trim()
        ),
        Error::IllegalSectionStart { line } => format!(
            "malformed PEM line \"{}\"",
            String::from_utf8_lossy(line).trim()
        ),
        other => other.to_string(),
    }
}

pub fn load_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert {}: {}", cert.display(), pem_error(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {}", cert.display(), pem_error(&e)))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert {}: no CERTIFICATE block found",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "tls.key {}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {}",
            key.display(),
            pem_error(&e)
        )
    })?;
    Ok(CertifiedKey {
        chain,
        key: key_der,
        self_signed_path: None,
    })
}

pub fn generate_self_signed(dir: &Path) -> Result<CertifiedKey, String> {
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

pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
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
pub fn secure_random() -> &'static dyn rustls::crypto::SecureRandom {
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
///
/// `chains` with a certificate of their own have it served to the clients
/// that ask for one of their host names (SNI); every other client gets `ck`.
pub fn server_config(ck: &CertifiedKey, chains: &[Chain]) -> Result<ServerTls, String> {
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
    let set = CertSet {
        default: Arc::new(certified(ck, &provider)?),
        named: load_named(chains, &provider)?,
    };
    let certs = Arc::new(Certs {
        current: Mutex::new(Arc::new(set)),
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

pub fn certified(
    ck: &CertifiedKey,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    rustls::sign::CertifiedKey::from_der(ck.chain.clone(), ck.key.clone_key(), provider)
        .map_err(|e| format!("certificate and key do not match or are unsupported: {e}"))
}

/// The certificates served: one per chain that has its own, chosen by the
/// name the client asks for (SNI), and the default one for every other
/// client (no SNI, an unknown name).
#[derive(Clone)]
pub struct CertSet {
    default: Arc<rustls::sign::CertifiedKey>,
    /// Host patterns (exact, `*.name`, `.name`) and their certificate.
    named: Vec<(String, Arc<rustls::sign::CertifiedKey>)>,
}

impl CertSet {
    /// The certificate for a client asking for `name` (SNI): the one of the
    /// best matching pattern (exact, then the longest wildcard), else the default.
    pub fn pick(&self, name: Option<&str>) -> &Arc<rustls::sign::CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        self.named
            .iter()
            .filter_map(|(p, ck)| crate::config::chains::rank(p, &name).map(|r| (r, ck)))
            .max_by_key(|(r, _)| *r)
            .map_or(&self.default, |(_, ck)| ck)
    }

    /// The same certificates in allocations of their own (a core's copy).
    fn copy(&self) -> CertSet {
        CertSet {
            default: Arc::new((*self.default).clone()),
            named: self
                .named
                .iter()
                .map(|(p, ck)| (p.clone(), Arc::new((**ck).clone())))
                .collect(),
        }
    }
}

/// The certificates of the chains that have their own, by host pattern.
fn load_named(
    chains: &[Chain],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Vec<(String, Arc<rustls::sign::CertifiedKey>)>, String> {
    let mut named = Vec::new();
    for c in chains {
        let Some((cert, key)) = &c.cert else { continue };
        let ck = load_pem(cert, key).map_err(|e| format!("chain {}: {e}", c.name))?;
        let ck = Arc::new(certified(&ck, provider).map_err(|e| {
            format!(
                "chain {}: {e} ({} / {})",
                c.name,
                cert.display(),
                key.display()
            )
        })?);
        for h in &c.hosts {
            named.push((h.clone(), ck.clone()));
        }
    }
    Ok(named)
}

/// Check that every chain's own certificate and key load (`--check`).
pub fn check_named(chains: &[Chain]) -> Result<(), String> {
    load_named(chains, &rustls::crypto::ring::default_provider()).map(|_| ())
}

/// The certificates every worker serves. [`Certs::reload`] replaces them
/// while running (SIGHUP, after a certbot renewal): sessions already open
/// keep theirs, the next handshakes on every core get the new ones.
pub struct Certs {
    current: Mutex<Arc<CertSet>>,
    /// Bumped by each replacement; workers compare it with their copy's.
    generation: AtomicU64,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Certs {
    /// Read the PEM files again (the default pair when it comes from
    /// files, and every chain's own); on any error the certificates in use
    /// stay, all of them.
    pub fn reload(&self, mode: &TlsMode, chains: &[Chain]) -> Result<String, String> {
        let (default, what) = match mode {
            TlsMode::Files { cert, key } => {
                let ck = load_pem(cert, key)?;
                let fresh = certified(&ck, &self.provider)
                    .map_err(|e| format!("{e} ({} / {})", cert.display(), key.display()))?;
                let what = format!(
                    "{} ({} certificates in the chain) with {}",
                    cert.display(),
                    ck.chain.len(),
                    key.display()
                );
                (Arc::new(fresh), what)
            }
            _ => (
                self.current().default.clone(),
                "the default certificate kept".into(),
            ),
        };
        let named = load_named(chains, &self.provider)?;
        let chains_with_own = chains.iter().filter(|c| c.cert.is_some()).count();
        let set = CertSet { default, named };
        *self.current.lock() = Arc::new(set);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(match chains_with_own {
            0 => what,
            n => format!("{what}; and {n} chains' own"),
        })
    }

    fn current(&self) -> Arc<CertSet> {
        self.current.lock().clone()
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
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current().pick(hello.server_name()).clone())
    }
}

/// A worker's copy of the served certificate: one atomic load per handshake
/// to see whether it was replaced, and a reference count of its own (the
/// shared one would be a cache line every core writes).
struct WorkerCert {
    certs: Arc<Certs>,
    mine: Mutex<(u64, CertSet)>,
}

impl WorkerCert {
    fn new(certs: &Arc<Certs>) -> WorkerCert {
        let generation = certs.generation.load(Ordering::Acquire);
        let copy = certs.current().copy();
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
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut mine = self.mine.lock();
        let generation = self.certs.generation.load(Ordering::Acquire);
        if mine.0 != generation {
            *mine = (generation, self.certs.current().copy());
        }
        Some(mine.1.pick(hello.server_name()).clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pem_is_described_in_words_not_bytes() {
        // Regression: a bad PEM on reload printed a byte array.
        let dir = std::env::temp_dir().join(format!("ringway-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let err = load_pem(&cert, &dir.join("key.pem")).err().unwrap();
        assert!(err.starts_with("tls.cert "), "{err}");
        assert!(err.contains("-----END CERTIFICATE-----"), "{err}");
        assert!(!err.contains('['), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
