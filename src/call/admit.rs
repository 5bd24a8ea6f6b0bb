//! Whether a call is sent at all: one sequence for every transport.
//!
//! 1. The strict reading ([`crate::jsonrpc::Call::refusal`]): what is not
//!    JSON with one meaning is answered here (-32700, -32600 with each id),
//!    never forwarded for a node to read its own way.
//! 2. The policy ([`crate::policy::AdmissionCtx::check_call`]): methods
//!    allowed (the preset, the lists, the key's own), the batch size, then
//!    the key's rate and credits (charged when admitted) or the address's rate.
//!
//! A session's own limits (requests in flight, subscriptions held) are the
//! relay's (`relay::limits`): they count a session's state, per request.

use std::net::IpAddr;
use std::time::Instant;

use crate::jsonrpc::Call;
use crate::policy::keys::Key;
use crate::policy::{AdmissionCtx, Refusal};
use crate::stats::Outcome;

/// A call the gateway answers itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The policy's reason (`None`: the call could not be read).
    pub why: Option<Refusal>,
    /// The JSON-RPC answer (`None`: only notifications, which get none).
    pub answer: Option<String>,
}

impl Refused {
    /// The status of an HTTP answer: 429 over a rate or quota, 400 for
    /// what could not be read, 200 for a policy's JSON-RPC error.
    pub fn http_status(&self) -> u16 {
        self.why.map_or(400, Refusal::http_status)
    }

    /// Seconds to wait before trying again (HTTP `Retry-After`).
    pub fn retry_after(&self) -> Option<u64> {
        match self.why {
            Some(Refusal::RateLimited(wait) | Refusal::QuotaExceeded(wait)) => {
                Some(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        }
    }
}

/// Admit `call` from `ip` with API key `key` (counted in chain slot
/// `chain`), or say what the client gets instead.
pub fn admit(
    adm: &AdmissionCtx,
    ip: IpAddr,
    key: Option<&Key>,
    call: &Call<'_>,
    chain: u8,
) -> Result<(), Refused> {
    let refused = match call.refusal() {
        Some(answer) => Refused {
            why: None,
            answer: Some(answer),
        },
        None => match adm.check_call(ip, call, Instant::now(), key) {
            Ok(()) => return Ok(()),
            Err((why, answer)) => {
                crate::debug!("refused a call from {ip}: {why:?}");
                Refused {
                    why: Some(why),
                    answer,
                }
            }
        },
    };
    crate::stats::calls(chain, call, Outcome::Refused);
    Err(refused)
}
