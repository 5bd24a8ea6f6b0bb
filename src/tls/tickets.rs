//! Stateless TLS session tickets every worker opens: keys derived by all
//! workers from one random secret made at start, ratcheted forward by
//! SHA-256 every 6 hours (a key two periods old is gone), AES-256-GCM with
//! the worker index and a counter as nonce. No shared cache, no lock.

use parking_lot::Mutex;

/// How long one ticket key encrypts; a key decrypts for one period more.
pub const TICKET_PERIOD_SECS: u64 = 6 * 3600;

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

pub fn ticket_period() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / TICKET_PERIOD_SECS)
}

pub fn sha256(label: &[u8], secret: &[u8; 32]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(label);
    ctx.update(secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub fn ticket_key(secret: &[u8; 32]) -> ring::aead::LessSafeKey {
    let key = sha256(b"ringway ticket key", secret);
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).expect("32-byte key"),
    )
}

/// A ticket: `period (8 bytes, big-endian) | nonce (12) | sealed session state | tag (16)`.
/// The period is the additional authenticated data; the nonce is the worker's
/// index and its counter, unique under each key.
pub const TICKET_HEAD: usize = 8 + 12;

/// One worker's ticketer (the `Mutex` is never contended: each worker has its
/// own config; rustls asks for `Sync`).
pub struct Tickets {
    worker: u32,
    state: Mutex<TicketState>,
}

pub struct TicketState {
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
        let mut st = self.state.lock();
        st.advance(ticket_period());
        st.seal(self.worker, plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < TICKET_HEAD + 16 {
            return None;
        }
        let period = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        let nonce: [u8; 12] = ticket[8..TICKET_HEAD].try_into().ok()?;
        let mut st = self.state.lock();
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
        let mut st = old.state.lock();
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
